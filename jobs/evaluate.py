r"""The evaluate job: 3D pose metrics of a fine-tuned model, the pose-retrieval probe, the mining probe, or a
run's report.

    # SPEC §4 metrics (MPJPE, PA-MPJPE, 3D PCK AUC 0-50 mm) on a dataset's evaluation split
    python jobs/evaluate.py --dataset freihand --data-root /data/FreiHAND_pub_v2 \
        --model out/finetune/freihand --output out/eval/freihand
    # probe without 3D labels: nearest neighbour (other videos) in trunk feature space vs. 2D pose distance
    python jobs/evaluate.py --probe retrieval --hands out/heldout/hands --trunk simhand=out/pretrain/trunk.pt \
        --trunk imagenet=weights/resnet50.pth --output out/probe
    # mining quality against 3D truth, for a mine output whose videos have sidecar labels (jobs/synth.py):
    # anchor -> mined positive vs anchor -> a random other-video hand and -> the oracle (mining.json, mining.png)
    python jobs/evaluate.py --probe mining --mine out/demo/mine --output out/demo/mining
    # one markdown report of everything under a run directory
    python jobs/evaluate.py --report out
"""
from __future__ import annotations

import argparse
import json
import logging

import _common  # noqa: F401  (puts the repo on sys.path)
from _common import HelpFormatter, add_config_args, config_from_args, init_ray, int_range, setup_logging

from simhand_ray.config import PoseEvalConfig, ProbeConfig


log = logging.getLogger("simhand.evaluate")

#: Options both commands take, declared once below; unset (None), each config keeps its own default
#: (``config_from_args`` reads them by their field names).
SHARED = ("output", "batch_size", "num_workers", "use_gpu")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--probe", choices=("retrieval", "mining"), help="run a probe instead of the pose metrics")
    p.add_argument("--mine", help="--probe mining: the mine job's output (its hands/ and pairs/)")
    p.add_argument("--report", metavar="RUN", help="write RUN/report.md from the tables and plots under RUN")
    p.add_argument("--output", help="output directory or s3:// prefix (report: the report file, default RUN/report.md)")
    pe, pr = PoseEvalConfig.__dataclass_fields__, ProbeConfig.__dataclass_fields__
    p.add_argument("--num-workers", type=int_range(1), default=None,
                   help=f"model actors (default: {pe['num_workers'].default}, probe {pr['num_workers'].default})")
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--batch-size", type=int_range(1), default=None,
                   help=f"crops per model call (default: {pe['batch_size'].default}, probe {pr['batch_size'].default})")
    p.add_argument("--num-cpus", type=int_range(1), default=None, help="CPUs of a local Ray (ignored on a cluster)")
    add_config_args(p.add_argument_group("pose metrics"), PoseEvalConfig, skip=SHARED)
    add_config_args(p.add_argument_group("retrieval probe"), ProbeConfig, skip=SHARED)
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
    if a.probe == "mining":
        from simhand_ray.compare.mining_probe import evaluate_mining, format_figures
        from simhand_ray import storage

        if not a.mine:
            p.error("--probe mining needs --mine")
        try:
            figures = evaluate_mining(storage.join(a.mine, "hands"), storage.join(a.mine, "pairs"), a.output,
                                      seed=a.seed if a.seed is not None else 0)
        except (FileNotFoundError, ValueError) as e:
            log.error("%s", e)
            return 2
        print(f"\nmining probe of {a.mine}: 3D pose distance from each anchor (wrist -> middle MCP = 1)\n")
        print(format_figures(figures))
        return 0
    if a.probe == "retrieval":
        from simhand_ray.evaluate.retrieval import format_table, run_retrieval_probe

        if not a.hands:
            p.error("--probe retrieval needs --hands")
        cfg = config_from_args(ProbeConfig, a)
        init_ray(a.num_cpus)
        result = run_retrieval_probe(cfg)
        print(f"\npose retrieval probe: {result['hands']} hands, {result['videos']} videos\n")
        print(format_table(result["rows"]))
        return 0
    if not (a.data_root and a.model):
        p.error("pose metrics need --data-root and --model (or use --probe / --report)")
    from simhand_ray.evaluate.pose_eval import run_pose_eval

    cfg = config_from_args(PoseEvalConfig, a)
    init_ray(a.num_cpus)
    out = run_pose_eval(cfg)
    print("\n| dataset | split | hands | MPJPE (mm) | PA-MPJPE (mm) | AUC | PA AUC |\n|---|---|---:|---:|---:|---:|---:|")
    print(f"| {out['dataset']} | {out['split']} | {out['samples']} | {out['mpjpe_mm']:.2f} | {out['pa_mpjpe_mm']:.2f} | "
          f"{out['auc_root_relative']:.3f} | {out['auc_procrustes']:.3f} |")
    log.debug("metrics: %s", json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
