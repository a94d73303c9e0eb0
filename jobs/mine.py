"""The mine job: videos/images -> labeled right-hand crops (label) -> similar-hands graph (graph) -> pairs.

    python jobs/mine.py --input data/sample --output out/mine
    ray job submit --working-dir . -- python jobs/mine.py --input s3://bucket/videos --output s3://bucket/mine
"""
from __future__ import annotations

import argparse
import json
import logging

import _common  # noqa: F401  (puts the repo on sys.path)
from _common import HelpFormatter, float_range, init_ray, int_range, setup_logging

from simhand_ray.config import CropConfig, FilterConfig, LabelConfig, LabelerConfig
from simhand_ray.config import GraphConfig

log = logging.getLogger("simhand.mine")
STAGES = ("label", "graph", "pairs", "all")


def add_label_args(p: argparse.ArgumentParser) -> None:
    d, f, lab = LabelConfig(), FilterConfig(), LabelerConfig()
    g = p.add_argument_group("label stage (SPEC §1)")
    g.add_argument("--input", action="append", default=[],
                   help="directory or s3:// prefix (scanned for videos/images), or a manifest (.txt/.csv/.parquet); repeatable")
    g.add_argument("--source", default=d.source, help="source name for inputs whose manifest gives none")
    g.add_argument("--every-n", type=int_range(1), default=d.every_n, help="keep 1 frame in N (display order)")
    g.add_argument("--decode-mode", choices=("all", "keyframes"), default=d.decode_mode,
                   help="all: decode every frame and keep 1 in N; keyframes: decode keyframes only (fast, irregular)")
    g.add_argument("--segment-frames", type=int_range(1), default=d.segment_frames, help="split long videos into segments of this many frames")
    g.add_argument("--max-frames-per-video", type=int_range(0), default=d.max_frames_per_video, help="0 = all")
    g.add_argument("--num-workers", type=int_range(0), default=d.num_workers, help="labeler actors (0 = fit the cluster)")
    g.add_argument("--labeler", choices=("mediapipe", "openmmlab", "groundtruth"), default=lab.backend)
    g.add_argument("--max-hands", type=int_range(1), default=lab.max_hands, help="per frame")
    g.add_argument("--labeler-batch-size", type=int_range(1), default=lab.batch_size,
                   help="frames per labeler call (up to twice this many are decoded ahead)")
    g.add_argument("--gpus-per-labeler", type=float_range(0), default=lab.gpus_per_labeler)
    g.add_argument("--cpus-per-labeler", type=float_range(0, lo_open=True), default=lab.cpus_per_labeler)
    g.add_argument("--pin-cores", action=argparse.BooleanOptionalAction, default=lab.pin_cores,
                   help="each labeler actor takes whole cores of its own on its node (Linux)")
    g.add_argument("--det-config", default=lab.det_config)
    g.add_argument("--det-checkpoint", default=lab.det_checkpoint, help="RTMDet hand checkpoint: path or s3://")
    g.add_argument("--pose-config", default=lab.pose_config)
    g.add_argument("--pose-checkpoint", default=lab.pose_checkpoint, help="RTMPose hand checkpoint: path or s3://")
    g.add_argument("--groundtruth-labels", default=lab.groundtruth_labels, help="sidecar labels of synthetic videos")
    g.add_argument("--min-det-score", type=float_range(0, 1), default=f.min_det_score)
    g.add_argument("--min-keypoint-score", type=float_range(0, 1), default=f.min_keypoint_score,
                   help="mean of the 21 keypoint scores")
    g.add_argument("--min-box-side", type=float_range(0), default=f.min_box_side,
                   help="pixels, shorter side of the detector box")
    g.add_argument("--min-keypoints-inside", type=float_range(0, 1), default=f.min_keypoints_inside,
                   help="fraction of the 21 keypoints inside the image")


def label_config(a: argparse.Namespace) -> LabelConfig:
    return LabelConfig(
        inputs=tuple(a.input), output=a.output, source=a.source, every_n=a.every_n, decode_mode=a.decode_mode,
        segment_frames=a.segment_frames, max_frames_per_video=a.max_frames_per_video, num_workers=a.num_workers,
        filter=FilterConfig(a.min_det_score, a.min_keypoint_score, a.min_box_side, a.min_keypoints_inside),
        crop=CropConfig(),
        labeler=LabelerConfig(
            backend=a.labeler, max_hands=a.max_hands, batch_size=a.labeler_batch_size,
            gpus_per_labeler=a.gpus_per_labeler, cpus_per_labeler=a.cpus_per_labeler, pin_cores=a.pin_cores,
            det_config=a.det_config, det_checkpoint=a.det_checkpoint, pose_config=a.pose_config, pose_checkpoint=a.pose_checkpoint,
            groundtruth_labels=a.groundtruth_labels),
    )


def add_graph_args(p: argparse.ArgumentParser) -> None:
    d = GraphConfig()
    g = p.add_argument_group("graph + pairs stages (SPEC §2)")
    g.add_argument("--k", type=int_range(1), default=d.k, help="nearest hands from other videos kept per hand")
    g.add_argument("--shards", type=int_range(1), default=d.shards, help="faiss index shards, one Ray actor each")
    g.add_argument("--index", choices=("flat", "ivf", "ivfpq", "hnsw"), default=d.index,
                   help="flat = exact; ivf / ivfpq / hnsw = approximate (see benchmarks/graph_scale.py)")
    g.add_argument("--pca-dim", type=int_range(0, 42), default=d.pca_dim, help="0 = no PCA of the 42-d descriptors")
    g.add_argument("--nlist", type=int_range(0), default=d.nlist, help="IVF lists per shard (0 = 4 sqrt(n))")
    g.add_argument("--nprobe", type=int_range(1), default=d.nprobe, help="IVF lists searched per query")
    g.add_argument("--cpus-per-shard", type=float_range(0, lo_open=True), default=d.cpus_per_shard)
    g.add_argument("--gpus-per-shard", type=float_range(0), default=d.gpus_per_shard)
    g.add_argument("--positive-rank", type=int_range(0), default=d.positive_rank, help="pairs: neighbour used as positive")
    g.add_argument("--pairs-per-shard", type=int_range(1), default=d.pairs_per_shard, help="pairs: rows per Parquet shard")


def graph_config(a: argparse.Namespace) -> GraphConfig:
    return GraphConfig(
        output=a.output, k=a.k, shards=a.shards, index=a.index, pca_dim=a.pca_dim, nlist=a.nlist, nprobe=a.nprobe,
        cpus_per_shard=a.cpus_per_shard, gpus_per_shard=a.gpus_per_shard, positive_rank=a.positive_rank,
        pairs_per_shard=a.pairs_per_shard)


def log_label_requests(cfg: LabelConfig) -> None:
    """The resource shapes the label stage asks Ray for (an autoscaling cluster launches nodes to fit them)."""
    from simhand_ray.mining.pipeline import INLINE_PLAN_MAX_VIDEOS, PLAN_TASK_CPUS, VIDEOS_PER_PLAN_TASK

    lab = cfg.labeler
    log.info("label stage requests: planning tasks {CPU: %s} (one per %d videos, beyond %d videos), then %s "
             "labeler actors, each {CPU: %s, GPU: %s}", PLAN_TASK_CPUS, VIDEOS_PER_PLAN_TASK, INLINE_PLAN_MAX_VIDEOS,
             cfg.num_workers or "cluster-sized (--num-workers 0)", lab.cpus_per_labeler, lab.gpus_per_labeler)


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
    if a.stage in ("label", "all") and not a.input:
        p.error("--input is required for the label stage")
    try:
        cfg = label_config(a) if a.stage in ("label", "all") else None
        gcfg = graph_config(a)
    except ValueError as e:
        p.error(str(e))
    init_ray(a.num_cpus)
    if cfg is not None:
        log_label_requests(cfg)
    summaries = {}
    if a.stage in ("label", "all"):
        from simhand_ray.mining.pipeline import run_label_stage
        summaries["label"] = run_label_stage(cfg)
    if a.stage in ("graph", "all"):
        from simhand_ray.graph.knn import run_graph_stage
        summaries["graph"] = run_graph_stage(gcfg)
    if a.stage in ("pairs", "all"):
        from simhand_ray.graph.pairs import run_pairs_stage
        summaries["pairs"] = run_pairs_stage(gcfg)
    log.info("summary: %s", json.dumps(summaries, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
