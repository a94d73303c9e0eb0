"""Dataset hand -> model input: keypoint-driven square crop, optional augmentation, left hands mirrored.

One 2x3 similarity transform ``dst = A @ src + b`` (continuous pixel coordinates, pixel centres at
i + 0.5, as in ``schema``) maps the frame to the crop. It carries the crop, the in-plane rotation, and
the mirror of left hands, so image, 2D keypoints and root-relative 3D joints are transformed by the same
maths: the 3D joints get the rotation about the camera's z axis (exact for a crop on the optical axis,
the usual approximation elsewhere) and the mirror x -> -x. All hands the model sees are right hands,
like the pre-training crops (SPEC §1).

Model targets: ``uv`` (21, 2) keypoints in the crop normalised to [0, 1]; ``xyz`` (21, 3) root-relative
joints in mm in the (rotated, mirrored) crop frame; ``frame_from_crop`` (3, 3) undoes rotation and mirror
for predictions.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from simhand_ray.evaluate.metrics import ROOT
from simhand_ray.train.augment import normalize_imagenet


@dataclass(frozen=True)
class CropSpec:
    """How a hand is cut out: square of side ``scale`` x the longer side of the visible keypoints' box,
    resized to ``size``; training jitter of rotation (degrees), scale (fraction) and shift (fraction of the
    side), and brightness/contrast (fraction)."""
    size: int = 128
    scale: float = 1.5
    mirror_left: bool = True
    rotate_deg: float = 0.0
    scale_jitter: float = 0.0
    shift: float = 0.0
    color_jitter: float = 0.0

    @property
    def augments(self) -> bool:
        return bool(self.rotate_deg or self.scale_jitter or self.shift or self.color_jitter)


def train_spec(size: int = 128, scale: float = 1.5) -> CropSpec:
    """The fine-tuning augmentation (moderate, PeCLR-like: rotation, scale, shift, colour)."""
    return CropSpec(size=size, scale=scale, rotate_deg=30.0, scale_jitter=0.15, shift=0.08, color_jitter=0.2)


def crop_spec(size: int, scale: float, augment: bool) -> CropSpec:
    """The crop of a fine-tuning run (``train_spec`` when it augments) or of its evaluation (no jitter)."""
    return train_spec(size, scale) if augment else CropSpec(size=size, scale=scale)


def crop_transform(center: np.ndarray, side: float, size: int, angle_deg: float = 0.0,
                   mirror: bool = False) -> np.ndarray:
    """(2, 3) similarity: frame (continuous px) -> crop (continuous px). The square of side ``side``
    centred at ``center`` becomes the ``size`` x ``size`` crop, rotated by ``angle_deg`` about its centre,
    mirrored horizontally when ``mirror``."""
    s = size / float(side)
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    flip = np.diag([-1.0, 1.0]) if mirror else np.eye(2)
    lin = s * flip @ rot
    return np.concatenate([lin, (size / 2.0 - lin @ np.asarray(center, np.float64))[:, None]], axis=1)


def warp_image(image: np.ndarray, affine: np.ndarray, size: int) -> np.ndarray:
    """Resample ``image`` (H, W, 3) through ``affine`` (continuous coords) -> (size, size, 3); outside is black."""
    lin, t = affine[:, :2], affine[:, 2]
    # OpenCV maps integer pixel centres: dst_cv = lin @ (src_cv + 0.5) + t - 0.5
    t_cv = lin @ np.array([0.5, 0.5]) + t - 0.5
    m = np.concatenate([lin, t_cv[:, None]], axis=1)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def hand_square(joints_2d: np.ndarray, visible: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Centre (2,) and longer side of the box of the visible keypoints (continuous px)."""
    pts = joints_2d if visible is None or not np.any(visible) else joints_2d[np.asarray(visible, bool)]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return (lo + hi) / 2.0, float((hi - lo).max())


def prepare_hand(image: np.ndarray, joints_2d: np.ndarray, joints_3d: np.ndarray, side: str,
                 visible: np.ndarray, spec: CropSpec, rng: np.random.Generator | None = None) -> dict:
    """One hand -> model input and targets (see the module docstring).

    image (H, W, 3) uint8; joints_2d (21, 2) OpenCV px (centres at integers, as K projects); joints_3d
    (21, 3) mm. Returns image (S, S, 3) uint8, uv (21, 2), xyz (21, 3) mm root-relative, visible (21,),
    frame_from_crop (3, 3).
    """
    j2d = np.asarray(joints_2d, np.float64) + 0.5                 # -> continuous coordinates
    center, extent = hand_square(j2d, visible)
    side_px = max(extent * spec.scale, 8.0)
    angle = 0.0
    if rng is not None and spec.augments:
        angle = float(rng.uniform(-spec.rotate_deg, spec.rotate_deg))
        side_px *= float(rng.uniform(1.0 - spec.scale_jitter, 1.0 + spec.scale_jitter))
        center = center + rng.uniform(-spec.shift, spec.shift, size=2) * side_px
    mirror = spec.mirror_left and side == "left"
    affine = crop_transform(center, side_px, spec.size, angle, mirror)
    crop = warp_image(image, affine, spec.size)
    if rng is not None and spec.color_jitter:
        gain = rng.uniform(1.0 - spec.color_jitter, 1.0 + spec.color_jitter)
        bias = rng.uniform(-spec.color_jitter, spec.color_jitter) * 64.0
        crop = np.clip(crop.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
    uv = (j2d @ affine[:, :2].T + affine[:, 2]) / spec.size
    # the 3D frame turns with the image: rotation about z, mirror of x (the 2D map's linear part, unscaled)
    lin2 = affine[:, :2] * (float(side_px) / spec.size)
    crop_from_frame = np.eye(3)
    crop_from_frame[:2, :2] = lin2
    rel = np.asarray(joints_3d, np.float64) - np.asarray(joints_3d, np.float64)[ROOT]
    return {
        "image": crop,
        "uv": uv.astype(np.float32),
        "xyz": (rel @ crop_from_frame.T).astype(np.float32),
        "visible": np.asarray(visible, bool),
        "frame_from_crop": np.linalg.inv(crop_from_frame).astype(np.float32),
    }


def to_model_input(images):
    """(B, S, S, 3) uint8 torch tensor -> (B, 3, S, S) float, normalised as in pre-training, on its device."""
    return normalize_imagenet(images.permute(0, 3, 1, 2))
