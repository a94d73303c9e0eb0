"""The mine job: videos/images -> labeled right-hand crops (label) -> similar-hands graph (graph) -> pairs.

    python jobs/mine.py --input data/sample --output out/mine
    ray job submit --working-dir . -- python jobs/mine.py --input s3://bucket/videos --output s3://bucket/mine
"""
from __future__ import annotations

import argparse
import logging

import _common  # noqa: F401  (puts the repo on sys.path)
from _common import HelpFormatter, add_config_args, config_from_args, init_ray, int_range, setup_logging

from simhand_ray.config import LabelConfig
from simhand_ray.config import GraphConfig
from simhand_ray.stage import StageRefused

log = logging.getLogger("simhand.mine")
STAGES = ("label", "graph", "pairs", "all")


def add_label_args(p: argparse.ArgumentParser) -> None:
    add_config_args(p.add_argument_group("label stage (SPEC §1)"), LabelConfig)


def label_config(a: argparse.Namespace) -> LabelConfig:
    return config_from_args(LabelConfig, a, output=a.output)


def add_graph_args(p: argparse.ArgumentParser) -> None:
    add_config_args(p.add_argument_group("graph + pairs stages (SPEC §2)"), GraphConfig)


def graph_config(a: argparse.Namespace) -> GraphConfig:
    return config_from_args(GraphConfig, a, output=a.output)


def log_label_requests(cfg: LabelConfig) -> None:
    """The resource shapes the label stage asks Ray for (an autoscaling cluster launches nodes to fit them)."""
    from simhand_ray.mining.work_items import INLINE_PLAN_MAX_VIDEOS, PLAN_TASK_CPUS, VIDEOS_PER_PLAN_TASK

    lab = cfg.labeler
    log.info("label stage requests: planning tasks {CPU: %s} (one per %d videos, beyond %d videos), then %s "
             "labeler actors, each {CPU: %s, GPU: %s}", PLAN_TASK_CPUS, VIDEOS_PER_PLAN_TASK, INLINE_PLAN_MAX_VIDEOS,
             cfg.num_workers or "cluster-sized (--num-workers 0)", lab.cpus_per_labeler, lab.gpus_per_labeler)


def summary_line(summaries: dict) -> str:
    """The job's one summary line: what each stage that ran produced."""
    parts = []
    if (s := summaries.get("label")) is not None:
        parts.append(f"label: {s.get('hands_kept')} hands from {s.get('frames_kept')} frames of {s.get('videos')} "
                     f"videos and {s.get('images')} images, {sum(s.get('rejects', {}).values())} rejected inputs")
    if (s := summaries.get("graph")) is not None:
        dups = s.get("excluded_neighbors", {}).get("near_duplicate_crop", 0)
        parts.append(f"graph: {s.get('hands')} hands, {s.get('mean_neighbors')} neighbours each on average, "
                     f"{dups} near-duplicate crops kept out")
    if (s := summaries.get("pairs")) is not None:
        parts.append(f"pairs: {s.get('pairs')} pairs, montage {s.get('montage')}")
    return "; ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--stage", choices=STAGES, default="all")
    p.add_argument("--output", required=True, help="output directory or s3:// prefix")
    p.add_argument("--num-cpus", type=int_range(1), default=None, help="CPUs of a local Ray (ignored on a cluster)")
    add_label_args(p)
    add_graph_args(p)
    return p


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    setup_logging()
    if a.stage in ("label", "all") and not a.inputs:
        p.error("--input is required for the label stage")
    try:
        cfg = label_config(a) if a.stage in ("label", "all") else None
        gcfg = graph_config(a)
    except ValueError as e:
        p.error(str(e))
    if init_ray(a.num_cpus) and cfg is not None:    # joined to a cluster, which may autoscale to fit them
        log_label_requests(cfg)
    summaries = {}
    try:
        if a.stage in ("label", "all"):
            from simhand_ray.mining.label_stage import run_label_stage
            summaries["label"] = run_label_stage(cfg)
        if a.stage in ("graph", "all"):
            from simhand_ray.graph.graph_stage import run_graph_stage
            summaries["graph"] = run_graph_stage(gcfg)
        if a.stage in ("pairs", "all"):
            from simhand_ray.graph.pairs import run_pairs_stage
            summaries["pairs"] = run_pairs_stage(gcfg)
    except StageRefused as e:       # another run's output, or settings the data or the cluster cannot run
        log.error("%s", e)
        return 2
    log.info("summary: %s (each stage's full summary: _manifest.json in its folder)", summary_line(summaries))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
