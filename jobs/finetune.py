r"""The finetune job: a (pre-trained) trunk + 3D pose head, trained on a downstream dataset (SPEC §4).

    python jobs/finetune.py --dataset freihand --data-root /data/FreiHAND_pub_v2 \
        --trunk out/pretrain/trunk.pt --output out/finetune/freihand
    ray job submit --working-dir . -- python jobs/finetune.py --dataset dexycb --data-root s3://bucket/dex-ycb \
        --trunk s3://bucket/pretrain/trunk.pt --output s3://bucket/finetune/dexycb --num-workers 8 --use-gpu

Re-running with the same --output resumes from its checkpoint.pt. Then evaluate with
``jobs/evaluate.py --dataset ... --model OUTPUT``.
"""
from __future__ import annotations

import argparse
import json
import logging

import _common  # noqa: F401  (puts the repo on sys.path)
from _common import HelpFormatter, add_config_args, config_from_args, init_ray, int_range, setup_logging

from simhand_ray.config import FinetuneConfig

log = logging.getLogger("simhand.finetune")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--data-root", required=True, help="dataset root: a local path or s3:// prefix")
    p.add_argument("--output", required=True, help="output directory or s3:// prefix (resumed if it holds a checkpoint)")
    p.add_argument("--num-cpus", type=int_range(1), default=None, help="CPUs of a local Ray (ignored on a cluster)")
    add_config_args(p, FinetuneConfig)
    return p


def parse(argv=None) -> tuple[FinetuneConfig, int | None]:
    p = build_parser()
    a = p.parse_args(argv)
    try:
        cfg = config_from_args(FinetuneConfig, a, data_root=a.data_root, output=a.output)
    except ValueError as e:
        p.error(str(e))
    return cfg, a.num_cpus


def main(argv=None) -> int:
    cfg, num_cpus = parse(argv)
    setup_logging()
    init_ray(num_cpus)
    from simhand_ray.evaluate.finetune import run_finetune

    summary = run_finetune(cfg)
    log.info("summary: %s", json.dumps({k: summary[k] for k in ("plan", "arch", "steps", "final", "seconds")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
