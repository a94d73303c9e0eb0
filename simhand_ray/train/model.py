"""Trunk + projection head, and PeCLR's equivariant step in projection space (SPEC §3).

The trunk is ``trunk.build_trunk``'s torchvision ResNet, so its state_dict is exactly torchvision's minus
``fc.*``: fine-tuning code loads it with ``trunk.make_trunk``.
Head: 2048 (512 for resnet18/34) -> 512 -> BN -> ReLU -> 128 (the last linear has no bias, as PeCLR).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from simhand_ray.train.trunk import build_trunk, feature_dim


class ContrastiveModel(nn.Module):
    """trunk + projection head: (N, 3, H, W) -> projections (N, proj_dim)."""

    def __init__(self, arch: str = "resnet50", hidden: int = 512, out_dim: int = 128):
        super().__init__()
        if out_dim % 2:
            raise ValueError("the projection is viewed as 2-D points: out_dim must be even")
        self.trunk = build_trunk(arch)
        self.head = nn.Sequential(
            nn.Linear(feature_dim(self.trunk), hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    def trunk_state_dict(self) -> dict[str, torch.Tensor]:
        """The trunk's weights as torchvision names them (no ``fc.*``), on CPU."""
        return {k: v.detach().cpu().clone() for k, v in self.trunk.state_dict().items()}


def as_points(z: torch.Tensor) -> torch.Tensor:
    """(N, 2K) -> (N, K, 2): consecutive pairs of the projection as 2-D points."""
    return z.reshape(z.shape[0], -1, 2)


def undo_translation(points: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Move each sample's points by -shift x their extent per axis (PeCLR's translate step).

    points (N, K, 2); shift (N, 2) as a fraction of the view (``augment``). The extent (max - min over the
    K points) is detached, as in PeCLR, so only the points themselves receive gradient.
    """
    extent = (points.amax(dim=1) - points.amin(dim=1)).detach()
    return points - (shift.to(points.dtype) * extent).unsqueeze(1)


def undo_rotation(points: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate each sample's points by -angle degrees about their (detached) centroid.

    points (N, K, 2); angle (N,) in OpenCV's sign convention (the one ``augment`` rotated the image with).
    """
    center = points.mean(dim=1, keepdim=True).detach()
    theta = torch.deg2rad(-angle.to(points.dtype))
    a, b = torch.cos(theta).view(-1, 1), torch.sin(theta).view(-1, 1)
    d = points - center
    x = a * d[..., 0] + b * d[..., 1]
    y = -b * d[..., 0] + a * d[..., 1]
    return torch.stack((x, y), dim=-1) + center


def equivariant_projection(z: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """PeCLR: L2-normalise, view as K 2-D points, undo translation then rotation, L2-normalise.

    z (N, 2K) raw projections; angle (N,) degrees; shift (N, 2). Returns (N, 2K) unit vectors.
    """
    points = as_points(F.normalize(z.float(), dim=1))
    points = undo_rotation(undo_translation(points, shift), angle)
    return F.normalize(points.reshape(z.shape[0], -1), dim=1)
