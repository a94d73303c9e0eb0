"""Training state on disk: the one checkpoint format (pre-training and fine-tuning), the data-position
pointer, and the final trunk.

A checkpoint (``pack``) is {model, optimizer, scheduler, scaler, step, position, config_hash, digest, ...}: the
state of the live objects, where the run stands (``position``: pre-training's samples and epoch, fine-tuning's
epoch), the hash of the settings that shape the weights (checked in ``load``, the one place), and a digest of
model + optimiser. Pre-training's layout under the output URI (a local directory or s3:// prefix):
    ray_train/checkpoint_00001000/state.pt   model, optimiser, scheduler, grad scaler, step, data position
    ray_train/checkpoint_00001000/state.json step, position, config hash, digest of model + optimiser
    latest.json                              the last checkpoint whose upload finished (rank 0 writes it
                                             after ``ray.train.report`` returns), read to restart the stream
    trunk.pt                                 the trunk's state_dict at the end (torchvision names, no fc.*)

Fine-tuning writes the same state as one file (``save_file``, its ``checkpoint.pt``).

Resume paths: a worker dies -> Ray Train (``FailureConfig``) restarts the worker group and
``ray.train.get_checkpoint()`` returns the latest checkpoint; the job is submitted again over the same
output -> Ray Train restores its run state from ``ray_train/`` and does the same.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any

import torch

from simhand_ray import storage
from simhand_ray.safe_load import load_torch_file

RUN_NAME = "ray_train"
STATE_FILE = "state.pt"
META_FILE = "state.json"
POSITION_FILE = "latest.json"
TRUNK_FILE = "trunk.pt"
TRUNK_SAFETENSORS = "trunk.safetensors"


def dir_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def _hash_into(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(str((tuple(obj.shape), str(obj.dtype))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(repr(k).encode())
            _hash_into(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _hash_into(h, v)
    else:
        h.update(repr(obj).encode())


def state_digest(*states: Any) -> str:
    """sha256 over (nested) state dicts, tensors by value: equal digests = identical model/optimiser state."""
    h = hashlib.sha256()
    for s in states:
        _hash_into(h, s)
    return h.hexdigest()[:16]


def pack(*, model: torch.nn.Module, optimizer, scheduler, scaler=None, step: int, position: dict,
         config_hash: str, **extra) -> tuple[dict, dict]:
    """(state, metadata) of a checkpoint: the state is what ``torch.save`` writes, the metadata its JSON-able
    part (step, position, config hash, digest); ``extra`` (plain values) is stored in the state as it is."""
    model_state, optim_state = model.state_dict(), optimizer.state_dict()
    meta = {"step": step, "position": position, "config_hash": config_hash,
            "digest": state_digest(model_state, optim_state)}
    state = {"model": model_state, "optimizer": optim_state, "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None, **extra, **meta}
    return state, meta


def save(directory: str, **kwargs) -> dict:
    """Write ``state.pt`` + ``state.json`` (``pack(**kwargs)``) into a local directory; returns the metadata."""
    state, meta = pack(**kwargs)
    os.makedirs(directory, exist_ok=True)
    torch.save(state, os.path.join(directory, STATE_FILE))
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
    return meta


def save_file(uri: str, **kwargs) -> dict:
    """Write ``pack(**kwargs)``'s state as one file (path or s3://, atomically); returns the metadata."""
    state, meta = pack(**kwargs)
    write_torch(uri, state)
    return meta


def write_torch(uri: str, obj: dict) -> None:
    """Write ``obj`` (tensors and plain containers only, so ``load_torch_file`` reads it back) atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    storage.write_bytes_atomic(uri, buf.getvalue())


def load(directory: str, config_hash: str | None = None) -> dict:
    """Read a checkpoint directory written by ``save`` (tensors on CPU); see ``load_file``."""
    return load_file(os.path.join(directory, STATE_FILE), config_hash)


def load_file(uri: str, config_hash: str | None = None) -> dict:
    """Read a checkpoint file (tensors on CPU), refusing one stamped with another ``config_hash`` when given:
    a checkpoint of another run's settings never resumes this one."""
    state = load_torch_file(uri)
    if config_hash is not None and state.get("config_hash") != config_hash:
        raise ValueError(f"{uri} was written with other settings (config {state.get('config_hash')} != this "
                         f"run's {config_hash}): the output holds a different run")
    return state


def restore(state: dict, *, model: torch.nn.Module, optimizer, scheduler, scaler) -> str:
    """Load ``state`` into live objects (model already on its device); returns the digest of what was loaded."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler") and scaler is not None and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    return state_digest(model.state_dict(), optimizer.state_dict())


def write_position(output: str, meta: dict) -> None:
    storage.write_json_atomic(storage.join(output, POSITION_FILE), meta)


def read_position(output: str) -> dict | None:
    """The metadata of the last finished checkpoint in ``output``, or None for a new run."""
    uri = storage.join(output, POSITION_FILE)
    return storage.read_json(uri) if storage.exists(uri) else None


def run_storage(output: str):
    """(storage_path, pyarrow filesystem) for ``ray.train.RunConfig``: checkpoints live under the output."""
    fs, path = storage.resolve(output)
    return path, fs


def save_trunk(model: torch.nn.Module, output: str) -> str:
    """Write the trunk's state_dict (torchvision key names, CPU tensors) to ``output/trunk.pt``, and the same
    tensors to ``output/trunk.safetensors``; returns the first."""
    return write_trunk_files(model.trunk_state_dict(), output)


def write_trunk_files(state: dict[str, torch.Tensor], output: str) -> str:
    """``trunk.pt`` (torch.save) and ``trunk.safetensors`` (safetensors: no pickle, what timm and the model hubs
    load) of one trunk state_dict; returns the ``trunk.pt`` URI."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    uri = storage.join(output, TRUNK_FILE)
    write_torch(uri, state)
    storage.write_bytes_atomic(storage.join(output, TRUNK_SAFETENSORS), save(state, metadata={"format": "pt"}))
    return uri
