"""Column names and Arrow types of every table the stages write (hands, rejects, segments, graph, pairs).

Keypoints are stored flattened, row-major: ``keypoints[2*j], keypoints[2*j+1]`` are x, y of joint j in
crop pixels (continuous coordinates, pixel centres at i + 0.5), in SPEC order (wrist, thumb CMC..TIP,
index MCP..TIP, middle, ring, little). Every stored hand is a right hand (left hands are mirrored).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

NUM_JOINTS = 21
CROP_SIZE = 224

#: Joint names in SPEC order (OpenPose/MediaPipe/COCO-WholeBody hand order).
JOINT_NAMES = (
    "wrist",
    "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip",
    "index_mcp", "index_pip", "index_dip", "index_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip",
    "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "little_mcp", "little_pip", "little_dip", "little_tip",
)
WRIST, MIDDLE_MCP = 0, 9

#: Bones as (parent, child) joint pairs, for drawing and for the synthetic hand model.
BONES = tuple(
    [(0, 1), (1, 2), (2, 3), (3, 4)]
    + [(0, 5), (5, 6), (6, 7), (7, 8)]
    + [(0, 9), (9, 10), (10, 11), (11, 12)]
    + [(0, 13), (13, 14), (14, 15), (15, 16)]
    + [(0, 17), (17, 18), (18, 19), (19, 20)]
)

# --- label stage: hands/ -------------------------------------------------------------------------
HANDS = pa.schema([
    ("hand_id", pa.string()),            # see hand_id(): unique + stable
    ("source", pa.string()),             # dataset/source name (e.g. "ego4d", "100doh", "sample")
    ("video_id", pa.string()),           # hands of one video are never each other's positives
    ("uri", pa.string()),                # the input file the frame came from
    ("frame_index", pa.int64()),         # display-order frame number in the video (0 for an image)
    ("hand_index", pa.int32()),          # index of the hand among the kept hands of this frame
    ("image_width", pa.int32()),
    ("image_height", pa.int32()),
    ("box", pa.list_(pa.float32(), 4)),  # detector box x0, y0, x1, y1 in frame pixels (before mirroring)
    ("crop_box", pa.list_(pa.float32(), 4)),  # the square region cropped, x0, y0, x1, y1 in frame pixels
    ("handedness", pa.string()),         # "left" | "right": the hand as seen in the frame
    ("handedness_score", pa.float32()),
    ("det_score", pa.float32()),
    ("keypoints", pa.list_(pa.float32(), 2 * NUM_JOINTS)),  # 21x2 in crop pixels, right-hand (mirrored)
    ("keypoint_scores", pa.list_(pa.float32(), NUM_JOINTS)),
    ("crop_jpeg", pa.binary()),          # CROP_SIZE x CROP_SIZE RGB JPEG, right-hand (mirrored)
])



def hand_id(source: str, video_id: str, frame_index: int, hand_index: int, file_key: str) -> str:
    """``{source}:{video_id}:{frame_index:08d}:{hand_index}:{tag}``, unique in an output and the same on
    every re-run. source and video_id pass through ``inputs.clean_id``, which keeps them free of ':' and
    keeps distinct names distinct (a name with other characters than ``A-Za-z0-9._/-`` gets '~' and a hash
    of it); video_id defaults to the file's path below its input directory, extension included. ``tag``
    is the first 8 hex digits of the file's key (a digest of its real path, or its s3:// URI), so two
    files given one (source, video_id) (two folders under one --source, a manifest's video_id column)
    still get distinct hand_ids."""
    return f"{source}:{video_id}:{frame_index:08d}:{hand_index}:{file_key[:8]}"


# --- label stage: rejects/ (inputs or segments that could not be read, or read only in part) ------
REJECTS = pa.schema([
    ("uri", pa.string()),
    ("source", pa.string()),
    ("video_id", pa.string()),
    ("segment_start", pa.int64()),       # frame range of the work item ([-1, -1] for a whole input)
    ("segment_end", pa.int64()),
    ("reason", pa.string()),             # short machine-readable kind: missing, not_a_video, unreadable_image, truncated, ...
    ("detail", pa.string()),             # the human-readable message (exception text, counts)
])

# --- label stage: segments/ (one row per finished work item; its presence is the commit marker) ---
SEGMENTS = pa.schema([
    ("work_id", pa.string()),
    ("uri", pa.string()),
    ("source", pa.string()),
    ("video_id", pa.string()),
    ("kind", pa.string()),               # "video" | "images"
    ("segment_start", pa.int64()),
    ("segment_end", pa.int64()),
    ("frames_decoded", pa.int64()),      # frames the decoder produced inside the range
    ("frames_kept", pa.int64()),         # frames sent to the labeler (1 in N)
    ("hands_found", pa.int64()),
    ("hands_kept", pa.int64()),
    ("rejects", pa.int64()),
    ("seconds", pa.float64()),
])

# --- graph stage ---------------------------------------------------------------------------------
GRAPH = pa.schema([
    ("hand_id", pa.string()),
    ("neighbor_ids", pa.list_(pa.string())),
    ("distances", pa.list_(pa.float32())),   # ascending L2 distances, aligned with neighbor_ids
])

# --- pairs stage (what pretrain streams) ---------------------------------------------------------
#: Rows per row group of a pairs file: the pretrain stream reads row groups as its units (train/data.py).
PAIRS_ROW_GROUP_ROWS = 256

PAIRS = pa.schema([
    ("anchor_id", pa.string()),
    ("positive_id", pa.string()),
    ("anchor_jpeg", pa.binary()),
    ("positive_jpeg", pa.binary()),
    ("anchor_keypoints", pa.list_(pa.float32(), 2 * NUM_JOINTS)),
    ("positive_keypoints", pa.list_(pa.float32(), 2 * NUM_JOINTS)),
    ("distance", pa.float32()),
    ("source", pa.string()),
])


def keypoints_array(column) -> np.ndarray:
    """A keypoints column (Arrow fixed-size list or array of 42-vectors) -> float32 array (N, 21, 2)."""
    if isinstance(column, (pa.ChunkedArray, pa.Array)):
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        flat = column.flatten().to_numpy(zero_copy_only=False)
        return flat.astype(np.float32).reshape(-1, NUM_JOINTS, 2)
    return np.stack([np.asarray(k, dtype=np.float32) for k in column]).reshape(-1, NUM_JOINTS, 2)


def empty_table(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
