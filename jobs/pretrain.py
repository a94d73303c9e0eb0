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
from _common import HelpFormatter, float_range, init_ray, int_range, setup_logging

from simhand_ray.config import (NEG_WEIGHT_MIN_MODES, PRETRAIN_ARCHS, PRETRAIN_METHODS, AugmentConfig,
                                PretrainConfig)

log = logging.getLogger("simhand.pretrain")


def build_parser() -> argparse.ArgumentParser:
    d = PretrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--pairs", required=True, help="pairs dataset: directory, Parquet file or s3:// prefix")
    p.add_argument("--output", required=True, help="output directory or s3:// prefix (checkpoints, trunk.pt)")
    p.add_argument("--method", choices=PRETRAIN_METHODS, default=d.method)
    p.add_argument("--arch", choices=PRETRAIN_ARCHS, default=d.arch)
    p.add_argument("--num-workers", type=int_range(1), default=d.num_workers, help="training workers (one per GPU)")
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--cpus-per-worker", type=float_range(0), default=d.cpus_per_worker,
                   help="CPUs each training worker reserves; the rest of the cluster augments data")
    p.add_argument("--batch-size", type=int_range(2), default=d.batch_size, help="global batch (pairs), split over workers")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int_range(1), default=d.epochs)
    g.add_argument("--max-steps", type=int_range(0), default=d.max_steps, help="optimiser steps (overrides --epochs)")
    p.add_argument("--warmup-epochs", type=float_range(0), default=d.warmup_epochs)
    p.add_argument("--base-lr", type=float_range(0, lo_open=True), default=d.base_lr, help="lr = base x sqrt(global batch)")
    p.add_argument("--weight-decay", type=float_range(0), default=d.weight_decay)
    p.add_argument("--temperature", type=float_range(0, lo_open=True), default=d.temperature)
    p.add_argument("--no-amp", action="store_true", help="float32 on GPU too")
    p.add_argument("--amp-dtype", choices=("bfloat16", "float16"), default=d.amp_dtype)
    p.add_argument("--no-gather", action="store_true",
                   help="negatives (and SiMHand-W's weight min/max) from each worker's own batch only, as the "
                        "reference code's DataParallel training had them per GPU")
    p.add_argument("--neg-weight-min", choices=NEG_WEIGHT_MIN_MODES, default=d.neg_weight_min,
                   help="SiMHand-W: the negatives' distance min over the whole matrix, self-distances (0) "
                        "included, as the reference code (w- = 1 - d/max); or over the other samples only")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW on GPU (channels_last is faster)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model and SiMHand-W's distances (minutes of compiling first)")
    p.add_argument("--resource-wait", type=float_range(0), default=d.resource_wait_s,
                   help="seconds to wait for an autoscaling cluster to offer the workers' and the stream's "
                        "resources before failing (a local Ray fails at once)")
    p.add_argument("--no-balance-sources", action="store_true", help="sample rows uniformly, not per source")
    p.add_argument("--seed", type=int_range(0), default=d.seed)
    p.add_argument("--fixed-views", action="store_true",
                   help="same augmentation every epoch (debugging, overfit checks)")
    p.add_argument("--image-size", type=int_range(8), default=AugmentConfig().size, help="side of the augmented views")
    p.add_argument("--checkpoint-every", type=int_range(1), default=d.checkpoint_every, help="steps")
    p.add_argument("--keep-checkpoints", type=int_range(1), default=d.keep_checkpoints)
    p.add_argument("--log-every", type=int_range(1), default=d.log_every, help="steps")
    p.add_argument("--max-failures", type=int_range(0), default=d.max_failures, help="worker-group restarts")
    p.add_argument("--resume", action="store_true", help="continue the run found in --output")
    p.add_argument("--stop-at-step", type=int_range(0), default=d.stop_at_step, help="end this submission at this step")
    p.add_argument("--fail-at-step", type=int_range(0), default=d.fail_at_step,
                   help="testing: one worker raises the first time the run reaches this step (exercises recovery)")
    p.add_argument("--shuffle-buffer", type=int_range(0), default=d.shuffle_buffer, help="worker-side shuffle rows (0 = off)")
    p.add_argument("--augment-batch-size", type=int_range(1), default=d.augment_batch_size)
    p.add_argument("--num-cpus", type=int_range(1), default=None, help="CPUs of a local Ray (ignored on a cluster)")
    return p


def pretrain_config(a: argparse.Namespace) -> PretrainConfig:
    return PretrainConfig(
        pairs=a.pairs, output=a.output, method=a.method, arch=a.arch, num_workers=a.num_workers, use_gpu=a.use_gpu,
        cpus_per_worker=a.cpus_per_worker, batch_size=a.batch_size, epochs=a.epochs, max_steps=a.max_steps,
        warmup_epochs=a.warmup_epochs, base_lr=a.base_lr, weight_decay=a.weight_decay, temperature=a.temperature,
        amp=not a.no_amp, amp_dtype=a.amp_dtype, gather_distributed=not a.no_gather,
        neg_weight_min=a.neg_weight_min, channels_last=not a.no_channels_last, compile=a.compile,
        resource_wait_s=a.resource_wait,
        balance_sources=not a.no_balance_sources, seed=a.seed, checkpoint_every=a.checkpoint_every,
        keep_checkpoints=a.keep_checkpoints, log_every=a.log_every, max_failures=a.max_failures, resume=a.resume,
        stop_at_step=a.stop_at_step, fail_at_step=a.fail_at_step, shuffle_buffer=a.shuffle_buffer,
        augment_batch_size=a.augment_batch_size,
        fixed_views=a.fixed_views, augment=AugmentConfig(size=a.image_size))


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
        summary = run_pretrain(cfg, resource_wait_s=cfg.resource_wait_s if existing_cluster else 0.0)
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
