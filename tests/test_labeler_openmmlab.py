"""OpenMMLab labeler: models from the configs bundled in mmpose, state dicts from a local file, from S3 and over
HTTP in the model zoo's layout (cached per node; a payload refused); batches, pose batches and bf16 autocast.

Random weights find junk or nothing, so the detector's state dict is edited to fire everywhere with
fixed-size boxes: that drives NMS (through the mmcv compat), the max_hands cut and the pose stage of label().
"""
from __future__ import annotations

import http.server
import os
import shutil
import threading
from pathlib import Path

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
    """State dicts of freshly initialised detector and pose models (the detector edited to fire), saved as a
    user would save them (tests/openmmlab_weights.py)."""
    from openmmlab_weights import write_checkpoints
    return write_checkpoints(str(tmp_path_factory.mktemp("ckpt")))


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


class _Server:
    """An http.server thread on 127.0.0.1 serving ``root``; counts the GETs per path."""

    def __init__(self, root: Path):
        hits = self.hits = {}

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def do_GET(self):
                hits[self.path] = hits.get(self.path, 0) + 1
                super().do_GET()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path, monkeypatch):
    root = tmp_path / "www"
    root.mkdir()
    monkeypatch.setenv("SIMHAND_MODEL_CACHE", str(tmp_path / "cache"))
    server = _Server(root)
    yield root, server
    server.close()


def test_model_zoo_checkpoints_over_http_load_once_per_node(checkpoints, served, tmp_path):
    """Checkpoints as mmengine's own save_checkpoint writes them (meta.dataset_meta with numpy arrays, optimizer,
    param_schedulers, message_hub), served over HTTP: the labeler loads them, the same labels as from the plain
    state dicts; the files are fetched once into the node's cache (atomically: no partial files left)."""
    from openmmlab_weights import build_models, save_model_zoo_checkpoint

    root, server = served
    det, pose = build_models()
    det_sd = torch.load(checkpoints["det"], weights_only=True)
    save_model_zoo_checkpoint(det, str(root / "rtmdet_nano_hand.pth"), state_dict=det_sd)
    save_model_zoo_checkpoint(pose, str(root / "rtmpose-m_hand5.pth"))
    raw = torch.load(root / "rtmpose-m_hand5.pth", weights_only=False)   # the layout, as mmengine wrote it
    assert {"meta", "state_dict", "optimizer", "message_hub", "param_schedulers"} <= raw.keys()
    assert isinstance(raw["meta"]["dataset_meta"]["sigmas"], np.ndarray) and raw["optimizer"]["state"]
    cfg = LabelerConfig(backend="openmmlab", det_checkpoint=f"{server.url}/rtmdet_nano_hand.pth",
                        pose_checkpoint=f"{server.url}/rtmpose-m_hand5.pth", max_hands=2, device="cpu")
    frames = _frames()
    refs = [FrameRef("x", "v", i) for i in range(len(frames))]
    got = build_labeler(cfg).label(frames, refs)
    want = build_labeler(LabelerConfig(backend="openmmlab", det_checkpoint=checkpoints["det"],
                                       pose_checkpoint=checkpoints["pose"], max_hands=2, device="cpu")).label(frames, refs)
    for g, w in zip(got, want):
        assert len(g) == len(w) == 2
        for a, b in zip(g, w):
            np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-4)
            np.testing.assert_allclose(a.box, b.box, atol=1e-4)
    build_labeler(cfg)                                    # a second labeler on this node: from the cache
    assert server.hits == {"/rtmdet_nano_hand.pth": 1, "/rtmpose-m_hand5.pth": 1}
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock"))
    assert len(cached) == 2 and all(n.endswith(("-rtmdet_nano_hand.pth", "-rtmpose-m_hand5.pth")) for n in cached)


class _Payload:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_a_malicious_checkpoint_over_http_is_refused_and_nothing_runs(checkpoints, served, tmp_path):
    root, server = served
    pwned = tmp_path / "PWNED"
    sd = torch.load(checkpoints["pose"], weights_only=True)
    torch.save({"state_dict": sd, "meta": {"dataset_meta": {"sigmas": np.ones(21)}, "hook": _Payload(pwned)}},
               root / "evil.pth")
    cfg = LabelerConfig(backend="openmmlab", det_checkpoint=checkpoints["det"],
                        pose_checkpoint=f"{server.url}/evil.pth", device="cpu")
    with pytest.raises(om.CheckpointError, match=r"refusing to load checkpoint http://127.0.0.1:\d+/evil.pth: "
                                                 r"it pickles posix.system"):
        om.OpenMMLabLabeler(cfg)
    assert not pwned.exists()
    with pytest.raises(om.CheckpointError, match=r"checkpoint not found: .*/missing.pth: HTTP 404"):
        om.load_state_dict(f"{server.url}/missing.pth")
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".part-")]


def test_batches_pose_batches_and_bf16_give_the_same_hands(checkpoints):
    """Frames one at a time or four to a call, boxes all at once or one per pose forward: the same labels;
    bf16 autocast (here on CPU) the same boxes and keypoints to bf16's precision."""
    frames = _frames() * 2
    refs = [FrameRef("x", "v", i) for i in range(len(frames))]
    base = dict(backend="openmmlab", det_checkpoint=checkpoints["det"], pose_checkpoint=checkpoints["pose"],
                max_hands=2, device="cpu")
    whole = om.OpenMMLabLabeler(LabelerConfig(**base))
    assert whole.dtype is None        # auto on CPU: fp32
    together = whole.label(frames, refs)
    one_by_one = [whole.label([f], [r])[0] for f, r in zip(frames, refs)]
    per_box = om.OpenMMLabLabeler(LabelerConfig(**base, pose_batch_size=1)).label(frames, refs)
    bf16 = om.OpenMMLabLabeler(LabelerConfig(**base, precision="bf16"))
    assert bf16.dtype == torch.bfloat16
    low = bf16.label(frames, refs)
    for a, b, c, d in zip(together, one_by_one, per_box, low):
        assert len(a) == len(b) == len(c) == len(d) == 2
        for ha, hb, hc, hd in zip(a, b, c, d):
            np.testing.assert_allclose(ha.keypoints, hb.keypoints, atol=1e-3)
            np.testing.assert_allclose(ha.keypoints, hc.keypoints, atol=1e-3)
            np.testing.assert_allclose(ha.box, hd.box, rtol=0.02, atol=2)
            assert hd.keypoints.dtype == np.float32 and np.isfinite(hd.keypoints).all()
    assert om.resolve_precision("auto", "cuda") == torch.bfloat16 and om.resolve_precision("fp16", "cuda") == torch.float16
