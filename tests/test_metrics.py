"""3D pose metrics: cases worked out by hand, and FreiHAND's loop-by-loop EvalUtil as the slow reference."""
from __future__ import annotations

import numpy as np
import pytest

from simhand_ray.evaluate import metrics


def rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


@pytest.fixture
def hand():
    """A hand-sized point set in mm with integer coordinates (so offsets below are exact)."""
    rng = np.random.default_rng(0)
    return rng.integers(-60, 60, size=(21, 3)).astype(np.float64) + np.array([0, 0, 500.0])


def test_known_rotation_scale_translation_gives_zero_pa_mpjpe(hand):
    pred = 1.7 * hand @ rotation([1, 1, 0], 40).T + np.array([12.0, -3.0, 40.0])
    aligned = metrics.procrustes_align(pred, hand)
    np.testing.assert_allclose(aligned, hand, atol=1e-9)
    res = metrics.evaluate_3d(pred[None], hand[None])
    assert res["procrustes"]["mean_mm"] == pytest.approx(0.0, abs=1e-9)
    # errors are ~1e-13, not 0: every joint fails only the 0 mm threshold, so the area misses half a step
    assert res["procrustes"]["auc"] == pytest.approx(1.0 - 0.5 / 99.0)
    assert res["root_relative"]["mean_mm"] > 10.0          # unaligned it is far off


def test_reflection_is_allowed_like_freihand_unless_disabled(hand):
    mirrored = hand * np.array([-1.0, 1.0, 1.0])
    assert metrics.evaluate_3d(mirrored[None], hand[None])["procrustes"]["mean_mm"] == pytest.approx(0.0, abs=1e-9)
    strict = metrics.evaluate_3d(mirrored[None], hand[None], allow_reflection=False)
    assert strict["procrustes"]["mean_mm"] > 1.0


def test_procrustes_matches_freihand_align_w_scale(hand):
    """FreiHAND's align_w_scale (normalise, scipy orthogonal_procrustes, rescale), written out here."""
    from scipy.linalg import orthogonal_procrustes

    rng = np.random.default_rng(1)
    pred = hand + rng.normal(0, 8, hand.shape)
    t1, t2 = hand.mean(0), pred.mean(0)
    a, b = hand - t1, pred - t2
    s1, s2 = np.linalg.norm(a), np.linalg.norm(b)
    R, s = orthogonal_procrustes(a / s1, b / s2)
    ref = (b / s2) @ R.T * s * s1 + t1
    np.testing.assert_allclose(metrics.procrustes_align(pred, hand), ref, atol=1e-6)
    batch = metrics.procrustes_align(np.stack([pred, hand]), np.stack([hand, hand]))
    np.testing.assert_allclose(batch[0], ref, atol=1e-6)


def test_global_translation_is_removed_by_root_alignment(hand):
    res = metrics.evaluate_3d((hand + 30.0)[None], hand[None])
    assert res["root_relative"]["mean_mm"] == pytest.approx(0.0, abs=1e-12)
    assert res["root_relative"]["auc"] == pytest.approx(1.0)


def test_known_offset_gives_known_mpjpe_and_auc(hand):
    """Every joint but the wrist moved by (3, 4, 0): after root alignment 20 joints are 5 mm off, the wrist 0."""
    pred = hand.copy()
    pred[1:] += np.array([3.0, 4.0, 0.0])
    n = 21
    # thresholds 0, 5, ..., 50: wrist PCK is 1 everywhere (AUC 1); the others' PCK is 0 at t=0 and 1 from
    # t=5 on (the test is e <= t), so trapz = 5 * 0.5 + 9 * 5 = 47.5 over a range of 50 -> 0.95.
    res = metrics.evaluate_3d(pred[None], hand[None], steps=11)["root_relative"]
    assert res["mean_mm"] == pytest.approx(20 * 5.0 / n)
    assert res["auc"] == pytest.approx((1.0 + 20 * 0.95) / n)          # = 20/21
    assert res["auc"] == pytest.approx(20.0 / 21.0)
    expected_curve = np.r_[1.0 / n, np.ones(10)]
    np.testing.assert_allclose(res["pck"], expected_curve)
    # 20 thresholds (step h = 50/19): the first threshold >= 5 mm is 2h, so the others' area is
    # 0.5 h + 17 h of 19 h.
    res20 = metrics.evaluate_3d(pred[None], hand[None], steps=20)["root_relative"]
    assert res20["auc"] == pytest.approx((1.0 + 20 * 17.5 / 19.0) / n)
    # FreiHAND's 100 thresholds (h = 50/99): first threshold >= 5 mm is 10h -> area 0.5 h + 89 h of 99 h.
    res100 = metrics.evaluate_3d(pred[None], hand[None])["root_relative"]
    assert res100["auc"] == pytest.approx((1.0 + 20 * 89.5 / 99.0) / n)
    assert res100["median_mm"] == pytest.approx(20 * 5.0 / n)


class EvalUtilReference:
    """FreiHAND's utils/eval_util.py EvalUtil, loop by loop (the slow obvious version)."""

    def __init__(self, num_kp=21):
        self.data = [[] for _ in range(num_kp)]

    def feed(self, gt, vis, pred):
        for j in range(gt.shape[0]):
            if vis[j]:
                self.data[j].append(float(np.sqrt(((gt[j] - pred[j]) ** 2).sum())))

    def get_measures(self, lo, hi, steps):
        t = np.linspace(lo, hi, steps)
        norm = np.trapezoid(np.ones_like(t), t)
        means, medians, aucs, curves = [], [], [], []
        for d in self.data:
            if not d:
                continue
            d = np.array(d)
            curve = np.array([np.mean(d <= x) for x in t])
            means.append(d.mean())
            medians.append(np.median(d))
            curves.append(curve)
            aucs.append(np.trapezoid(curve, t) / norm)
        return np.mean(means), np.mean(medians), np.mean(aucs), np.mean(curves, 0), t


def test_summary_matches_freihand_evalutil_with_visibility():
    rng = np.random.default_rng(2)
    gt = rng.normal(0, 40, (30, 21, 3))
    pred = gt + rng.normal(0, 12, gt.shape)
    vis = rng.random((30, 21)) > 0.2
    vis[:, 3] = False                                    # a joint never visible is left out, as in EvalUtil
    ref = EvalUtilReference()
    for g, v, p in zip(gt, vis, pred):
        ref.feed(g, v, p)
    mean, median, auc, curve, t = ref.get_measures(0.0, 50.0, 100)
    got = metrics.summarize_errors(metrics.joint_errors(pred, gt), vis)
    assert got["mean_mm"] == pytest.approx(mean)
    assert got["median_mm"] == pytest.approx(median)
    assert got["auc"] == pytest.approx(auc)
    np.testing.assert_allclose(got["pck"], curve)
    np.testing.assert_allclose(got["thresholds_mm"], t)


def test_no_visible_joint_is_an_error():
    with pytest.raises(ValueError):
        metrics.summarize_errors(np.ones((2, 21)), np.zeros((2, 21), bool))
