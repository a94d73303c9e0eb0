"""The one hand-skeleton drawing: 21 keypoints and their bones over an image, for contact sheets of
synthetic frames and of mined pairs."""
from __future__ import annotations

import cv2
import numpy as np

from simhand_ray.schema import BONES

#: One colour per digit (RGB): thumb red, index yellow, middle green, ring blue, little magenta.
DIGIT_COLORS = ((230, 60, 60), (230, 200, 40), (60, 200, 80), (60, 120, 230), (200, 70, 200))
_SHIFT = 4                      # fractional bits of the drawing coordinates (1/16 pixel)


def draw_hand(image: np.ndarray, keypoints: np.ndarray, visibility: np.ndarray | None = None,
              thickness: int = 1, bgr: bool = False) -> np.ndarray:
    """A copy of a uint8 (H, W, 3) image with the skeleton of keypoints (21, 2) drawn (continuous pixels:
    pixel centres at i + 0.5): bones and joints in their digit's colour, the wrist white, occluded joints
    (visibility 0) hollow. ``bgr``: the image is in OpenCV's channel order (as ``cv2.imdecode`` gives)."""
    colors = [c[::-1] if bgr else c for c in DIGIT_COLORS]
    out = image.copy()
    pts = np.round((np.asarray(keypoints, np.float64) - 0.5) * (1 << _SHIFT)).astype(np.int64)
    for b, (p, c) in enumerate(BONES):
        cv2.line(out, tuple(map(int, pts[p])), tuple(map(int, pts[c])), colors[b // 4], thickness, cv2.LINE_AA,
                 _SHIFT)
    for j, pt in enumerate(pts):
        color = (255, 255, 255) if j == 0 else colors[(j - 1) // 4]
        filled = visibility is None or visibility[j] > 0
        cv2.circle(out, tuple(map(int, pt)), (thickness + 1) << _SHIFT, color, -1 if filled else 1, cv2.LINE_AA,
                   _SHIFT)
    return out
