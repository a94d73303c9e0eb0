"""A contact sheet of mined pairs (``pairs/_montage.jpg``): anchor | positive crops with their keypoints
drawn and the distance written, for looking at what the pairs stage mined."""
from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa

from simhand_ray import storage
from simhand_ray.drawing import draw_hand
from simhand_ray.schema import PAIRS, keypoints_array

#: The montage's name in the pairs folder: ``_`` keeps it out of the dataset.
MONTAGE = "_montage.jpg"


def pairs_montage(pairs: pa.Table, n: int = 16, pairs_per_row: int = 4, tile: int = 160) -> np.ndarray:
    """A BGR image: up to n pairs as [anchor | positive] tiles with keypoints drawn, distance written."""
    n = min(n, len(pairs))
    rows = max(1, -(-n // pairs_per_row))
    gap = 6
    w = pairs_per_row * (2 * tile + gap) - gap
    canvas = np.full((rows * (tile + gap) - gap, w, 3), 40, np.uint8)
    if n == 0:
        return canvas
    akp = keypoints_array(pairs["anchor_keypoints"].slice(0, n))
    pkp = keypoints_array(pairs["positive_keypoints"].slice(0, n))
    for i in range(n):
        y, x = (i // pairs_per_row) * (tile + gap), (i % pairs_per_row) * (2 * tile + gap)
        for side, (col, kp) in enumerate((("anchor_jpeg", akp[i]), ("positive_jpeg", pkp[i]))):
            img = cv2.imdecode(np.frombuffer(pairs[col][i].as_py(), np.uint8), cv2.IMREAD_COLOR)
            if img is None:
                continue
            img = draw_hand(img, kp, thickness=2, bgr=True)
            canvas[y:y + tile, x + side * tile:x + (side + 1) * tile] = cv2.resize(img, (tile, tile),
                                                                                   interpolation=cv2.INTER_AREA)
        d = pairs["distance"][i].as_py()
        cv2.putText(canvas, f"d={d:.3f}", (x + 4, y + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return canvas


def write_montage(pairs_uri: str, uri: str, n: int) -> bool:
    """Draw the first n rows of the first pairs shard to a JPEG at uri; False when there are no pairs."""
    files = storage.list_parts(pairs_uri)
    if not files or n <= 0:
        return False
    t = storage.read_parquet(files[0], schema=PAIRS).slice(0, n)
    ok, jpg = cv2.imencode(".jpg", pairs_montage(t, n), [cv2.IMWRITE_JPEG_QUALITY, 90])
    storage.write_bytes_atomic(uri, jpg.tobytes())
    return bool(ok)
