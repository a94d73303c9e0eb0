"""Augmentations: keypoints move with the image, crop geometry, undo parameters, determinism."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from builders import HAND
from conftest import real_data
from simhand_ray.config import AugmentConfig
from simhand_ray.train import augment

# A right hand, roughly: wrist low, five fingers fanning upwards (224x224 crop pixels).
NO_COLOR = AugmentConfig(color_jitter=False)


def _bright_centroid(img: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroid of the bright pixels, in continuous coordinates (pixel centres at i + 0.5)."""
    g = img.astype(np.float64).mean(axis=2)
    g = np.where(g > 40, g, 0.0)
    ys, xs = np.mgrid[0:g.shape[0], 0:g.shape[1]]
    return np.array([(g * (xs + 0.5)).sum(), (g * (ys + 0.5)).sum()]) / g.sum()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("joint", [0, 4, 12, 20])
def test_dot_lands_on_transformed_keypoint(seed, joint):
    img = np.zeros((224, 224, 3), np.uint8)
    x, y = HAND[joint]
    img[int(y) - 3:int(y) + 3, int(x) - 3:int(x) + 3] = 255   # a 6x6 dot centred on (x, y)
    params = augment.sample_params(np.random.default_rng(seed), NO_COLOR)
    view, kp, _ = augment.augment_view(img, HAND, params, NO_COLOR)
    assert view.shape == (128, 128, 3) and kp.shape == (21, 2)
    np.testing.assert_allclose(_bright_centroid(view), kp[joint], atol=0.6)


def test_colour_jitter_does_not_move_geometry():
    img = cv2.resize(cv2.imread(str(real_data("images", "handSrc.jpg"))), (224, 224))
    params = augment.sample_params(np.random.default_rng(3), AugmentConfig())
    a, kpa, sa = augment.augment_view(img, HAND, params, AugmentConfig())
    b, kpb, sb = augment.augment_view(img, HAND, params, NO_COLOR)
    np.testing.assert_array_equal(kpa, kpb)
    np.testing.assert_array_equal(sa, sb)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("seed", range(10))
def test_crop_geometry_and_undo_parameters(seed):
    cfg = AugmentConfig()
    params = augment.sample_params(np.random.default_rng(seed), cfg)
    assert params.angle == int(params.angle) and -45 <= params.angle <= 45
    assert 0.9 <= params.margin <= 1.5 and np.all((params.jitter >= 0) & (params.jitter <= 15))
    a, shift = augment.view_affine(HAND, (224, 224), params, cfg)
    kp = augment.apply_affine(a, HAND.astype(np.float64))
    center = HAND.mean(axis=0)
    radius = np.sqrt(((HAND - center) ** 2).sum(axis=1)).max()
    side = 2 * radius * params.margin
    # The centroid lands at the view's centre moved by shift x side; the farthest joint at radius x scale.
    np.testing.assert_allclose(kp.mean(axis=0), 64 + shift * 128, atol=1e-6)
    np.testing.assert_allclose(shift, -params.jitter / side, atol=1e-9)
    np.testing.assert_allclose(np.sqrt(((kp - kp.mean(axis=0)) ** 2).sum(axis=1)).max(), 128 / (2 * params.margin),
                               rtol=1e-6)
    # The keypoints turned by the drawn angle (OpenCV sign: counter-clockwise on screen, y down).
    v0, v1 = HAND[12] - center, kp[12] - kp.mean(axis=0)
    turned = np.degrees(np.arctan2(-v1[1], v1[0]) - np.arctan2(-v0[1], v0[0]))
    assert (turned - params.angle + 180) % 360 - 180 == pytest.approx(0, abs=1e-4)


def _pair_batch(n=3):
    img = cv2.resize(cv2.imread(str(real_data("images", "handSrc.jpg"))), (224, 224))
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    return {"anchor_jpeg": np.array([jpg] * n, dtype=object), "anchor_keypoints": np.stack([HAND] * n),
            "positive_jpeg": np.array([jpg] * n, dtype=object), "positive_keypoints": np.stack([HAND + 2] * n),
            "row_key": np.arange(n) + 10, "epoch": np.zeros(n, np.int64), "copy": np.zeros(n, np.int64)}


def test_augment_batch_deterministic_per_row_epoch_and_copy():
    cfg = AugmentConfig()
    b = _pair_batch()
    one = augment.augment_batch(b, seed=7, uses_positive=True, cfg=cfg)
    two = augment.augment_batch(b, seed=7, uses_positive=True, cfg=cfg)
    for k in augment.VIEW_COLUMNS:
        np.testing.assert_array_equal(one[k], two[k])
    assert one["view1"].shape == (3, 3, 128, 128) and one["view1"].dtype == np.uint8
    # Rows are independent of their batch neighbours: row 1 alone gives the same views.
    alone = augment.augment_batch({k: v[1:2] for k, v in b.items()}, seed=7, uses_positive=True, cfg=cfg)
    np.testing.assert_array_equal(alone["view2"][0], one["view2"][1])
    for change in ({"epoch": np.ones(3, np.int64)}, {"copy": np.ones(3, np.int64)}):
        other = augment.augment_batch({**b, **change}, seed=7, uses_positive=True, cfg=cfg)
        assert not np.array_equal(other["angle1"], one["angle1"]) or not np.array_equal(other["shift1"], one["shift1"])
    fixed = augment.augment_batch({**b, "epoch": np.full(3, 5)}, seed=7, uses_positive=True, cfg=cfg,
                                  fixed_views=True)
    np.testing.assert_array_equal(fixed["view1"], one["view1"])


def test_views_of_simclr_come_from_the_anchor_and_simhand_from_the_positive():
    b = _pair_batch(1)
    other = cv2.resize(cv2.imread(str(real_data("images", "fruits.jpg"))), (224, 224))
    bent = HAND.copy()
    bent[8] = HAND[5]   # index fingertip folded onto its MCP: another pose
    b.update(positive_jpeg=np.array([cv2.imencode(".jpg", other)[1].tobytes()], dtype=object),
             positive_keypoints=bent[None])
    sim = augment.augment_batch(b, seed=0, uses_positive=False, cfg=NO_COLOR)
    hand = augment.augment_batch(b, seed=0, uses_positive=True, cfg=NO_COLOR)
    for k in ("view1", "keypoints1", "angle1", "angle2"):
        np.testing.assert_array_equal(sim[k], hand[k])
    assert not np.allclose(sim["keypoints2"], hand["keypoints2"])
    assert np.abs(sim["view2"].astype(int) - hand["view2"]).mean() > 10


def test_row_key_is_stable():
    assert augment.row_key("a", "b") == augment.row_key("a", "b")
    assert augment.row_key("a", "b") != augment.row_key("b", "a")
    assert 0 <= augment.row_key("x", "y") < 2 ** 63


def test_normalize_imagenet():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = augment.normalize_imagenet(x)
    expect = (1 - torch.tensor(augment.IMAGENET_MEAN)) / torch.tensor(augment.IMAGENET_STD)
    torch.testing.assert_close(out[0, :, 0, 0], expect)
