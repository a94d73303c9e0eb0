"""crops: the square crop box, keypoints carried through crop + resize + mirror, the quality filter."""
import numpy as np
import pytest

from simhand_ray.config import CropConfig, FilterConfig
from simhand_ray.mining.crops import crop_hand, cut_square, decode_jpeg, encode_jpeg, mirror, reject_reason, square_crop_box
from simhand_ray.mining.labelers.base import DetectedHand


def hand_at(kp, handedness="right", score=0.9):
    kp = np.asarray(kp, np.float32)
    box = np.array([kp[:, 0].min(), kp[:, 1].min(), kp[:, 0].max(), kp[:, 1].max()], np.float32)
    return DetectedHand(box, score, kp, np.full(21, score, np.float32), handedness, score)


def test_square_crop_box():
    # 40x20 box centred at (100, 100): side 1.3 * 40 = 52
    assert square_crop_box(np.array([80, 90, 120, 110]), 640, 480, 1.3) == (74, 74, 52)
    # near the border: moved inside, not squashed
    left, top, side = square_crop_box(np.array([0, 0, 40, 20]), 640, 480, 1.3)
    assert (left, top, side) == (0, 0, 52)
    # larger than the image: kept square, covering the whole image along the overhanging side
    assert square_crop_box(np.array([0, 0, 600, 470]), 640, 480, 1.3) == (-90, -155, 780)


def test_cut_square_pads_only_outside_the_frame():
    frame = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6) + 1
    out = cut_square(frame, -1, 1, 5)
    assert out.shape == (5, 5)
    np.testing.assert_array_equal(out[:3, 1:], frame[1:4, 0:4])
    assert out[:, 0].sum() == 0 and out[3:].sum() == 0


@pytest.mark.parametrize("handedness", ["right", "left"])
def test_keypoints_follow_the_pixels(handedness):
    rng = np.random.default_rng(0)
    frame = np.zeros((480, 640, 3), np.uint8)
    kp = rng.uniform([200, 150], [330, 300], size=(21, 2)).astype(np.float32)
    # paint a bright 3x3 block around the pixel holding joint 8, then find it after the crop
    jx, jy = int(kp[8, 0]), int(kp[8, 1])
    kp[8] = (jx + 0.5, jy + 0.5)
    frame[jy - 1:jy + 2, jx - 1:jx + 2] = 255
    crop = crop_hand(frame, hand_at(kp, handedness), CropConfig())
    assert crop.image.shape == (224, 224, 3) and crop.mirrored == (handedness == "left")
    ys, xs = np.nonzero(crop.image[..., 0] > 60)
    w = crop.image[ys, xs, 0].astype(float)
    centre = np.array([(xs * w).sum() / w.sum() + 0.5, (ys * w).sum() / w.sum() + 0.5])
    np.testing.assert_allclose(centre, crop.keypoints[8], atol=0.6)


def test_mirror_is_an_involution():
    img = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3)
    kp = np.array([[0.5, 0.5], [4.5, 1.5]], np.float32)
    m_img, m_kp = mirror(img, kp)
    np.testing.assert_array_equal(m_img[:, 0], img[:, 4])
    np.testing.assert_allclose(m_kp, [[4.5, 0.5], [0.5, 1.5]])
    back_img, back_kp = mirror(m_img, m_kp)
    np.testing.assert_array_equal(back_img, img)
    np.testing.assert_allclose(back_kp, kp)


def test_filter_reasons():
    f = FilterConfig(min_det_score=0.5, min_keypoint_score=0.3, min_box_side=32, min_keypoints_inside=1.0)
    kp = np.stack([np.linspace(100, 200, 21), np.linspace(100, 180, 21)], 1)
    assert reject_reason(hand_at(kp), 640, 480, f) is None
    assert reject_reason(hand_at(kp, score=0.4), 640, 480, f) == "det_score"
    low = hand_at(kp)
    low.keypoint_scores[:] = 0.1
    assert reject_reason(low, 640, 480, f) == "keypoint_score"
    assert reject_reason(hand_at(kp / 10), 640, 480, f) == "box_too_small"
    assert reject_reason(hand_at(kp + [500, 0]), 640, 480, f) == "keypoints_outside_image"
    nan = hand_at(kp)
    nan.keypoints[3] = np.nan
    assert reject_reason(nan, 640, 480, f) == "keypoints_not_finite"


def test_jpeg_round_trip():
    img = np.full((224, 224, 3), (200, 30, 90), np.uint8)
    back = decode_jpeg(encode_jpeg(img, 95))
    assert back.shape == img.shape and np.abs(back.astype(int) - img).max() <= 3
