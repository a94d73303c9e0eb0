"""Recall of an approximate neighbour list against the exact one: the figure the approximate indexes are
held to, by the tests' floor and by benchmarks/graph_scale.py alike."""
from __future__ import annotations

import numpy as np


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows of |found ∩ truth| / |truth|, ids (B, k) with -1 = no neighbour (never a hit, never
    a true neighbour). Rows whose truth is empty have nothing to find and are left out; 1.0 if all are."""
    found, truth = np.asarray(found), np.asarray(truth)
    valid = truth >= 0
    hits = ((found[:, :, None] == truth[:, None, :]) & valid[:, None, :]).any(axis=2).sum(axis=1)
    rows = valid.any(axis=1)
    if not rows.any():
        return 1.0
    return float(np.mean(hits[rows] / valid.sum(axis=1)[rows]))
