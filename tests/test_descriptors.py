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


# --- near-duplicate crops: the perceptual hash and its threshold (graph.duplicates) -------------------------

def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix written from its formula: C[u, x] = a(u) cos(pi (2x + 1) u / 2n)."""
    u, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * x + 1) * u / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


def test_phash_of_an_image_built_from_known_dct_coefficients():
    """An image made (by the inverse of a DCT written out here, not OpenCV's) from chosen low-frequency
    coefficients: DC 32 x 128 (a mean of 128), +6 at odd indices 1..61 (index = 8u + v), -6 at the even ones and
    at 63. The median of the 64 lies between -6 and +6, so the bits set are index 0 and the odd ones up to 61:
    1101 0101 ... 0101 0100 = 0xD555555555555554 (most significant bit first)."""
    from simhand_ray.graph.duplicates import image_phash

    coef = np.zeros((32, 32))
    low = np.array([6.0 if i % 2 and i <= 61 else -6.0 for i in range(64)])
    low[0] = 32 * 128.0
    coef[:8, :8] = low.reshape(8, 8)
    c = dct_matrix(32)
    img = c.T @ coef @ c                                  # inverse orthonormal 2-D DCT
    assert 0 < img.min() and img.max() < 255
    assert image_phash(img) == 0xD555555555555554
    # the hash reads only the order of the coefficients about their median: scaling the AC part keeps it;
    # the higher frequencies (beyond 8 x 8) are not read at all
    coef[:8, :8] = np.where(np.arange(64).reshape(8, 8) == 0, coef[:8, :8], 3 * coef[:8, :8])
    assert image_phash(c.T @ coef @ c) == 0xD555555555555554
    coef[8:, 8:] = 2.0
    assert image_phash(c.T @ coef @ c) == 0xD555555555555554
    # swapping the signs of the +6 / -6 coefficients at 1 and 2 swaps those two bits
    coef[0, 1], coef[0, 2] = -coef[0, 1], -coef[0, 2]
    assert image_phash(c.T @ coef @ c) == 0xD555555555555554 ^ (0b011 << 61)


def test_hamming_and_the_threshold():
    from simhand_ray.graph.duplicates import hamming, near_duplicates

    a = np.array([0xD555555555555554, 0, 2 ** 64 - 1], np.uint64)
    b = np.array([0x5555555555555555, 0, 0], np.uint64)
    assert hamming(a, b).tolist() == [2, 0, 64]          # xor: 0x8000000000000001; equal; all 64 bits
    ok = np.array([True, True, True])
    assert near_duplicates(a, ok, b, ok, 2).tolist() == [True, True, False]
    assert near_duplicates(a, ok, b, ok, 1).tolist() == [False, True, False]
    assert near_duplicates(a, ok, b, ok, 64).tolist() == [True, True, True]
    assert near_duplicates(a, ok, b, ok, -1).tolist() == [False, False, False]      # -1: off
    assert near_duplicates(a, np.array([True, False, True]), b, ok, 64).tolist() == [True, False, True]


def test_drop_near_duplicates_keeps_order_counts_and_flags_short_rows():
    from simhand_ray.graph.duplicates import drop_near_duplicates

    hashes = np.array([0, 0, 1, 0xFF, 0xFFFF, 0xFFFFFFFF, 0], np.uint64)
    ok = np.array([True, True, True, True, True, True, False])
    ids = np.array([[1, 3, 2, 4, 6], [5, 4, 3, -1, -1]])
    d2 = np.array([[0.0, 0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, np.inf, np.inf]])
    # query 0 has hash 0: ids 1 (0 bits) and 2 (1 bit) are near-duplicates at max_bits 4; 6 has no hash
    f = drop_near_duplicates(ids, d2, hashes[[0, 0]], ok[[0, 0]], hashes, ok, 4, 3)
    assert f.ids.tolist() == [[3, 4, 6], [5, 4, 3]]
    np.testing.assert_array_equal(f.d2, [[0.1, 0.3, 0.4], [0.5, 0.6, 0.7]])
    assert f.dropped.tolist() == [2, 0] and f.short.tolist() == [False, False]
    # k = 4: row 0 keeps 3 of a full list (more may lie beyond: short), row 1 ran out of candidates (not short)
    f = drop_near_duplicates(ids, d2, hashes[[0, 0]], ok[[0, 0]], hashes, ok, 4, 4)
    assert f.ids.tolist() == [[3, 4, 6, -1], [5, 4, 3, -1]] and f.short.tolist() == [True, False]
    # at 8 bits 0xFF (id 3) is one too; a near-duplicate after the k-th kept neighbour is not counted
    f = drop_near_duplicates(ids, d2, hashes[[0, 0]], ok[[0, 0]], hashes, ok, 8, 1)
    assert f.ids.tolist() == [[4], [5]] and f.dropped.tolist() == [3, 0]
    f = drop_near_duplicates(ids, d2, hashes[[0, 0]], ok[[0, 0]], hashes, ok, -1, 2)
    assert f.ids.tolist() == [[1, 3], [5, 4]] and f.dropped.tolist() == [0, 0]


def test_crop_hashes_of_real_crops_copies_and_other_pictures():
    """The same picture re-encoded at quality 30 or resized stays within the default threshold; a different
    photo is far; an empty or broken JPEG has no hash."""
    import cv2
    from conftest import real_data

    from simhand_ray.config import IndexConfig
    from simhand_ray.graph.duplicates import crop_hashes, hamming

    limit = IndexConfig().near_duplicate_bits
    hand = cv2.resize(cv2.imread(str(real_data("images", "handSrc.jpg")))[:400, :400], (224, 224),
                      interpolation=cv2.INTER_AREA)
    other = cv2.resize(cv2.imread(str(real_data("images", "fruits.jpg")))[:300, :300], (224, 224),
                       interpolation=cv2.INTER_AREA)
    enc = lambda im, q=95: cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes()
    half = cv2.resize(cv2.resize(hand, (112, 112), interpolation=cv2.INTER_AREA), (224, 224))
    h = crop_hashes([enc(hand), enc(hand, 30), enc(half), enc(other), b"", b"not a jpeg"])
    assert h.ok.tolist() == [True, True, True, True, False, False]
    d = hamming(h.hashes[0], h.hashes[:4])
    assert d[0] == 0 and d[1] <= limit and d[2] <= limit and d[3] > limit + 4, d
