"""labeler_check: predicted hands matched one-to-one to the truth, misses and false positives counted, errors
normalised by the true box."""
import numpy as np
import pytest

from simhand_ray.labeler_check import compare, match_hands
from simhand_ray.mining.labelers.base import DetectedHand


def test_compare_counts_detections_and_errors():
    box = np.array([0, 0, 100, 100], np.float32)
    kp = np.random.default_rng(0).uniform(0, 100, (21, 2)).astype(np.float32)
    truth = DetectedHand(box, 1.0, kp, np.ones(21, np.float32), "right")
    near = DetectedHand(box, 0.9, kp + np.float32(5.0), np.ones(21, np.float32), "left")
    far = DetectedHand(box, 0.9, kp + np.float32(300.0), np.ones(21, np.float32), "right")
    assert match_hands([far, near], [truth]) == [(0, 1, pytest.approx(np.sqrt(50) / 100))]
    r = compare([[near, far], []], [[truth], [truth]])
    assert r.truth_hands == 2 and r.detected == 1 and r.false_positives == 1
    assert r.detection_rate == 0.5 and r.error_px_mean == pytest.approx(np.sqrt(50), rel=1e-5)
    assert r.pck_0_1 == 1.0 and r.handedness_agreement == 0.0
