"""Per-view augmentations that carry the 21 keypoints with the image (SPEC §3), run in Ray Data on CPU.

One view of a crop: rotation by an integer angle about the keypoints' centroid, a keypoint-driven square crop
(half-side = max keypoint radius x U(0.9, 1.5), origin jitter of up to 15 px), resize to 128x128 — all three
as one affine warp — then HSV colour jitter. ImageNet normalisation is the last step and runs on the training
device (``normalize_imagenet``): views travel as uint8, 4x fewer bytes through the object store.

Coordinates are continuous pixels (pixel i covers [i, i+1), its centre is i + 0.5), as in ``schema``.
Each view also returns what PeCLR needs to undo it in projection space (``model.equivariant_projection``):
the ``angle`` (degrees, OpenCV's sign: positive turns the image counter-clockwise on screen) and the
``shift``: how far the crop jitter moved the hand inside the view, as a fraction of the view's side
(PeCLR's ``jitter / image size``; here measured in the crop's own pixels so the units are exact).

Randomness is a pure function of (seed, row key, epoch, copy, view): the same row gives the same views in
the same epoch on any worker, and a different pair of views next epoch.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np

from simhand_ray.config import AugmentConfig
from simhand_ray.schema import NUM_JOINTS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Columns of an augmented batch (what ``data`` streams to the training workers).
VIEW_COLUMNS = ("view1", "view2", "keypoints1", "keypoints2", "angle1", "angle2", "shift1", "shift2", "epoch")

MIN_HALF_SIDE = 8.0  # px: keeps the crop finite when keypoints collapse to a point


@dataclass(frozen=True)
class ViewParams:
    """Random draws of one view."""
    angle: int                 # degrees
    margin: float              # half-side = radius x margin
    jitter: np.ndarray         # (2,) crop-origin offset in crop pixels, integers in [0, max_jitter]
    hue: float
    sat: float
    alpha: float
    beta: float


def row_key(anchor_id: str, positive_id: str) -> int:
    """A stable 63-bit key of a pair row (independent of file layout and row order)."""
    digest = hashlib.blake2b(f"{anchor_id}|{positive_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def view_rng(seed: int, key: int, epoch: int, copy: int, view: int) -> np.random.Generator:
    """The generator of one view: a pure function of its coordinates (see module docstring)."""
    return np.random.default_rng([int(seed), int(key), int(epoch), int(copy), int(view)])


def sample_params(rng: np.random.Generator, cfg: AugmentConfig) -> ViewParams:
    """Draw one view's parameters (always the same number of draws, whatever is switched off)."""
    angle = int(rng.integers(-cfg.max_angle, cfg.max_angle + 1))
    margin = float(rng.uniform(*cfg.crop_margin))
    jitter = rng.integers(0, cfg.max_jitter + 1, size=2).astype(np.float64)
    hue, sat = float(rng.uniform(*cfg.hue_factor)), float(rng.uniform(*cfg.sat_factor))
    alpha, beta = float(rng.uniform(*cfg.value_alpha)), float(rng.uniform(*cfg.value_beta))
    return ViewParams(angle if cfg.rotate else 0, margin, jitter if cfg.crop else np.zeros(2), hue, sat, alpha, beta)


def rotation_matrix(angle: float, center: np.ndarray) -> np.ndarray:
    """(2, 3) rotation by ``angle`` degrees about ``center`` (OpenCV's getRotationMatrix2D, continuous coords)."""
    a, b = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
    cx, cy = float(center[0]), float(center[1])
    return np.array([[a, b, (1 - a) * cx - b * cy], [-b, a, b * cx + (1 - a) * cy]])


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(2, 3) affine applied to points (..., 2)."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def view_affine(keypoints: np.ndarray, image_size: tuple[int, int], params: ViewParams,
                cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Rotation + keypoint crop + resize of one view as one affine (continuous coords).

    keypoints: (21, 2) in source pixels; image_size: (width, height).
    Returns (A, shift): A (2, 3) maps source -> view pixels; shift (2,) is the hand's displacement in the
    view caused by the origin jitter, as a fraction of the view side.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if not np.isfinite(kp).all():
        raise ValueError("keypoints must be finite")
    center = kp.mean(axis=0)
    rot = rotation_matrix(params.angle, center) if cfg.rotate else np.array([[1.0, 0, 0], [0, 1.0, 0]])
    if cfg.crop:
        # Rotation about the centroid keeps the centroid and every joint's radius.
        radius = float(np.sqrt(((kp - center) ** 2).sum(axis=1)).max())
        half = max(radius * params.margin, MIN_HALF_SIDE)
        origin = center - half + params.jitter
        side = 2.0 * half
        shift = -params.jitter / side
    else:
        origin, side, shift = np.zeros(2), float(max(image_size)), np.zeros(2)
    scale = cfg.size / side
    a = rot.copy()
    a[:, 2] -= origin
    return a * scale, shift


def _pixel_matrix(a: np.ndarray) -> np.ndarray:
    """Continuous-coordinate affine -> the matrix cv2.warpAffine wants (pixel centres at integers)."""
    m = a.copy()
    m[:, 2] = a[:, :2] @ np.array([0.5, 0.5]) + a[:, 2] - 0.5
    return m


def color_jitter(image: np.ndarray, params: ViewParams) -> np.ndarray:
    """HSV jitter of an RGB uint8 image (PeCLR): h *= hue, s *= sat, v = v * alpha + beta, clipped."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = np.clip(hsv[..., 0] * params.hue, 0, 179)
    hsv[..., 1] = np.clip(hsv[..., 1] * params.sat, 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * params.alpha + params.beta, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def augment_view(image: np.ndarray, keypoints: np.ndarray, params: ViewParams,
                 cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One view of an image (H, W, 3) RGB uint8 with keypoints (21, 2).

    Returns (view (S, S, 3) uint8, keypoints (21, 2) in view pixels, shift (2,)).
    """
    a, shift = view_affine(keypoints, (image.shape[1], image.shape[0]), params, cfg)
    out = cv2.warpAffine(image, _pixel_matrix(a), (cfg.size, cfg.size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    if cfg.color_jitter:
        out = color_jitter(out, params)
    return out, apply_affine(a, np.asarray(keypoints, dtype=np.float64)).astype(np.float32), shift.astype(np.float32)


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> (H, W, 3) RGB uint8."""
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("undecodable JPEG in the pairs table")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def augment_batch(batch: dict[str, np.ndarray], *, seed: int, uses_positive: bool, cfg: AugmentConfig,
                  fixed_views: bool = False) -> dict[str, np.ndarray]:
    """A batch of pair rows -> two augmented views per row (the ``map_batches`` function of ``data``).

    In: anchor_jpeg (n,) bytes, anchor_keypoints (n, 21, 2), [positive_jpeg, positive_keypoints when
    ``uses_positive``], row_key (n,), epoch (n,), copy (n,).
    Out (``VIEW_COLUMNS``): view1/view2 (n, 3, S, S) uint8, keypoints1/2 (n, 21, 2) float32 in view pixels,
    angle1/2 (n,) float32 degrees, shift1/2 (n, 2) float32, epoch (n,) int64.
    SimCLR/PeCLR: both views from the anchor; SiMHand: view 2 from the mined positive.
    """
    n = len(batch["row_key"])
    s = cfg.size
    out = {
        "view1": np.empty((n, 3, s, s), np.uint8), "view2": np.empty((n, 3, s, s), np.uint8),
        "keypoints1": np.empty((n, NUM_JOINTS, 2), np.float32), "keypoints2": np.empty((n, NUM_JOINTS, 2), np.float32),
        "angle1": np.empty(n, np.float32), "angle2": np.empty(n, np.float32),
        "shift1": np.empty((n, 2), np.float32), "shift2": np.empty((n, 2), np.float32),
        "epoch": np.asarray(batch["epoch"], dtype=np.int64),
    }
    src2 = "positive" if uses_positive else "anchor"
    for i in range(n):
        epoch = 0 if fixed_views else int(batch["epoch"][i])
        anchor = decode_jpeg(batch["anchor_jpeg"][i])
        second = decode_jpeg(batch["positive_jpeg"][i]) if uses_positive else anchor
        kps = (np.asarray(batch["anchor_keypoints"][i], np.float32).reshape(NUM_JOINTS, 2),
               np.asarray(batch[f"{src2}_keypoints"][i], np.float32).reshape(NUM_JOINTS, 2))
        for v, (img, kp) in enumerate(((anchor, kps[0]), (second, kps[1])), start=1):
            params = sample_params(view_rng(seed, batch["row_key"][i], epoch, batch["copy"][i], v), cfg)
            view, kp_out, shift = augment_view(img, kp, params, cfg)
            out[f"view{v}"][i] = view.transpose(2, 0, 1)
            out[f"keypoints{v}"][i] = kp_out
            out[f"angle{v}"][i] = params.angle
            out[f"shift{v}"][i] = shift
    return out


def normalize_imagenet(views):
    """uint8 (N, 3, H, W) torch tensor -> float32 normalised with ImageNet mean/std (on its own device).

    The one input normalisation of the trunk: pre-training's views and evaluation's crops
    (``evaluate.preprocess.to_model_input``) both go through it, so what the trunk sees cannot drift apart."""
    import torch

    mean = torch.tensor(IMAGENET_MEAN, device=views.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=views.device).view(1, 3, 1, 1)
    return (views.float().div_(255.0) - mean) / std
