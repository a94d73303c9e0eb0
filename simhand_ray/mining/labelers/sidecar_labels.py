"""The sidecar label table of a video: one row per hand per frame, with the ground truth. The synth job
writes it (``simhand_ray.synthetic.video``), the groundtruth labeler reads it: the format lives here, beside its
reader, so that mining never imports synthetic.

Written next to each video as ``<stem>.labels.parquet`` (``synth_00000.mp4`` ->
``synth_00000.labels.parquet``). Coordinates: keypoints_2d in frame pixels (continuous, pixel centres at
i + 0.5), joints_3d in camera space (metres; x right, y down, z forward), K the 3x3 intrinsics with
keypoints_2d == project(joints_3d, K). All arrays are flattened row-major; joints in SPEC order.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from simhand_ray.schema import NUM_JOINTS

LABEL_SUFFIX = ".labels.parquet"

LABELS = pa.schema([
    ("video_id", pa.string()),
    ("video_file", pa.string()),          # basename of the video the row belongs to
    ("frame_index", pa.int64()),          # display order, 0-based
    ("hand_index", pa.int32()),           # stable identity of the hand within its video (0, 1)
    ("handedness", pa.string()),          # "left" | "right" as seen in the frame
    ("image_width", pa.int32()),
    ("image_height", pa.int32()),
    ("keypoints_2d", pa.list_(pa.float32(), 2 * NUM_JOINTS)),
    ("joints_3d", pa.list_(pa.float32(), 3 * NUM_JOINTS)),
    ("K", pa.list_(pa.float32(), 9)),
    ("box", pa.list_(pa.float32(), 4)),   # x0, y0, x1, y1 of the hand (no forearm), clipped to the image
    ("visibility", pa.list_(pa.float32(), NUM_JOINTS)),   # 1: in the image and not occluded
])


def sidecar_uri(video_uri: str) -> str:
    """``dir/name.mp4`` -> ``dir/name.labels.parquet``."""
    head, _, name = str(video_uri).rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{head}/{stem}{LABEL_SUFFIX}" if head else f"{stem}{LABEL_SUFFIX}"


def labels_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts keyed by LABELS names; arrays any shape) -> a LABELS table."""
    cols = {name: [] for name in LABELS.names}
    for r in rows:
        for name in LABELS.names:
            v = r[name]
            if isinstance(v, np.ndarray):
                v = v.astype(np.float32).reshape(-1).tolist()
            cols[name].append(v)
    return pa.table(cols, schema=LABELS)


def column_array(table: pa.Table, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A fixed-size-list column -> float32 array (N, *shape)."""
    col = table.column(name).combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape((-1,) + shape)
