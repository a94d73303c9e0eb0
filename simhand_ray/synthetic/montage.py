"""A contact sheet of rendered frames with their ground-truth keypoints drawn, for looking at the data."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from simhand_ray.schema import BONES

# One colour per digit (RGB): thumb red, index yellow, middle green, ring blue, little magenta.
_DIGIT_COLORS = ((230, 60, 60), (230, 200, 40), (60, 200, 80), (60, 120, 230), (200, 70, 200))


def draw_hand(image: np.ndarray, keypoints: np.ndarray, visibility: np.ndarray | None = None,
              thickness: int = 1) -> np.ndarray:
    """Draw a 21-keypoint skeleton (keypoints (21, 2) continuous pixels) onto a copy of an RGB uint8 image.
    Occluded joints (visibility 0) are drawn hollow."""
    out = image.copy()
    pts = np.round((np.asarray(keypoints, np.float64) - 0.5) * 4).astype(np.int32)   # 2 fractional bits
    for b, (p, c) in enumerate(BONES):
        cv2.line(out, tuple(pts[p]), tuple(pts[c]), _DIGIT_COLORS[b // 4], thickness, cv2.LINE_AA, shift=2)
    for j, pt in enumerate(pts):
        color = (255, 255, 255) if j == 0 else _DIGIT_COLORS[(j - 1) // 4]
        filled = visibility is None or visibility[j] > 0
        cv2.circle(out, tuple(pt), 2 * 4, color, -1 if filled else 1, cv2.LINE_AA, shift=2)
    return out


def montage(images: Sequence[np.ndarray], columns: int = 6, tile_width: int = 320) -> np.ndarray:
    """Tile RGB images (any sizes) into one RGB image, each scaled to ``tile_width``."""
    if not images:
        return np.zeros((8, 8, 3), np.uint8)
    tiles = []
    for im in images:
        h, w = im.shape[:2]
        tiles.append(cv2.resize(im, (tile_width, int(round(h * tile_width / w))), interpolation=cv2.INTER_AREA))
    th = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, th - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    return np.vstack(rows)


def encode_png(image: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()
