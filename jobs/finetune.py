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
from _common import HelpFormatter, float_range, init_ray, int_range, setup_logging

from simhand_ray.config import FinetuneConfig, field_defaults
from simhand_ray.evaluate.datasets import DATASETS

log = logging.getLogger("simhand.finetune")


def build_parser() -> argparse.ArgumentParser:
    d = field_defaults(FinetuneConfig)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset", choices=tuple(DATASETS), default=d["dataset"])
    p.add_argument("--data-root", required=True, help="dataset root: a local path or s3:// prefix")
    p.add_argument("--split", default=d["split"], help="default: the dataset's training split (FreiHAND training, DexYCB s1 train, AssemblyHands train)")
    p.add_argument("--output", required=True, help="output directory or s3:// prefix (resumed if it holds a checkpoint)")
    p.add_argument("--trunk", default=d["trunk"], help="trunk weights (pre-training trunk.pt, any torchvision ResNet state_dict); empty = random init")
    p.add_argument("--arch", default=d["arch"], help="resnet18|34|50|101|152; auto = from --trunk (resnet50 without)")
    p.add_argument("--input-size", type=int_range(32), default=d["input_size"],
                   help="crop side in pixels (the trunk downsamples x32)")
    p.add_argument("--crop-scale", type=float_range(0, lo_open=True), default=d["crop_scale"],
                   help="crop side / longer side of the keypoints' box")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--epochs", type=int_range(1), default=d["epochs"])
    p.add_argument("--max-steps", type=int_range(0), default=d["max_steps"], help="stop after this many steps (0 = run all epochs)")
    p.add_argument("--batch-size", type=int_range(2), default=d["batch_size"], help="per worker")
    p.add_argument("--lr", type=float_range(0, lo_open=True), default=d["lr"])
    p.add_argument("--weight-decay", type=float_range(0), default=d["weight_decay"])
    p.add_argument("--warmup-epochs", type=float_range(0), default=d["warmup_epochs"])
    p.add_argument("--max-samples", type=int_range(0), default=d["max_samples"], help="use only the first N training records (0 = all)")
    p.add_argument("--seed", type=int_range(0), default=d["seed"])
    p.add_argument("--num-workers", type=int_range(1), default=d["num_workers"], help="Ray Train workers (DDP world size)")
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--cpus-per-worker", type=float_range(0), default=d["cpus_per_worker"])
    p.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on GPU")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if --output has a checkpoint")
    p.add_argument("--num-cpus", type=int_range(1), default=None, help="CPUs of a local Ray (ignored on a cluster)")
    return p


def parse(argv=None) -> tuple[FinetuneConfig, int | None]:
    p = build_parser()
    a = p.parse_args(argv)
    try:
        cfg = FinetuneConfig(
            dataset=a.dataset, data_root=a.data_root, split=a.split, output=a.output, trunk=a.trunk, arch=a.arch,
            input_size=a.input_size, crop_scale=a.crop_scale, augment=not a.no_augment, epochs=a.epochs,
            max_steps=a.max_steps, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
            warmup_epochs=a.warmup_epochs, max_samples=a.max_samples, seed=a.seed, num_workers=a.num_workers,
            use_gpu=a.use_gpu, cpus_per_worker=a.cpus_per_worker, amp=not a.no_amp, resume=not a.no_resume)
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
