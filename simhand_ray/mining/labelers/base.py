"""The labeler interface: frames in, per frame a list of hands (box, score, 21 keypoints, handedness)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


@dataclass
class DetectedHand:
    """One hand in one frame, in that frame's pixel coordinates (continuous, pixel centres at i + 0.5).

    box: (4,) x0, y0, x1, y1.  keypoints: (21, 2) x, y in SPEC order.  keypoint_scores: (21,) in [0, 1].
    handedness: "left" | "right", the hand as it appears in the (un-mirrored) frame.
    """
    box: np.ndarray
    det_score: float
    keypoints: np.ndarray
    keypoint_scores: np.ndarray
    handedness: str
    handedness_score: float = 1.0


@dataclass
class FrameRef:
    """Where a frame came from, for labelers that look labels up instead of computing them (groundtruth)."""
    uri: str
    video_id: str
    frame_index: int


class Labeler(Protocol):
    """Detect hands and their 2D poses. ``frames``: RGB uint8 arrays (H, W, 3), possibly of different sizes."""

    def label(self, frames: Sequence[np.ndarray], refs: Sequence[FrameRef]) -> list[list[DetectedHand]]:
        ...
