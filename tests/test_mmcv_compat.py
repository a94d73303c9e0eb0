"""The mmcv._ext stand-in: mmcv.ops.nms through it equals a loop-by-loop greedy NMS; mmpose imports after install."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from simhand_ray.compat import mmcv_ext


def nms_reference(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, offset: int) -> list[int]:
    """Greedy NMS, one pair at a time: keep the best remaining box, drop those overlapping it by > threshold."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    removed = [False] * len(scores)
    keep = []
    for a, i in enumerate(order):
        if removed[i]:
            continue
        keep.append(i)
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        area_i = (x1 - x0 + offset) * (y1 - y0 + offset)
        for j in order[a + 1:]:
            u0, v0, u1, v1 = (float(v) for v in boxes[j])
            iw = max(0.0, min(x1, u1) - max(x0, u0) + offset)
            ih = max(0.0, min(y1, v1) - max(y0, v0) + offset)
            inter = iw * ih
            iou = inter / (area_i + (u1 - u0 + offset) * (v1 - v0 + offset) - inter)
            if iou > iou_threshold:
                removed[j] = True
    return keep


def random_boxes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 4) boxes in clusters of three (one box, two copies jittered by up to 1 px), so that every IoU
    threshold keeps some and drops some; (n,) distinct scores."""
    xy = np.repeat(rng.uniform(0, 100, (n // 3, 2)), 3, axis=0)
    wh = np.repeat(rng.uniform(5, 40, (n // 3, 2)), 3, axis=0)
    boxes = np.concatenate([xy, xy + wh], 1) + rng.uniform(-1, 1, (len(xy), 4))
    return boxes.astype(np.float32), rng.permutation(len(xy)).astype(np.float32) / len(xy)


@pytest.fixture(scope="module")
def mmcv_ops():
    mmcv_ext.install()
    import mmcv.ops
    return mmcv.ops


@pytest.mark.parametrize("iou_threshold", [0.1, 0.3, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("offset", [0, 1])
def test_nms_matches_reference(mmcv_ops, iou_threshold, offset):
    rng = np.random.default_rng(int(iou_threshold * 10) + 100 * offset)
    boxes, scores = random_boxes(rng, 300)
    dets, inds = mmcv_ops.nms(boxes, scores, iou_threshold, offset=offset)
    expected = nms_reference(boxes, scores, iou_threshold, offset)
    assert 0 < len(expected) < len(boxes)
    assert inds.tolist() == expected
    np.testing.assert_array_equal(dets[:, :4], boxes[expected])
    np.testing.assert_array_equal(dets[:, 4], scores[expected])


def test_batched_nms_and_empty_input(mmcv_ops):
    import torch

    rng = np.random.default_rng(0)
    boxes, scores = random_boxes(rng, 99)
    labels = rng.integers(0, 3, len(boxes))
    _, keep = mmcv_ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels),
                                   dict(type="nms", iou_threshold=0.5))
    expected = []
    for c in range(3):
        idx = np.flatnonzero(labels == c)
        expected += idx[nms_reference(boxes[idx], scores[idx], 0.5, 0)].tolist()
    assert sorted(keep.tolist()) == sorted(expected)
    dets, inds = mmcv_ops.nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5)
    assert dets.shape == (0, 5) and inds.shape == (0,)


def test_install_is_idempotent_and_other_ops_raise(mmcv_ops):
    mmcv_ext.install()
    assert sys.modules["mmcv._ext"] is mmcv_ext
    with pytest.raises(NotImplementedError, match="softnms"):
        mmcv_ops.soft_nms(np.zeros((2, 4), np.float32), np.ones(2, np.float32))
    with pytest.raises(AttributeError):
        mmcv_ext.__wrapped__  # private names are not stubs (the import machinery probes some)


def test_mmpose_and_mmdet_import(mmcv_ops):
    import mmdet.apis
    import mmpose.apis

    assert callable(mmpose.apis.inference_topdown) and callable(mmdet.apis.init_detector)
