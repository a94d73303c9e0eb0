"""Mined hands joined back to the 3D ground truth of their videos, and the 3D pose distance they are judged by.

A mined hand (``schema.HANDS``) is matched to the sidecar label row (``sidecar_labels.LABELS``, beside its
video) of the same frame whose 2D keypoints lie nearest its own, mapped back from crop to frame pixels. A hand
that cannot be matched (no sidecar, no labelled hand in that frame, or the nearest one too far) is counted by
reason, never dropped silently.

Normalised 3D pose: the 21 camera-space joints minus the wrist, x negated for a left hand (every mined hand
is a right hand), divided by the wrist -> middle-MCP length, so that bone has length 1. Pose distance: the
mean over the 21 joints of the Euclidean distance between two normalised poses (unitless; 0 = same pose).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from simhand_ray import storage
from simhand_ray.mining.labelers.sidecar_labels import LABELS, column_array, sidecar_uri
from simhand_ray.schema import CROP_SIZE, MIDDLE_MCP, NUM_JOINTS, WRIST, keypoints_array

#: A hand matches a label row when their mean 2D keypoint distance is at most this fraction of the label's
#: hand size (the longer side of its keypoints' box): a detector's 2D error, not another hand.
MATCH_TOLERANCE = 0.25

UNMATCHED_REASONS = ("no_sidecar", "no_label_in_frame", "too_far")


def normalized_poses(joints: np.ndarray, left: np.ndarray) -> np.ndarray:
    """(N, 21, 3) camera-space joints, (N,) bool left hands -> (N, 21, 3) wrist-relative right-hand poses with
    |wrist -> middle MCP| = 1."""
    j = np.asarray(joints, np.float64)
    rel = j - j[:, WRIST:WRIST + 1]
    rel[np.asarray(left, bool), :, 0] *= -1.0
    scale = np.linalg.norm(rel[:, MIDDLE_MCP], axis=-1)
    return rel / np.maximum(scale, 1e-12)[:, None, None]


def pose_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean joint distance of aligned rows. (N, 21, D) x2 -> (N,)."""
    return np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1).mean(-1)


def best_rotations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 3, 3) proper rotations R minimising sum_j |a_j - R b_j|^2 (Kabsch, about the wrist). (N, 21, 3) x2."""
    h = np.einsum("nji,njk->nik", np.asarray(b, np.float64), np.asarray(a, np.float64))   # sum_j b_j a_j^T
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.einsum("nij,njk->nik", vt.transpose(0, 2, 1), u.transpose(0, 2, 1))))
    fix = np.ones((len(h), 3))
    fix[:, 2] = d
    return np.einsum("nij,nj,nkj->nik", vt.transpose(0, 2, 1), fix, u)


def aligned_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``pose_distances`` after rotating each b onto its a about the wrist (``best_rotations``). (N,)."""
    r = best_rotations(a, b)
    return pose_distances(a, np.einsum("nij,nkj->nki", r, np.asarray(b, np.float64)))


def frame_keypoints(keypoints: np.ndarray, crop_box: np.ndarray, left: np.ndarray,
                    crop_size: int = CROP_SIZE) -> np.ndarray:
    """Mined keypoints (N, 21, 2) in crop pixels (left hands mirrored) -> frame pixels, as seen in the frame.
    crop_box (N, 4) is the square cut from the frame (x0, y0, x1, y1)."""
    kp = np.array(keypoints, np.float64)
    left = np.asarray(left, bool)
    kp[left, :, 0] = crop_size - kp[left, :, 0]
    box = np.asarray(crop_box, np.float64)
    side = (box[:, 2] - box[:, 0])[:, None, None]
    return kp * side / crop_size + box[:, None, :2]


@dataclass
class Truth:
    """Ground truth of mined hands, row-aligned with the hands given: ``matched`` (N,) bool, ``reason`` (N,)
    '' or one of UNMATCHED_REASONS, ``poses`` (N, 21, 3) normalised (NaN where unmatched), ``joints`` (N, 21, 3)
    camera metres and ``K`` (N, 3, 3) (NaN where unmatched), ``left`` (N,) the label's handedness."""
    matched: np.ndarray
    reason: np.ndarray
    poses: np.ndarray
    joints: np.ndarray
    K: np.ndarray
    left: np.ndarray

    def counts(self) -> dict:
        """{"matched": n, "unmatched": {reason: n}} over the hands."""
        return {"matched": int(self.matched.sum()),
                "unmatched": {r: int((self.reason == r).sum()) for r in UNMATCHED_REASONS}}


def read_sidecar(video_uri: str) -> pa.Table | None:
    """The sidecar labels of a video, or None when it has none."""
    uri = sidecar_uri(video_uri)
    return storage.read_parquet(uri, schema=LABELS) if storage.exists(uri) else None


def match_truth(hands: pa.Table, tolerance: float = MATCH_TOLERANCE) -> Truth:
    """Join hands (HANDS columns uri, frame_index, handedness, keypoints, crop_box) to their sidecar labels."""
    n = hands.num_rows
    uris = np.asarray(hands.column("uri").to_pylist(), dtype=object)
    frames = hands.column("frame_index").to_numpy()
    seen_left = np.asarray(hands.column("handedness").to_pylist(), dtype=object) == "left"
    kp = frame_keypoints(keypoints_array(hands.column("keypoints")),
                         column_array(hands, "crop_box", (4,)), seen_left)
    out = Truth(np.zeros(n, bool), np.full(n, "", dtype=object), np.full((n, NUM_JOINTS, 3), np.nan),
                np.full((n, NUM_JOINTS, 3), np.nan), np.full((n, 3, 3), np.nan), np.zeros(n, bool))
    for uri in np.unique(uris):
        rows = np.flatnonzero(uris == uri)
        labels = read_sidecar(uri)
        if labels is None or labels.num_rows == 0:
            out.reason[rows] = "no_sidecar"
            continue
        l_frame = labels.column("frame_index").to_numpy()
        l_kp = column_array(labels, "keypoints_2d", (NUM_JOINTS, 2)).astype(np.float64)
        l_j3 = column_array(labels, "joints_3d", (NUM_JOINTS, 3)).astype(np.float64)
        l_K = column_array(labels, "K", (3, 3)).astype(np.float64)
        l_left = np.asarray(labels.column("handedness").to_pylist(), dtype=object) == "left"
        for i in rows:
            cand = np.flatnonzero(l_frame == frames[i])
            if cand.size == 0:
                out.reason[i] = "no_label_in_frame"
                continue
            err = np.linalg.norm(l_kp[cand] - kp[i], axis=-1).mean(-1)
            best = cand[int(err.argmin())]
            size = float((l_kp[best].max(0) - l_kp[best].min(0)).max())
            if err.min() > tolerance * max(size, 1e-9):
                out.reason[i] = "too_far"
                continue
            out.matched[i] = True
            out.joints[i], out.K[i], out.left[i] = l_j3[best], l_K[best], l_left[best]
    m = out.matched
    if m.any():
        out.poses[m] = normalized_poses(out.joints[m], out.left[m])
    return out
