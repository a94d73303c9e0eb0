"""Trunk + 3D pose head for fine-tuning (SPEC §4), and the fine-tuned model's files.

Trunk: ``train.trunk``'s ResNet (pre-training's ``trunk.pt``, an ImageNet state_dict, or random init).

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

Files of a fine-tuning output: ``checkpoint.pt`` (``train.checkpoint``'s format, after every epoch) and
``model.pt`` (weights + arch + config, at the end); ``load_pose_model`` reads either.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from simhand_ray.safe_load import load_torch_file
from simhand_ray.schema import NUM_JOINTS
from simhand_ray.train.trunk import build_trunk, feature_dim

XYZ_UNIT_MM = 100.0
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"


def trunk_features(trunk: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, C, H/32, W/32): the ResNet up to ``layer4`` (no pooling)."""
    x = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(x))))
    return trunk.layer4(trunk.layer3(trunk.layer2(trunk.layer1(x))))


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
        self.head = PoseHead(feature_dim(trunk), head_width)

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


def load_pose_model(uri: str, device: torch.device) -> PoseNet:
    """The PoseNet of a fine-tuning ``model.pt`` or ``checkpoint.pt`` (its arch, head width and weights), in
    eval mode on ``device``."""
    saved = load_torch_file(uri)
    model = PoseNet(build_trunk(saved["arch"]), saved["config"].get("head_width", 256))
    model.load_state_dict(saved["model"])
    return model.to(device).eval()
