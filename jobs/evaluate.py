r"""The evaluate job: 3D pose metrics of a fine-tuned model, the pose-retrieval probe, or a run's report.

    # SPEC §4 metrics (MPJPE, PA-MPJPE, 3D PCK AUC 0-50 mm) on a dataset's evaluation split
    python jobs/evaluate.py --dataset freihand --data-root /data/FreiHAND_pub_v2 \
        --model out/finetune/freihand --output out/eval/freihand
    # probe without 3D labels: nearest neighbour (other videos) in trunk feature space vs. 2D pose distance
    python jobs/evaluate.py --probe retrieval --hands out/heldout/hands --trunk simhand=out/pretrain/trunk.pt \
        --trunk imagenet=weights/resnet50.pth --output out/probe
    # one markdown report of everything under a run directory
    python jobs/evaluate.py --report out
"""
from __future__ import annotations

import argparse
import json
import logging

import _common  # noqa: F401  (puts the repo on sys.path)
from _common import HelpFormatter, init_ray, int_range, setup_logging

from simhand_ray.config import FINETUNE_DATASETS, PoseEvalConfig, ProbeConfig, field_defaults


log = logging.getLogger("simhand.evaluate")


def build_parser() -> argparse.ArgumentParser:
    pe, pr = field_defaults(PoseEvalConfig), field_defaults(ProbeConfig)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--probe", choices=("retrieval",), help="run a probe instead of the pose metrics")
    p.add_argument("--report", metavar="RUN", help="write RUN/report.md from the tables and plots under RUN")
    p.add_argument("--output", help="output directory or s3:// prefix (report: the report file, default RUN/report.md)")
    # shared by both commands: unset, each takes its own config's default
    p.add_argument("--num-workers", type=int_range(1), default=None,
                   help=f"model actors (Ray Data concurrency; default: {pe['num_workers']}, probe {pr['num_workers']})")
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--batch-size", type=int_range(1), default=None,
                   help=f"crops per model call (default: {pe['batch_size']}, probe {pr['batch_size']})")
    p.add_argument("--num-cpus", type=int_range(1), default=None, help="CPUs of a local Ray (ignored on a cluster)")
    g = p.add_argument_group("pose metrics")
    g.add_argument("--dataset", choices=FINETUNE_DATASETS, default=pe["dataset"])
    g.add_argument("--data-root")
    g.add_argument("--split", default=pe["split"], help="default: FreiHAND evaluation, DexYCB s1 test, AssemblyHands test")
    g.add_argument("--model", help="fine-tuning output directory (model.pt) or a .pt file")
    g.add_argument("--max-samples", type=int_range(0), default=pe["max_samples"], help="evaluate only the first N records (0 = all)")
    g.add_argument("--auc-steps", type=int_range(2), default=pe["auc_steps"], help="PCK thresholds in 0-50 mm (FreiHAND: 100)")
    g.add_argument("--no-reflection", action="store_true", help="Procrustes without reflections (FreiHAND allows them)")
    g = p.add_argument_group("retrieval probe")
    g.add_argument("--hands", help="held-out mined hands (schema.HANDS Parquet)")
    g.add_argument("--trunk", action="append", default=[], help="[label=]weights; repeatable")
    g.add_argument("--no-random-init", action="store_true", help="leave out the random-init row")
    g.add_argument("--arch", default=pr["arch"], help="architecture of the random-init row (auto: the first trunk's)")
    g.add_argument("--input-size", type=int_range(32), default=pr["input_size"], help="crop side in pixels")
    g.add_argument("--max-hands", type=int_range(0), default=pr["max_hands"], help="random subsample of the hands (0 = all)")
    g.add_argument("--seed", type=int_range(0), default=pr["seed"])
    return p


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    setup_logging()
    if a.report:
        from simhand_ray.evaluate.report import write_report

        print(f"report: {write_report(a.report, a.output or '')}")
        return 0
    if not a.output:
        p.error("--output is required")
    shared = {k: v for k, v in (("batch_size", a.batch_size), ("num_workers", a.num_workers)) if v is not None}
    if a.probe == "retrieval":
        from simhand_ray.evaluate.retrieval import format_table, run_retrieval_probe

        if not a.hands:
            p.error("--probe retrieval needs --hands")
        cfg = ProbeConfig(hands=a.hands, output=a.output, trunks=tuple(a.trunk), random_init=not a.no_random_init,
                          arch=a.arch, input_size=a.input_size, max_hands=a.max_hands, seed=a.seed,
                          use_gpu=a.use_gpu, **shared)
        init_ray(a.num_cpus)
        result = run_retrieval_probe(cfg)
        print(f"\npose retrieval probe: {result['hands']} hands, {result['videos']} videos\n")
        print(format_table(result["rows"]))
        return 0
    if not (a.data_root and a.model):
        p.error("pose metrics need --data-root and --model (or use --probe / --report)")
    from simhand_ray.evaluate.pose_eval import run_pose_eval

    cfg = PoseEvalConfig(dataset=a.dataset, data_root=a.data_root, split=a.split, model=a.model, output=a.output,
                         use_gpu=a.use_gpu, **shared,
                         max_samples=a.max_samples, auc_steps=a.auc_steps, allow_reflection=not a.no_reflection)
    init_ray(a.num_cpus)
    out = run_pose_eval(cfg)
    print("\n| dataset | split | hands | MPJPE (mm) | PA-MPJPE (mm) | AUC | PA AUC |\n|---|---|---:|---:|---:|---:|---:|")
    print(f"| {out['dataset']} | {out['split']} | {out['samples']} | {out['mpjpe_mm']:.2f} | {out['pa_mpjpe_mm']:.2f} | "
          f"{out['auc_root_relative']:.3f} | {out['auc_procrustes']:.3f} |")
    log.debug("metrics: %s", json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
