"""A contact sheet of rendered frames (keypoints drawn with simhand_ray.drawing), for looking at the data."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


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
