"""Hand labelers behind one interface (``base.Labeler``); ``build_labeler`` picks one by config."""
from __future__ import annotations

from simhand_ray.config import LabelerConfig
from simhand_ray.mining.labelers.base import DetectedHand, Labeler


def build_labeler(cfg: LabelerConfig) -> Labeler:
    """Instantiate the configured backend (imports are lazy: each backend pulls heavy dependencies)."""
    if cfg.backend == "mediapipe":
        from simhand_ray.mining.labelers.mediapipe import MediaPipeLabeler
        return MediaPipeLabeler(cfg)
    if cfg.backend == "openmmlab":
        from simhand_ray.mining.labelers.openmmlab import OpenMMLabLabeler
        return OpenMMLabLabeler(cfg)
    if cfg.backend == "groundtruth":
        from simhand_ray.mining.labelers.groundtruth import GroundTruthLabeler
        return GroundTruthLabeler(cfg)
    raise ValueError(f"unknown labeler backend {cfg.backend!r}")


__all__ = ["DetectedHand", "Labeler", "build_labeler"]
