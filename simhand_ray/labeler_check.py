"""How well a labeler recovers the ground truth of synthetic frames: detection rate and 2D keypoint error.
It sits above both the labelers and the synthetic videos, and nothing in the library imports it: it is for
benchmarks/synthetic_realism.py and the tests.

Each true hand is matched to at most one predicted hand, greedily by the smallest mean joint distance
normalised by the true box's longer side; a match further than ``max_error`` box sizes is a miss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from simhand_ray.mining.labelers.base import DetectedHand


def normalised_error(pred: np.ndarray, truth: np.ndarray, box: np.ndarray) -> float:
    """Mean over joints of |pred - truth| (21, 2) divided by the longer side of ``box`` (4,)."""
    side = max(float(box[2] - box[0]), float(box[3] - box[1]), 1e-6)
    return float(np.linalg.norm(np.asarray(pred) - np.asarray(truth), axis=1).mean() / side)


def match_hands(preds: Sequence[DetectedHand], truths: Sequence[DetectedHand],
                max_error: float = 0.5) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching -> [(truth index, pred index, normalised error)], best first."""
    cands = sorted((normalised_error(p.keypoints, t.keypoints, t.box), ti, pi)
                   for ti, t in enumerate(truths) for pi, p in enumerate(preds))
    used_t, used_p, out = set(), set(), []
    for err, ti, pi in cands:
        if err > max_error or ti in used_t or pi in used_p:
            continue
        used_t.add(ti)
        used_p.add(pi)
        out.append((ti, pi, err))
    return out


@dataclass
class Realism:
    """Summary over frames: hands, detection rate, errors of the detected hands (box-normalised and px)."""
    truth_hands: int
    detected: int
    false_positives: int
    detection_rate: float
    error_mean: float
    error_median: float
    pck_0_1: float                 # fraction of matched joints within 0.1 box sizes
    error_px_mean: float
    handedness_agreement: float    # among matched hands: predicted == true handedness


def compare(preds: Sequence[Sequence[DetectedHand]], truths: Sequence[Sequence[DetectedHand]],
            max_error: float = 0.5) -> Realism:
    """Compare per-frame predictions with per-frame truths (lists aligned by frame)."""
    errs, px, joint_ok, hand_ok = [], [], [], []
    n_truth = n_pred = 0
    for p, t in zip(preds, truths):
        n_truth += len(t)
        n_pred += len(p)
        for ti, pi, err in match_hands(p, t, max_error):
            errs.append(err)
            d = np.linalg.norm(p[pi].keypoints - t[ti].keypoints, axis=1)
            side = max(float(t[ti].box[2] - t[ti].box[0]), float(t[ti].box[3] - t[ti].box[1]), 1e-6)
            px.append(float(d.mean()))
            joint_ok.extend((d / side <= 0.1).tolist())
            hand_ok.append(p[pi].handedness == t[ti].handedness)
    nan = float("nan")
    return Realism(
        truth_hands=n_truth, detected=len(errs), false_positives=n_pred - len(errs),
        detection_rate=len(errs) / n_truth if n_truth else nan,
        error_mean=float(np.mean(errs)) if errs else nan, error_median=float(np.median(errs)) if errs else nan,
        pck_0_1=float(np.mean(joint_ok)) if joint_ok else nan, error_px_mean=float(np.mean(px)) if px else nan,
        handedness_agreement=float(np.mean(hand_ok)) if hand_ok else nan)
