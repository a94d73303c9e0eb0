r"""The compare job: does mining make better trunks? Every pre-training method on the same mined hands, scored
frozen (a linear probe of 3D pose) and fine-tuned (3D pose on held-out videos, or on a 3D dataset).

    # synthetic videos with 3D truth, mined as a user would (MediaPipe labels), then the comparison (cpu preset)
    python jobs/synth.py --output out/bench/synth --videos 64 --frames-per-video 60 --width 320 --height 240 \
        --pool-size 16 --pool-prob 0.9 --two-hands-prob 0 --backgrounds data/sample/images
    python jobs/mine.py --input out/bench/synth/videos --output out/bench/mine --every-n 2
    python jobs/compare.py --mine out/bench/mine --output out/bench/compare --preset cpu
    # on your own videos: fine-tune and test on a 3D dataset instead of held-out synthetic videos
    ray job submit --working-dir . -- python jobs/compare.py --mine s3://bucket/mine --output s3://bucket/compare \
        --preset gpu --dataset freihand --data-root s3://bucket/FreiHAND_pub_v2

Methods: random (no pre-training), simclr, peclr, simhand, simhand-w, oracle (SiMHand-W on positives chosen by
true 3D pose: the ceiling of mining). Writes OUTPUT/report.md, results.json, compare.png; every run is a
stage folder under OUTPUT/runs, so a re-run after a kill repeats no finished run.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging

import _common  # noqa: F401  (puts the repo on sys.path)
from _common import HelpFormatter, add_config_args, init_ray, int_range, setup_logging

from simhand_ray.config import COMPARE_PRESETS, CompareConfig
from simhand_ray.stage import StageMismatch

log = logging.getLogger("simhand.compare")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--mine", required=True, help="the mine job's output (hands/, graph/, pairs/)")
    p.add_argument("--output", required=True, help="output directory or s3:// prefix")
    p.add_argument("--preset", choices=tuple(COMPARE_PRESETS), default="cpu",
                   help="sizes for a machine: tiny (the test suite), cpu (2 cores, <= 60 min), gpu (one H100 + 16 "
                        "cores, <= 8 min); options given below override it")
    p.add_argument("--num-cpus", type=int_range(1), default=None, help="CPUs of a local Ray (ignored on a cluster)")
    add_config_args(p.add_argument_group("comparison (default: the preset's value)"), CompareConfig)
    # unset options keep the preset's value, so every one of them defaults to None here
    p.set_defaults(**{f.name: None for f in dataclasses.fields(CompareConfig) if f.metadata.get("cli", True)})
    return p


def compare_config(a: argparse.Namespace) -> CompareConfig:
    """The preset, with every option given on the command line in its place."""
    given = {f.name: getattr(a, f.name) for f in dataclasses.fields(CompareConfig)
             if f.metadata.get("cli", True) and getattr(a, f.name, None) not in (None, [])}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    return dataclasses.replace(COMPARE_PRESETS[a.preset], mine=a.mine, output=a.output, **given)


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    setup_logging()
    try:
        cfg = compare_config(a)
    except ValueError as e:
        p.error(str(e))
    init_ray(a.num_cpus, worker_logs=False)
    from simhand_ray.compare.driver import run_compare

    try:
        out = run_compare(cfg, a.preset)
    except (StageMismatch, FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        return 2
    print("\n" + out["table"] + f"\n\nreport: {out['report']} ({out['seconds'] / 60:.1f} min on {out['machine']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
