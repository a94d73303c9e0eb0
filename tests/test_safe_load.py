"""Model, checkpoint and state files load without running code from them (``safe_load.load_torch_file``).

A payload (an object whose ``__reduce__`` makes the unpickler call ``os.system`` or ``subprocess.call`` to
create a file) is planted, through ``torch.save`` (zip and legacy) and as raw pickles, in each kind of file the jobs read:
evaluate's ``--model`` (driver and predictor actor), finetune's ``checkpoint.pt`` resume and ``model.pt``,
pretrain's checkpoint ``state.pt``, ``trunk.pt`` (finetune ``--trunk``, the retrieval probe; also from S3)
and the OpenMMLab labeler's detector / pose checkpoints. Each is refused with an error naming the file and
the global, and the file the payload would create never appears. An mmengine checkpoint with numpy
metadata and a message hub, written by mmengine's own ``save_checkpoint``, loads through the allowlist.
"""
from __future__ import annotations

import io
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_job
from simhand_ray import safe_load, storage
from simhand_ray.safe_load import ModelFileError, load_torch_file

FORMATS = ("torch.save", "torch.save-legacy", "pickle-protocol-2", "pickle-protocol-5")


class Payload:
    """Unpickled in full, calls ``fn`` to create ``path``."""

    def __init__(self, path: Path, fn: str = "os.system"):
        self.path, self.fn = str(path), fn

    def __reduce__(self):
        if self.fn == "os.system":
            return os.system, (f"touch {self.path}",)
        return subprocess.call, (["touch", self.path],)


def dump(obj, fmt: str) -> bytes:
    """``obj`` as a torch.save file (zip, or the legacy format: consecutive pickles) or a raw pickle of the
    given protocol."""
    if fmt.startswith("torch.save"):
        buf = io.BytesIO()
        torch.save(obj, buf, _use_new_zipfile_serialization=fmt == "torch.save")
        return buf.getvalue()
    return pickle.dumps(obj, protocol=int(fmt.rsplit("-", 1)[1]))


@pytest.fixture
def pwned(tmp_path) -> Path:
    """Where a payload that ran would leave its mark; checked absent after each test."""
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "the payload ran"


def plant(path: Path, obj, fmt: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dump(obj, fmt))
    return str(path)


def trunk_state() -> dict[str, torch.Tensor]:
    """A few tensors under torchvision ResNet names (the payload is refused before they are used)."""
    return {"conv1.weight": torch.zeros(4, 3, 7, 7), "bn1.running_mean": torch.zeros(4)}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("fn", ["os.system", "subprocess.call"])
def test_a_payload_is_refused_naming_file_and_global(tmp_path, pwned, fmt, fn):
    path = plant(tmp_path / "weights.pt", {"w": torch.zeros(2), "x": Payload(pwned, fn)}, fmt)
    want = "posix.system" if fn == "os.system" else "subprocess.call"
    with pytest.raises(ModelFileError, match=rf"refusing to load {path}: it pickles .*\b{want}\b") as err:
        load_torch_file(path)
    # a raw pickle of a tensor also names torch.storage._load_from_bytes (a full torch.load: refused too)
    assert err.value.uri == path and want in err.value.globals
    # an allowlist for another format does not let it through either
    with pytest.raises(ModelFileError, match=want):
        load_torch_file(path, allow=safe_load.NUMPY_GLOBALS)


def test_plain_files_load_and_junk_is_named(tmp_path):
    sd = {"a": torch.arange(3), "nested": {"b": [1, 2.5, "x", None, (True,)]}}
    path = tmp_path / "plain.pt"
    torch.save(sd, path)
    out = load_torch_file(str(path))
    assert torch.equal(out["a"], sd["a"]) and out["nested"] == sd["nested"]
    assert torch.equal(load_torch_file(path.read_bytes())["a"], sd["a"])
    for name, data in (("junk.pt", b"not a checkpoint"), ("truncated.pt", path.read_bytes()[:100]), ("empty.pt", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelFileError, match=rf"cannot read {tmp_path / name}: not a torch.save file, or truncated"):
            load_torch_file(str(tmp_path / name))
    # numpy is not allowed unless the format asks for it
    torch.save({"meta": np.zeros(3)}, tmp_path / "np.pt")
    with pytest.raises(ModelFileError, match=r"it pickles numpy\._core\.multiarray\._reconstruct"):
        load_torch_file(str(tmp_path / "np.pt"))
    assert load_torch_file(str(tmp_path / "np.pt"), allow=safe_load.NUMPY_GLOBALS)["meta"].tolist() == [0, 0, 0]


def test_numpy_1_names_load_through_the_allowlist(tmp_path):
    """Files written under numpy 1 name ``numpy.core.multiarray``; the allowlist maps them to numpy 2's."""
    meta = {"sigmas": np.full(21, 0.025, np.float32), "colors": np.zeros((21, 3), np.uint8), "s": np.float64(0.5)}
    buf = io.BytesIO()
    torch.save({"meta": meta}, buf, _use_new_zipfile_serialization=False)   # legacy format: no CRC over the pickle
    data = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in data and b"numpy.core.multiarray\nscalar" in data
    out = load_torch_file(data, allow=safe_load.NUMPY_GLOBALS)["meta"]
    assert out["sigmas"].dtype == np.float32 and np.allclose(out["sigmas"], 0.025) and out["s"] == 0.5
    assert out["colors"].shape == (21, 3)


# --- each kind of file each job reads -------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_finetune_checkpoint_resume_refuses_a_payload(tmp_path, pwned, fmt):
    """The resume of ``checkpoint.pt`` (every training worker reads it) refuses before the config check."""
    from simhand_ray.config import FinetuneConfig
    from simhand_ray.evaluate.finetune_loop import load_checkpoint
    from simhand_ray.evaluate.model import CHECKPOINT

    cfg = FinetuneConfig(output=str(tmp_path / "ft"))
    ckpt = plant(tmp_path / "ft" / CHECKPOINT, {"model": trunk_state(), "history": [Payload(pwned)],
                                                "config_hash": storage.config_hash(cfg.result_dict())}, fmt)
    with pytest.raises(ModelFileError, match=rf"refusing to load {ckpt}: it pickles .*posix.system"):
        load_checkpoint(cfg)


@pytest.mark.parametrize("fmt", FORMATS)
def test_evaluate_model_refuses_a_payload(ray_cluster, tmp_path, pwned, fmt):
    """``jobs/evaluate.py --model evil.pt`` is refused on the driver; a ``model.pt`` beside a clean
    finetune ``_manifest.json`` (which the driver reads instead) is refused where the predictor loads it."""
    from simhand_ray.evaluate.pose_eval import PosePredictor
    from simhand_ray.stage import StageManifest

    evil = plant(tmp_path / "evil.pt", {"model": trunk_state(), "arch": "resnet18", "config": Payload(pwned)}, fmt)
    evaluate = load_job("evaluate")
    with pytest.raises(ModelFileError, match=rf"refusing to load {evil}: it pickles .*posix.system"):
        evaluate.main(["--dataset", "freihand", "--data-root", str(tmp_path), "--model", evil,
                       "--output", str(tmp_path / "eval")])
    model_pt = plant(tmp_path / "ft" / "model.pt", {"model": {"x": Payload(pwned)}, "arch": "resnet18",
                                                    "config": {"head_width": 8}}, fmt)
    StageManifest.open(str(tmp_path / "ft"), "finetune", {"input_size": 32})
    with pytest.raises(ModelFileError, match=rf"refusing to load {model_pt}"):
        PosePredictor(model_pt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_pretrain_state_file_refuses_a_payload(tmp_path, pwned, fmt):
    """``state.pt`` of a Ray Train checkpoint, read by every pretrain worker on restart / --resume."""
    from simhand_ray.train import checkpoint

    state = plant(tmp_path / "ckpt" / checkpoint.STATE_FILE,
                  {"model": trunk_state(), "optimizer": {"state": {}, "param_groups": []}, "scheduler": Payload(pwned),
                   "step": 4}, fmt)
    with pytest.raises(ModelFileError, match=rf"refusing to load {state}: it pickles .*posix.system"):
        checkpoint.load(str(tmp_path / "ckpt"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_trunk_file_refuses_a_payload_local_and_on_s3(tmp_path, s3_bucket, pwned, fmt):
    """``trunk.pt`` as finetune ``--trunk`` and the retrieval probe's ``--trunk`` read it (make_trunk)."""
    from simhand_ray.train.trunk import make_trunk

    sd = trunk_state()
    sd["layer1.0.conv1.weight"] = Payload(pwned, "subprocess.call")
    local = plant(tmp_path / "trunk.pt", sd, fmt)
    remote = storage.join(s3_bucket, "pretrain", "trunk.pt")
    storage.write_bytes_atomic(remote, Path(local).read_bytes())
    for uri in (local, remote):
        with pytest.raises(ModelFileError, match=rf"refusing to load {uri}: it pickles .*subprocess.call"):
            make_trunk("auto", uri)


@pytest.mark.parametrize("fmt", FORMATS)
def test_openmmlab_checkpoints_refuse_a_payload(tmp_path, pwned, fmt):
    om = pytest.importorskip("simhand_ray.mining.labelers.openmmlab")
    from simhand_ray.config import LabelerConfig

    good = plant(tmp_path / "good.pth", {"w": torch.zeros(1)}, "torch.save")
    evil = plant(tmp_path / "evil.pth", {"state_dict": {"w": torch.zeros(1)},
                                         "meta": {"dataset_meta": {"sigmas": np.zeros(2)}, "hook": Payload(pwned)}}, fmt)
    with pytest.raises(om.CheckpointError, match=rf"refusing to load checkpoint {evil}: it pickles .*posix.system"):
        om.load_state_dict(evil)
    for det, pose in ((evil, good), (good, evil)):     # detector first, then pose: each is checked
        with pytest.raises(om.CheckpointError, match=rf"checkpoint {evil}: it pickles .*posix.system"):
            om.OpenMMLabLabeler(LabelerConfig(backend="openmmlab", det_checkpoint=det, pose_checkpoint=pose,
                                              device="cpu"))


def test_mmengine_checkpoint_with_numpy_metadata_loads(tmp_path):
    """What mmengine's Runner saves (state_dict, meta with numpy dataset_meta, message_hub with
    HistoryBuffers, optimizer), written by mmengine's own ``save_checkpoint``, loads through the allowlist."""
    om = pytest.importorskip("simhand_ray.mining.labelers.openmmlab")
    from mmengine.logging import MessageHub
    from mmengine.runner.checkpoint import save_checkpoint

    hub = MessageHub.get_instance("simhand-safe-load-test")
    for i in range(3):
        hub.update_scalar("train/loss", 1.0 / (i + 1))
    hub.update_info("iter", 3)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.zeros(2, 3, 8, 8)).sum().backward()
    opt.step()
    dataset_meta = {"dataset_name": "hand5", "num_keypoints": 21, "flip_indices": list(range(21)),
                    "keypoint_colors": np.zeros((21, 3), np.uint8), "skeleton_link_colors": np.ones((20, 3), np.uint8),
                    "dataset_keypoint_weights": np.ones(21, np.float32), "sigmas": np.full(21, 0.025, np.float32),
                    "upper_body_ids": [], "keypoint_id2name": {0: "wrist"}}
    ckpt = {"meta": {"epoch": 210, "iter": 3, "seed": np.int64(0), "dataset_meta": dataset_meta,
                     "mmengine_version": "0.10.7", "time": "20250101_000000", "cfg": "model = dict(...)"},
            "state_dict": net.state_dict(), "message_hub": hub.state_dict(), "optimizer": opt.state_dict(),
            "param_schedulers": [{"base_values": [1e-3], "last_step": 3, "by_epoch": True}]}
    path = str(tmp_path / "epoch_210.pth")
    save_checkpoint(ckpt, path)

    with pytest.raises(ModelFileError, match=r"it pickles .*numpy"):     # not without the allowlist
        load_torch_file(path)
    full = load_torch_file(path, allow=safe_load.mmengine_globals())
    assert np.allclose(full["meta"]["dataset_meta"]["sigmas"], 0.025)
    assert full["meta"]["dataset_meta"]["keypoint_colors"].dtype == np.uint8 and full["meta"]["seed"] == 0
    assert full["message_hub"]["log_scalars"]["train/loss"].current() == pytest.approx(1 / 3)
    sd = om.load_state_dict(path)
    assert sd.keys() == net.state_dict().keys() and all(torch.equal(sd[k], v) for k, v in net.state_dict().items())
