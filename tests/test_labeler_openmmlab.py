"""OpenMMLab labeler: models from the configs bundled in mmpose, state dicts from a local file and from S3.

Random weights find junk or nothing, so the detector's state dict is edited to fire everywhere with
fixed-size boxes: that drives NMS (through the mmcv compat), the max_hands cut and the pose stage of label().
"""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from simhand_ray import storage
from simhand_ray.config import LabelerConfig
from simhand_ray.mining.labelers import build_labeler
from simhand_ray.mining.labelers.base import DetectedHand, FrameRef
from conftest import real_data

om = pytest.importorskip("simhand_ray.mining.labelers.openmmlab")


def _frames() -> list[np.ndarray]:
    return [np.asarray(Image.open(real_data("images", name)).convert("RGB")) for name in ("handSrc.jpg", "messi5.jpg")]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """State dicts of freshly initialised detector and pose models, saved as a user would save them."""
    from simhand_ray.compat import mmcv_ext
    mmcv_ext.install()
    from mmdet.apis import init_detector
    from mmpose.apis import init_model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = init_detector(om.bundled_config(om.DEFAULT_DET_CONFIG), None, device="cpu")
        pose = init_model(om.bundled_config(om.DEFAULT_POSE_CONFIG), None, device="cpu")
    sd = det.state_dict()
    for k, v in sd.items():  # every prior scores sigmoid(4) = 0.98 with a box 2 strides out on each side
        if k.startswith("bbox_head.rtm_cls.") and k.endswith(".bias"):
            v.fill_(4.0)
        elif k.startswith("bbox_head.rtm_reg."):
            v.fill_(2.0 if k.endswith(".bias") else 0.0)
    paths = {"det": str(d / "det.pth"), "pose": str(d / "pose.pth"), "pose_wrapped": str(d / "pose_wrapped.pth")}
    torch.save(sd, paths["det"])
    torch.save(pose.state_dict(), paths["pose"])
    torch.save({"state_dict": pose.state_dict(), "meta": {"epoch": 1}}, paths["pose_wrapped"])
    return paths


@pytest.fixture(scope="module")
def labeler(checkpoints):
    return om.OpenMMLabLabeler(LabelerConfig(backend="openmmlab", det_checkpoint=checkpoints["det"],
                                             pose_checkpoint=checkpoints["pose"], max_hands=2, device="cpu"))


def _check_hands(hands: list[DetectedHand], frame: np.ndarray, max_hands: int) -> None:
    h, w = frame.shape[:2]
    assert len(hands) <= max_hands
    scores = [hand.det_score for hand in hands]
    assert scores == sorted(scores, reverse=True)
    for hand in hands:
        assert hand.box.shape == (4,) and np.isfinite(hand.box).all()
        assert 0 <= hand.box[0] <= hand.box[2] <= w and 0 <= hand.box[1] <= hand.box[3] <= h
        assert 0.0 <= hand.det_score <= 1.0
        assert hand.keypoints.shape == (21, 2) and np.isfinite(hand.keypoints).all()
        assert hand.keypoint_scores.shape == (21,)
        assert ((hand.keypoint_scores >= 0) & (hand.keypoint_scores <= 1)).all()
        assert hand.handedness == "right" and hand.handedness_score == 0.0


def test_label_with_checkpoints_from_s3_and_local(checkpoints, s3_bucket):
    det_uri = storage.join(s3_bucket, "weights", "det.pth")
    with open(checkpoints["det"], "rb") as f:
        storage.write_bytes_atomic(det_uri, f.read())
    cfg = LabelerConfig(backend="openmmlab", det_checkpoint=det_uri, pose_checkpoint=checkpoints["pose_wrapped"],
                        max_hands=2, device="auto")
    lab = build_labeler(cfg)
    frames = _frames()
    refs = [FrameRef(uri="x", video_id="v", frame_index=i) for i in range(len(frames))]
    out = lab.label(frames, refs)
    assert len(out) == len(frames)
    for hands, frame in zip(out, frames):
        assert len(hands) == 2  # the edited detector fires everywhere; NMS + max_hands leave 2
        _check_hands(hands, frame, cfg.max_hands)
    assert lab.label([], []) == []


def test_pose_on_given_boxes(labeler):
    frames = _frames()
    boxes = [np.array([[100, 80, 300, 300], [0, 0, 50, 40]], np.float32), np.zeros((0, 4), np.float32)]
    (k0, s0), (k1, s1) = labeler.pose_on_boxes(frames, boxes)
    assert k0.shape == (2, 21, 2) and s0.shape == (2, 21) and np.isfinite(k0).all()
    assert ((s0 >= 0) & (s0 <= 1)).all()
    assert k1.shape == (0, 21, 2) and s1.shape == (0, 21)
    # top-down: keypoints land near their box (the crop is the box padded by mmpose's 1.25)
    for kp, box in zip(k0, boxes[0]):
        centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]).max() / 2 * 1.25
        assert (np.abs(kp - centre) <= half + 1).all()


def test_missing_checkpoint_is_a_clear_error(checkpoints, tmp_path):
    cfg = LabelerConfig(backend="openmmlab", det_checkpoint=str(tmp_path / "nope.pth"),
                        pose_checkpoint=checkpoints["pose"])
    with pytest.raises(om.CheckpointError, match="checkpoint not found: .*nope.pth"):
        om.OpenMMLabLabeler(cfg)


def test_mmengine_checkpoint_with_numpy_metadata_loads_and_code_is_refused(checkpoints, tmp_path):
    sd = torch.load(checkpoints["pose"], weights_only=True)
    path = tmp_path / "mmengine.pth"
    torch.save({"state_dict": sd, "meta": {"dataset_meta": {"sigmas": np.full(21, 0.03)}}}, path)
    assert om.load_state_dict(str(path)).keys() == sd.keys()     # numpy metadata: on the allowlist
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": sd, "meta": {"hook": shutil.rmtree}}, evil)
    with pytest.raises(om.CheckpointError, match=r"refusing to load checkpoint .*evil.pth: it pickles shutil.rmtree"):
        om.load_state_dict(str(evil))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(om.CheckpointError, match="cannot read checkpoint"):
        om.load_state_dict(str(junk))


def test_state_dict_of_the_wrong_model_is_refused(checkpoints):
    cfg = LabelerConfig(backend="openmmlab", det_checkpoint=checkpoints["pose"], pose_checkpoint=checkpoints["pose"])
    with pytest.raises(om.CheckpointError, match="does not fit its model config"):
        om.OpenMMLabLabeler(cfg)


def test_load_state_dict_accepts_plain_and_wrapped(checkpoints):
    plain = om.load_state_dict(checkpoints["pose"])
    wrapped = om.load_state_dict(checkpoints["pose_wrapped"])
    assert plain.keys() == wrapped.keys()
    assert all(isinstance(v, torch.Tensor) for v in plain.values())


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(om.CheckpointError, match="not a state dict"):
        om.load_state_dict(str(path))
