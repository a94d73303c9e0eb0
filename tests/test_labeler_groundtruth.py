"""The groundtruth labeler: hands looked up from sidecar label tables (beside the video, in a directory, one
file), rescaled to the decoded frame, found by file name when a manifest renamed the video; none is an error."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from builders import SMALL_SYNTH as SMALL
from builders import synthetic_video
from simhand_ray.config import LabelerConfig
from simhand_ray.mining.labelers import build_labeler
from simhand_ray.mining.labelers.base import FrameRef


def test_groundtruth_labeler_reads_sidecars_and_directories(tmp_path):
    res = synthetic_video(tmp_path, seed=4)
    table = pq.read_table(res.labels_uri)
    rows = table.to_pylist()
    frame = np.zeros((SMALL["height"], SMALL["width"], 3), np.uint8)
    ref = FrameRef(res.video_uri, res.video_id, rows[0]["frame_index"])
    expect = [r for r in rows if r["frame_index"] == ref.frame_index]
    for labels in ("", str(tmp_path), res.labels_uri):
        labeler = build_labeler(LabelerConfig(backend="groundtruth", groundtruth_labels=labels))
        [hands] = labeler.label([frame], [ref])
        assert len(hands) == len(expect)
        for h, r in zip(hands, expect):
            np.testing.assert_allclose(h.keypoints.reshape(-1), r["keypoints_2d"])
            np.testing.assert_allclose(h.keypoint_scores, r["visibility"])
            assert h.det_score == 1.0 and h.handedness == r["handedness"]
    # a manifest may rename the video: the file name still finds it; a frame without hands is empty
    labeler = build_labeler(LabelerConfig(backend="groundtruth"))
    big = np.zeros((2 * SMALL["height"], 2 * SMALL["width"], 3), np.uint8)
    [hands, none] = labeler.label([big, frame], [FrameRef(res.video_uri, "renamed", ref.frame_index),
                                                 FrameRef(res.video_uri, "renamed", 10_000)])
    np.testing.assert_allclose(hands[0].keypoints.reshape(-1), np.asarray(expect[0]["keypoints_2d"]) * 2, rtol=1e-6)
    assert none == []
    with pytest.raises(FileNotFoundError):
        labeler.label([frame], [FrameRef(str(tmp_path / "other.mp4"), "other", 0)])
