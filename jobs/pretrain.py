r"""The pretrain job (SPEC §3): mined pairs -> contrastive pre-training on Ray Train -> OUTPUT/trunk.pt.

    python jobs/pretrain.py --pairs out/mine/pairs --output out/pretrain --method simhand-w \
        --num-workers 1 --batch-size 64 --max-steps 100 --arch resnet18
    ray job submit --working-dir . -- python jobs/pretrain.py --pairs s3://bucket/mine/pairs \
        --output s3://bucket/pretrain --method simhand-w --num-workers 8 --use-gpu --batch-size 8192 --epochs 100

Re-submitting over the same --output with --resume continues from its latest checkpoint.
"""
from __future__ import annotations

import argparse
import json
import logging

import _common  # noqa: F401  (puts the repo on sys.path)
from _common import HelpFormatter, add_config_args, config_from_args, init_ray, int_range, setup_logging

from simhand_ray.config import PretrainConfig

log = logging.getLogger("simhand.pretrain")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--pairs", required=True, help="pairs dataset: directory, Parquet file or s3:// prefix")
    p.add_argument("--output", required=True, help="output directory or s3:// prefix (checkpoints, trunk.pt)")
    p.add_argument("--num-cpus", type=int_range(1), default=None, help="CPUs of a local Ray (ignored on a cluster)")
    add_config_args(p, PretrainConfig)
    return p


def pretrain_config(a: argparse.Namespace) -> PretrainConfig:
    return config_from_args(PretrainConfig, a, pairs=a.pairs, output=a.output)


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    setup_logging()
    try:
        cfg = pretrain_config(a)
    except ValueError as e:
        p.error(str(e))
    existing_cluster = init_ray(a.num_cpus)
    from simhand_ray.train.resources import ClusterTooSmallError
    from simhand_ray.train.run import IncompleteRunError, run_pretrain

    try:
        summary = run_pretrain(cfg, resource_wait_s=cfg.run.resource_wait_s if existing_cluster else 0.0)
    except (ValueError, ClusterTooSmallError) as e:   # refused before anything was written or started
        log.error("%s", e)
        return 2
    except IncompleteRunError as e:
        log.error("%s", e)
        return 1
    log.info("summary: %s", json.dumps({k: summary[k] for k in ("status", "step", "final_loss", "trunk",
                                                                "loss_curve", "plan")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
