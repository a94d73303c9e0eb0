"""Model shapes, trunk weights that torchvision accepts, and PeCLR's projection-space undo."""
from __future__ import annotations

import cmath
import io
import math

import numpy as np
import pytest
import torch
import torchvision

from simhand_ray.train.model import (ContrastiveModel, as_points, equivariant_projection, undo_rotation,
                                     undo_translation)


def forward_transform(z: np.ndarray, angle: float, shift: np.ndarray) -> np.ndarray:
    """What an equivariant projection should do when its input view is rotated by ``angle`` (OpenCV sign:
    counter-clockwise on screen, y down) and shifted by ``shift`` x its extent; written with complex numbers."""
    pts = z.reshape(-1, 2).astype(np.float64)
    c = pts.mean(axis=0)
    out = []
    for x, y in pts:
        w = complex(x - c[0], -(y - c[1])) * cmath.exp(1j * math.radians(angle))  # y flipped: screen ccw = math ccw
        out.append((w.real + c[0], -w.imag + c[1]))
    out = np.asarray(out)
    return (out + shift * (out.max(axis=0) - out.min(axis=0))).reshape(-1)


def test_shapes_resnet18():
    m = ContrastiveModel("resnet18").eval()
    x = torch.randn(2, 3, 128, 128)
    assert m.trunk(x).shape == (2, 512)
    assert m(x).shape == (2, 128)
    assert m.head[0].in_features == 512 and m.head[-1].bias is None


def test_trunk_state_dict_loads_into_torchvision_resnet50():
    m = ContrastiveModel("resnet50")
    assert m.head[0].in_features == 2048 and m.head[-1].out_features == 128
    buf = io.BytesIO()
    torch.save(m.trunk_state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    ref = torchvision.models.resnet50()
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    ref.eval()
    m.eval()
    x = torch.randn(1, 3, 64, 64)
    ref.fc = torch.nn.Identity()
    torch.testing.assert_close(ref(x), m.trunk(x))
    assert m(x).shape == (1, 128)


@pytest.mark.parametrize("angle", [-45.0, -7.0, 0.0, 30.0, 90.0])
def test_undo_recovers_projection(angle):
    g = torch.Generator().manual_seed(int(angle) + 100)
    z = torch.randn(1, 128, generator=g, dtype=torch.float64)
    shift = np.array([0.06, -0.03])
    moved = torch.from_numpy(forward_transform(z[0].numpy(), angle, shift)).view(1, -1)
    back = undo_rotation(undo_translation(as_points(moved), torch.from_numpy(shift[None])), torch.tensor([angle]))
    torch.testing.assert_close(back.reshape(1, -1), z, atol=1e-9, rtol=0)
    # The full step (normalise, undo, normalise) maps the moved projection back to the unit original.
    zn = torch.nn.functional.normalize(z, dim=1)
    got = equivariant_projection(moved.float(), torch.tensor([angle]), torch.from_numpy(shift[None]))
    torch.testing.assert_close(got, zn.float(), atol=1e-5, rtol=0)


def test_rotation_sign_is_opencvs():
    """A point right of the centroid, rotated +90 (OpenCV: counter-clockwise on screen), goes up (y smaller)."""
    pts = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    # undo_rotation(-angle) applies +angle
    rotated = undo_rotation(pts, torch.tensor([-90.0]))
    torch.testing.assert_close(rotated, torch.tensor([[[0.0, -1.0], [0.0, 1.0]]]), atol=1e-6, rtol=0)


def test_equivariant_gradients_flow_only_through_points():
    z = torch.randn(3, 128, requires_grad=True)
    out = equivariant_projection(z, torch.tensor([10.0, -20.0, 0.0]), torch.zeros(3, 2) + 0.05)
    out.sum().backward()
    assert torch.isfinite(z.grad).all()
    assert torch.allclose(out.norm(dim=1), torch.ones(3))


def test_a_trunk_loads_from_safetensors_in_timm_and_here(tmp_path, monkeypatch):
    """trunk.safetensors (written beside trunk.pt) loads into timm's ResNet-50 as a timm user would, with no
    code run and no download, and gives the trunk's own features; the project's loader reads either file."""
    import timm

    from simhand_ray.train.checkpoint import write_trunk_files
    from simhand_ray.train.trunk import build_trunk, make_trunk

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    trunk = build_trunk("resnet50").eval()
    write_trunk_files(trunk.state_dict(), str(tmp_path))
    model = timm.create_model("resnet50", pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "trunk.safetensors"))).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trunk(x), rtol=0, atol=0)
        for name in ("trunk.safetensors", "trunk.pt"):
            again, arch = make_trunk("auto", str(tmp_path / name))
            assert arch == "resnet50"
            torch.testing.assert_close(again.eval()(x), trunk(x), rtol=0, atol=0)
