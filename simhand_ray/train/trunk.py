"""The ResNet trunk that pre-training trains and evaluation fine-tunes or probes: built once, here.

A trunk is torchvision's ResNet (weights=None) with ``fc`` replaced by an identity, so its state_dict keys are
torchvision's own (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...) minus ``fc.*``: the pre-training job's
``trunk.pt``, an ImageNet checkpoint from torchvision, or nothing (random init) load the same way, strictly
apart from the classifier. The architectures are ``config.TRUNK_ARCHS``.
"""
from __future__ import annotations

import logging

import torch
import torchvision
from torch import nn

from simhand_ray import storage
from simhand_ray.config import TRUNK_ARCHS
from simhand_ray.safe_load import load_torch_file

log = logging.getLogger(__name__)


def build_trunk(arch: str) -> torchvision.models.ResNet:
    """A randomly initialised torchvision ResNet without its classifier: (N, 3, H, W) -> (N, feature_dim)."""
    if arch not in TRUNK_ARCHS:
        raise ValueError(f"unknown trunk architecture {arch!r}: one of {' | '.join(TRUNK_ARCHS)}")
    trunk = getattr(torchvision.models, arch)(weights=None)
    trunk.fc = nn.Identity()
    return trunk


def feature_dim(trunk: torchvision.models.ResNet) -> int:
    """Channels of the trunk's last stage (512 for resnet18/34, 2048 for the bottleneck ResNets)."""
    block = trunk.layer4[-1]
    return (block.conv3 if hasattr(block, "conv3") else block.conv2).out_channels


def read_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """A weights file (path or s3://; ``.safetensors`` or a torch file) -> a plain state_dict.

    Accepts a bare state_dict, or a checkpoint dict holding one under ``model`` / ``state_dict``; removes a
    DDP ``module.`` prefix and, when no key is a top-level ResNet key, a common prefix such as ``trunk.``.
    """
    if uri.endswith(".safetensors"):      # tensors only by construction: nothing to unpickle
        from safetensors.torch import load

        obj = load(storage.read_bytes(uri))
    else:
        obj = load_torch_file(uri)
    for key in ("model", "state_dict", "trunk"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    sd = {k.removeprefix("module."): v for k, v in obj.items()}
    if "conv1.weight" not in sd:
        tail = "layer1.0.conv1.weight"
        prefixes = {k[: -len(tail)] for k in sd if k.endswith(tail) and f"{k[: -len(tail)]}conv1.weight" in sd}
        if len(prefixes) != 1:
            raise ValueError(f"{uri}: not a torchvision ResNet state_dict (no conv1.weight)")
        p = prefixes.pop()
        sd = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    return sd


def _layout(keys) -> tuple[tuple[int, ...], bool]:
    """(blocks per stage, bottleneck?) of a ResNet state_dict's keys."""
    blocks = tuple(len({k.split(".")[1] for k in keys if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    return blocks, "layer1.0.conv3.weight" in keys


def infer_arch(state_dict: dict[str, torch.Tensor]) -> str:
    """The torchvision ResNet a state_dict belongs to, from its block counts and block type."""
    want = _layout(state_dict)
    for arch in TRUNK_ARCHS:
        with torch.device("meta"):          # shapes only: no memory, no initialisation cost
            if _layout(build_trunk(arch).state_dict()) == want:
                return arch
    raise ValueError(f"state_dict matches no torchvision ResNet (blocks {want[0]}, bottleneck {want[1]})")


def load_trunk_weights(trunk: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Load a torchvision-format state_dict strictly, except ``fc.*``; returns the keys dropped."""
    dropped = sorted(k for k in state_dict if k.startswith("fc."))
    trunk.load_state_dict({k: v for k, v in state_dict.items() if not k.startswith("fc.")}, strict=True)
    return dropped


def make_trunk(arch: str = "auto", weights: str = "") -> tuple[torchvision.models.ResNet, str]:
    """A trunk and its architecture name: from ``weights`` (path / s3:// URI; arch ``auto`` = inferred
    from the file) or, with no weights, randomly initialised (arch ``auto`` = resnet50, SPEC §3)."""
    sd = read_state_dict(weights) if weights else None
    if arch == "auto":
        arch = infer_arch(sd) if sd is not None else "resnet50"
    trunk = build_trunk(arch)
    if sd is not None:
        dropped = load_trunk_weights(trunk, sd)
        log.info("loaded %s trunk from %s (%d tensors; dropped %s)", arch, weights, len(sd) - len(dropped),
                 dropped or "nothing")
    return trunk, arch
