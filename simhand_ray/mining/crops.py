"""Quality filter and crop of SPEC §1 as pure functions: detected hand + frame -> right-hand 224x224 crop.

Coordinates are continuous pixels (pixel centres at i + 0.5) throughout, so mirroring a crop of width W
maps x to W - x and resizing by s maps x to s * x exactly (cv2.resize aligns pixel centres the same way).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from simhand_ray.config import CropConfig, FilterConfig
from simhand_ray.mining.labelers.base import DetectedHand


def reject_reason(hand: DetectedHand, width: int, height: int, cfg: FilterConfig) -> str | None:
    """Why a hand fails the quality filter (a short reason), or None if it passes."""
    if not np.all(np.isfinite(hand.keypoints)):
        return "keypoints_not_finite"
    if hand.det_score < cfg.min_det_score:
        return "det_score"
    if float(np.mean(hand.keypoint_scores)) < cfg.min_keypoint_score:
        return "keypoint_score"
    x0, y0, x1, y1 = hand.box
    if min(x1 - x0, y1 - y0) < cfg.min_box_side:
        return "box_too_small"
    kp = hand.keypoints
    inside = (kp[:, 0] >= 0) & (kp[:, 0] <= width) & (kp[:, 1] >= 0) & (kp[:, 1] <= height)
    if inside.mean() < cfg.min_keypoints_inside:
        return "keypoints_outside_image"
    return None


def square_crop_box(box: np.ndarray, width: int, height: int, scale: float) -> tuple[int, int, int]:
    """The crop region (x0, y0, side) in whole pixels: ``box`` scaled about its centre and made square on
    its longer side, then moved (not squashed) to lie inside the image. Only a square larger than the
    image itself overhangs it (centred on the box as far as the image allows); that part is padded black.
    A square region means no aspect distortion when resized.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(1, int(round(scale * max(x1 - x0, y1 - y0))))

    def place(centre: float, extent: int) -> int:
        lo, hi = sorted((0, extent - side))
        return int(np.clip(round(centre - side / 2), lo, hi))

    return place((x0 + x1) / 2, width), place((y0 + y1) / 2, height), side


def cut_square(frame: np.ndarray, left: int, top: int, side: int) -> np.ndarray:
    """frame[top:top+side, left:left+side], padded with black where the square overhangs the frame."""
    h, w = frame.shape[:2]
    out = np.zeros((side, side) + frame.shape[2:], frame.dtype)
    sx0, sy0, sx1, sy1 = max(left, 0), max(top, 0), min(left + side, w), min(top + side, h)
    out[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = frame[sy0:sy1, sx0:sx1]
    return out


@dataclass
class HandCrop:
    image: np.ndarray          # (size, size, 3) RGB uint8, right hand
    keypoints: np.ndarray      # (21, 2) float32 in crop pixels, right hand
    crop_box: np.ndarray       # (4,) x0, y0, x1, y1 in frame pixels
    mirrored: bool


def crop_hand(frame: np.ndarray, hand: DetectedHand, cfg: CropConfig) -> HandCrop:
    """Cut, resize to ``cfg.size`` and (for left hands) mirror to a right hand, keypoints alongside."""
    h, w = frame.shape[:2]
    left, top, side = square_crop_box(hand.box, w, h, cfg.scale)
    patch = cut_square(frame, left, top, side)
    s = cfg.size / side
    image = cv2.resize(patch, (cfg.size, cfg.size), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    kp = (hand.keypoints.astype(np.float64) - (left, top)) * s
    mirrored = cfg.mirror_left and hand.handedness == "left"
    if mirrored:
        image, kp = mirror(image, kp)
    box = np.array([left, top, left + side, top + side], np.float32)
    return HandCrop(np.ascontiguousarray(image), kp.astype(np.float32), box, mirrored)


def mirror(image: np.ndarray, keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip an image left-right with its keypoints (N, 2): x -> W - x in continuous coordinates."""
    out = keypoints.copy()
    out[..., 0] = image.shape[1] - out[..., 0]
    return image[:, ::-1], out


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """RGB uint8 -> JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> RGB uint8 (H, W, 3)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("not a decodable JPEG")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
