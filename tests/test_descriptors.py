"""Hand descriptors (SPEC §2): translation/scale invariant, NOT rotation invariant; invalid hands flagged."""
from __future__ import annotations

import numpy as np
import pytest

from simhand_ray.graph.descriptors import (
    REASON_DEGENERATE, REASON_NONFINITE, Pca, fit_pca, hand_descriptors, hand_scale,
)


def random_hands(n: int, seed: int = 0) -> np.ndarray:
    """(n, 21, 2) keypoints spread around a wrist, like hands in a 224 px crop."""
    rng = np.random.default_rng(seed)
    wrist = rng.uniform(60, 160, (n, 1, 2))
    return (wrist + rng.normal(0, 30, (n, 21, 2))).astype(np.float32)


def rotate(kp: np.ndarray, degrees: float, about: np.ndarray) -> np.ndarray:
    a = np.deg2rad(degrees)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return ((kp - about) @ r.T + about).astype(np.float32)


@pytest.mark.parametrize("scale", ["rms", "palm"])
def test_translation_and_scale_invariant(scale):
    kp = random_hands(50)
    d = hand_descriptors(kp, scale).descriptors
    moved = kp + np.array([37.5, -12.25], np.float32)
    zoomed = (kp - 100.0) * 2.7 + 80.0
    np.testing.assert_allclose(hand_descriptors(moved, scale).descriptors, d, atol=1e-5)
    np.testing.assert_allclose(hand_descriptors(zoomed, scale).descriptors, d, atol=1e-5)


def test_not_rotation_invariant_but_equivariant():
    """On purpose: a rotated hand is a different 2D pose (the descriptor rotates with it)."""
    kp = random_hands(50, seed=1)
    d = hand_descriptors(kp).descriptors.reshape(-1, 21, 2)
    turned = rotate(kp, 30.0, kp[:, :1])
    dt = hand_descriptors(turned).descriptors.reshape(-1, 21, 2)
    assert np.linalg.norm(dt - d, axis=(1, 2)).min() > 0.5  # far apart (|d| = sqrt(21) ~ 4.6)
    np.testing.assert_allclose(dt, rotate(d, 30.0, np.zeros(2)), atol=1e-5)


def test_layout_and_rms_norm():
    kp = random_hands(20, seed=2)
    res = hand_descriptors(kp)
    assert res.descriptors.shape == (20, 42) and res.descriptors.dtype == np.float32
    np.testing.assert_array_equal(res.descriptors[:, :2], 0.0)  # the wrist is the origin
    np.testing.assert_allclose(np.linalg.norm(res.descriptors, axis=1), np.sqrt(21), rtol=1e-5)
    # joint j lives at columns 2j, 2j+1: the slow per-hand reference
    ref = (kp[3] - kp[3, 0]) / np.sqrt(np.mean(np.sum((kp[3] - kp[3, 0]) ** 2, axis=1)))
    np.testing.assert_allclose(res.descriptors[3], ref.reshape(-1), atol=1e-5)
    np.testing.assert_allclose(hand_scale(kp[:1], "palm"), [np.linalg.norm(kp[0, 9] - kp[0, 0])], rtol=1e-5)


def test_invalid_hands_are_excluded_with_a_reason():
    kp = random_hands(6, seed=3)
    kp[1, 4, 0] = np.nan
    kp[2, 7, 1] = np.inf
    kp[3] = 50.0                      # every joint on the wrist: zero scale
    kp[4, 9] = kp[4, 0]               # palm collapsed: degenerate for "palm", fine for "rms"
    res = hand_descriptors(kp)
    assert res.valid.tolist() == [True, False, False, False, True, True]
    assert res.reason.tolist() == ["", REASON_NONFINITE, REASON_NONFINITE, REASON_DEGENERATE, "", ""]
    np.testing.assert_array_equal(res.descriptors[~res.valid], 0.0)
    assert np.isfinite(res.descriptors).all()
    palm = hand_descriptors(kp, "palm")
    assert palm.reason[4] == REASON_DEGENERATE and palm.valid.tolist() == [True, False, False, False, False, True]


def test_bad_input_rejected():
    with pytest.raises(ValueError):
        hand_descriptors(np.zeros((3, 20, 2)))
    with pytest.raises(ValueError):
        hand_descriptors(random_hands(2), scale="bbox")


def test_pca_keeps_distances_of_low_rank_data_and_round_trips():
    rng = np.random.default_rng(4)
    basis = np.linalg.qr(rng.normal(size=(42, 6)))[0].T          # (6, 42) orthonormal rows
    x = (rng.normal(size=(500, 6)) @ basis + 0.3).astype(np.float32)
    pca = fit_pca(x, 6, sample=400, seed=0)
    y = pca.apply(x)
    assert y.shape == (500, 6) and y.dtype == np.float32
    dx = np.linalg.norm(x[:50, None] - x[None, :50], axis=-1)
    dy = np.linalg.norm(y[:50, None] - y[None, :50], axis=-1)
    np.testing.assert_allclose(dy, dx, atol=1e-4)
    again = Pca.from_bytes(pca.to_bytes())
    np.testing.assert_array_equal(again.apply(x), y)
    np.testing.assert_allclose(fit_pca(x, 6, sample=400, seed=0).apply(x[:3]), y[:3], atol=1e-6)  # seeded
    with pytest.raises(ValueError):
        fit_pca(x, 0)
    with pytest.raises(ValueError):
        fit_pca(x[:3], 6)
