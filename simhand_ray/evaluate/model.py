"""Trunk + 3D pose head for fine-tuning (SPEC §4).

Trunk: a torchvision ResNet whose ``state_dict`` keys are torchvision's own (``conv1.weight``,
``layer1.0.bn1.running_mean``, ...), so the pre-training job's ``trunk.pt``, an ImageNet checkpoint from
torchvision, or nothing (random init) load the same way; ``fc.*`` is dropped (the classifier is not part
of the trunk), every other key must match (strict).

Head (design choice): 2D heatmaps + DetNet-style 3D location maps, read out with a soft-argmax.
- A SimpleBaseline-style upsampler (2 transposed convs, stride 32 -> 8) keeps the spatial layout the
  trunk learned in pre-training instead of pooling it away, which is what the contrastive pre-training
  is meant to help.
- Per joint, one heatmap gives the 2D position (soft-argmax: differentiable and sub-cell at stride 8),
  and three location maps (DetNet, Zhou et al. CVPR 2020 "minimal-hand") give its root-relative x, y, z,
  read out under the same softmax weights.
- Why location maps rather than "2D heatmaps + root-relative depth" (2.5D, Iqbal et al. 2018): 2.5D
  needs the intrinsics and an absolute root depth recovered from a bone-length prior to lift (u, v, z)
  into metric x, y; the downstream metrics are root-relative (MPJPE) and Procrustes-aligned (PA-MPJPE), so
  regressing root-relative xyz directly needs neither, works on crops whose K changed through cropping
  and rotation, and keeps the head one conv layer.
Outputs: ``uv`` (B, 21, 2) in [0, 1] crop coordinates, ``xyz`` (B, 21, 3) root-relative in units of
``XYZ_UNIT_MM`` (decimetres keep targets near unit scale), ``heatmaps`` (B, 21, h, w) logits.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from simhand_ray.safe_load import load_torch_file
from simhand_ray.schema import NUM_JOINTS

log = logging.getLogger(__name__)

XYZ_UNIT_MM = 100.0
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
#: blocks per stage and block type of each torchvision ResNet, to recognise a state_dict's architecture
_LAYOUT = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False), "resnet50": ((3, 4, 6, 3), True),
           "resnet101": ((3, 4, 23, 3), True), "resnet152": ((3, 8, 36, 3), True)}


def build_trunk(arch: str) -> torchvision.models.ResNet:
    """A randomly initialised torchvision ResNet without its classifier (``fc`` = identity)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown trunk architecture {arch!r}: {' | '.join(ARCHS)}")
    net = getattr(torchvision.models, arch)(weights=None)
    net.fc = nn.Identity()
    return net


def trunk_channels(trunk: torchvision.models.ResNet) -> int:
    return trunk.layer4[-1].conv3.out_channels if hasattr(trunk.layer4[-1], "conv3") else trunk.layer4[-1].conv2.out_channels


def trunk_features(trunk: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, C, H/32, W/32): the ResNet up to ``layer4`` (no pooling)."""
    x = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(x))))
    return trunk.layer4(trunk.layer3(trunk.layer2(trunk.layer1(x))))


def read_state_dict(uri: str) -> dict[str, torch.Tensor]:
    """A weights file (path or s3://) -> a plain state_dict.

    Accepts a bare state_dict, or a checkpoint dict holding one under ``model`` / ``state_dict``; removes a
    DDP ``module.`` prefix and, when no key is a top-level ResNet key, a common prefix such as ``trunk.``.
    """
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


def infer_arch(state_dict: dict[str, torch.Tensor]) -> str:
    """The torchvision ResNet a state_dict belongs to, from its block counts and block type."""
    bottleneck = "layer1.0.conv3.weight" in state_dict
    blocks = tuple(len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    for arch, layout in _LAYOUT.items():
        if layout == (blocks, bottleneck):
            return arch
    raise ValueError(f"state_dict matches no torchvision ResNet (blocks {blocks}, bottleneck {bottleneck})")


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


def soft_argmax(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial softmax and its expected position. (B, J, h, w) -> weights (B, J, h, w), uv (B, J, 2) in
    [0, 1] (cell centres at (i + 0.5) / w)."""
    b, j, h, w = logits.shape
    prob = F.softmax(logits.reshape(b, j, h * w).float(), dim=-1).reshape(b, j, h, w)
    xs = (torch.arange(w, device=logits.device, dtype=prob.dtype) + 0.5) / w
    ys = (torch.arange(h, device=logits.device, dtype=prob.dtype) + 0.5) / h
    u = (prob.sum(dim=2) * xs).sum(dim=-1)
    v = (prob.sum(dim=3) * ys).sum(dim=-1)
    return prob, torch.stack([u, v], dim=-1)


class PoseHead(nn.Module):
    """Upsample x4 (two stride-2 transposed convs) then one 1x1 conv to 21 heatmaps + 63 location maps."""

    def __init__(self, in_channels: int, width: int = 256, num_joints: int = NUM_JOINTS):
        super().__init__()
        layers = []
        c = in_channels
        for _ in range(2):
            layers += [nn.ConvTranspose2d(c, width, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            c = width
        self.up = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, num_joints * 4, 1)
        self.num_joints = num_joints

    def forward(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.out(self.up(feats))
        j = self.num_joints
        heat, loc = y[:, :j], y[:, j:].reshape(y.shape[0], j, 3, *y.shape[2:])
        prob, uv = soft_argmax(heat)
        xyz = (prob.unsqueeze(2) * loc.float()).sum(dim=(-1, -2))
        return {"heatmaps": heat, "uv": uv, "xyz": xyz}


class PoseNet(nn.Module):
    """Trunk + pose head. (B, 3, S, S) ImageNet-normalised -> ``PoseHead`` outputs."""

    def __init__(self, trunk: torchvision.models.ResNet, head_width: int = 256):
        super().__init__()
        self.trunk = trunk
        self.head = PoseHead(trunk_channels(trunk), head_width)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(trunk_features(self.trunk, x))


def pose_loss(out: dict[str, torch.Tensor], uv: torch.Tensor, xyz_mm: torch.Tensor, visible: torch.Tensor,
              weight_2d: float = 1.0, weight_3d: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Masked L1 on the 2D keypoints ([0, 1] crop units) and the root-relative 3D joints (``XYZ_UNIT_MM``).

    uv (B, 21, 2), xyz_mm (B, 21, 3), visible (B, 21) bool. Returns the loss and its parts as floats.
    """
    m = visible.float().unsqueeze(-1)
    denom = m.sum().clamp_min(1.0)
    l2d = ((out["uv"] - uv).abs() * m).sum() / (2 * denom)
    l3d = ((out["xyz"] - xyz_mm / XYZ_UNIT_MM).abs() * m).sum() / (3 * denom)
    loss = weight_2d * l2d + weight_3d * l3d
    return loss, {"loss": float(loss.detach()), "loss_2d": float(l2d.detach()), "loss_3d": float(l3d.detach())}
