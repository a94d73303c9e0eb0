"""Pose-retrieval probe maths: does a trunk's embedding put hands with similar 2D poses together?

Needs no 3D labels: for every mined hand (a query), take its nearest neighbour among hands of *other*
videos (the same rule as SiMHand's positive mining, SPEC §2) under some similarity, and measure how far
apart the two hands' canonical poses are. Rows of the probe table:
- a trunk: cosine similarity of global-pooled features;
- pose oracle: the neighbour minimising the probe's own pose distance (so no retrieval can do better; it
  is the floor of the table);
- chance: a uniformly random hand of another video (where an embedding blind to pose lands).

Canonical pose (as the mining descriptor of SPEC §2): keypoints minus the wrist, divided by their RMS
distance to the wrist; not rotation-normalised. Pose distance: mean over the 21 joints of the Euclidean
distance between two canonical poses (unitless; lower = better). Everything is numpy over plain arrays.
"""
from __future__ import annotations

import numpy as np

from simhand_ray.schema import WRIST


def canonical_poses(keypoints: np.ndarray) -> np.ndarray:
    """(N, 21, 2) keypoints (any pixel frame) -> (N, 21, 2) wrist-relative, RMS-radius-normalised."""
    kp = np.asarray(keypoints, np.float64)
    rel = kp - kp[:, WRIST:WRIST + 1]
    radius = np.sqrt((rel ** 2).sum(-1).mean(-1))
    return rel / np.maximum(radius, 1e-9)[:, None, None]


def pose_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean joint distance of aligned pairs. (N, 21, 2) x2 -> (N,)."""
    return np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1).mean(-1)


def _video_codes(video_ids) -> np.ndarray:
    return np.unique(np.asarray(video_ids).astype(str), return_inverse=True)[1].reshape(-1)


def nearest_by_cosine(embeddings: np.ndarray, video_ids, block: int = 1024) -> np.ndarray:
    """For every row, the index of its most cosine-similar row from another video (-1 if none).

    embeddings (N, D); video_ids (N,). Blockwise over queries: O(block x N) memory.
    """
    x = np.asarray(embeddings, np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    vid = _video_codes(video_ids)
    out = np.full(len(x), -1, np.int64)
    for i0 in range(0, len(x), block):
        i1 = min(i0 + block, len(x))
        sim = x[i0:i1] @ x.T
        same = vid[i0:i1, None] == vid[None, :]
        sim[same] = -np.inf
        best = sim.argmax(axis=1)
        ok = np.isfinite(sim[np.arange(i1 - i0), best])
        out[i0:i1] = np.where(ok, best, -1)
    return out


def nearest_by_pose(poses: np.ndarray, video_ids, block: int = 256, queries: np.ndarray | None = None) -> np.ndarray:
    """The pose oracle: for every row (or every row of ``queries``), the row of another video with the smallest
    ``pose_distances`` (-1 if none). poses (N, 21, D) canonical. Accumulates joint by joint: O(block x N) memory."""
    p = np.asarray(poses, np.float32)
    vid = _video_codes(video_ids)
    n, j = p.shape[:2]
    q = np.arange(n) if queries is None else np.asarray(queries, np.int64)
    out = np.full(len(q), -1, np.int64)
    for i0 in range(0, len(q), block):
        rows = q[i0:i0 + block]
        dist = np.zeros((len(rows), n), np.float32)
        for k in range(j):
            diff = p[rows, None, k, :] - p[None, :, k, :]
            dist += np.sqrt((diff ** 2).sum(-1))
        dist[vid[rows, None] == vid[None, :]] = np.inf
        best = dist.argmin(axis=1)
        ok = np.isfinite(dist[np.arange(len(rows)), best])
        out[i0:i0 + len(rows)] = np.where(ok, best, -1)
    return out


def random_other_video(video_ids, rng: np.random.Generator) -> np.ndarray:
    """Chance: for every row a uniformly random row of another video (-1 if none). Rejection sampling."""
    vid = _video_codes(video_ids)
    n = len(vid)
    out = np.full(n, -1, np.int64)
    todo = np.flatnonzero(np.bincount(vid, minlength=vid.max() + 1 if n else 0)[vid] < n) if n else np.array([], int)
    while todo.size:
        pick = rng.integers(0, n, todo.size)
        good = vid[pick] != vid[todo]
        out[todo[good]] = pick[good]
        todo = todo[~good]
    return out


def retrieval_distances(poses: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Pose distance from each query to its retrieved hand. (N, 21, 2), (N,) -> (N,), NaN where none."""
    neighbours = np.asarray(neighbours)
    out = np.full(len(neighbours), np.nan)
    ok = neighbours >= 0
    out[ok] = pose_distances(poses[ok], poses[neighbours[ok]])
    return out


def summarize(distances: np.ndarray) -> dict:
    """Mean / median / 90th percentile of the finite distances, and how many queries had a neighbour."""
    d = np.asarray(distances, np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return {"queries": 0, "mean": float("nan"), "median": float("nan"), "p90": float("nan")}
    return {"queries": int(d.size), "mean": float(d.mean()), "median": float(np.median(d)),
            "p90": float(np.percentile(d, 90))}
