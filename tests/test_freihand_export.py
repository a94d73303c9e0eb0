"""freihand_export: a sample's intrinsics match its crop (right and mirrored left hands), and an exported split
reads back, through the FreiHAND loader too."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from builders import synthetic_video
from simhand_ray.synthetic import freihand_export as fh
from simhand_ray.synthetic import raster
from simhand_ray.synthetic import video as V


@pytest.mark.parametrize("left", [False, True])
def test_freihand_sample_intrinsics_match_the_crop(left):
    """A bright dot drawn at the wrist of the frame lands where the exported K projects the wrist."""
    K = V.intrinsics(320, 240, 60.0)
    xyz = np.array([[0.01 * j - 0.1, 0.004 * j - 0.04, 0.4 + 0.001 * j] for j in range(21)])
    kp = raster.project(xyz, K)
    image = np.zeros((240, 320, 3), np.uint8)
    x, y = kp[0] - 0.5                                              # continuous -> integer pixel centre
    cv2.circle(image, (int(round(x * 16)), int(round(y * 16))), 3 * 16, (255, 255, 255), -1, cv2.LINE_AA, shift=4)
    s = fh.make_sample(image, kp, xyz, K, left, np.random.default_rng(0), "v")
    crop = cv2.imdecode(np.frombuffer(s.jpeg, np.uint8), cv2.IMREAD_GRAYSCALE).astype(np.float64)
    assert crop.shape == (224, 224)
    ys, xs = np.mgrid[0:224, 0:224]
    w = np.where(crop > 128, crop, 0.0)
    centroid = np.array([(xs * w).sum(), (ys * w).sum()]) / w.sum()   # integer-centre convention, as K
    uv = raster.project(s.xyz, s.K)
    assert np.linalg.norm(uv[0] - centroid) < 1.0
    if left:
        np.testing.assert_allclose(s.xyz[:, 0], -xyz[:, 0])


def test_freihand_export_round_trips(tmp_path):
    samples = []
    for i in range(2):
        samples += synthetic_video(tmp_path / "videos", index=i, freihand_every=4).freihand
    assert samples
    root = tmp_path / "freihand"
    n_train = fh.write_split(str(root), "training", samples[:-1])
    n_eval = fh.write_split(str(root), "evaluation", samples[-1:])
    for split, n in (("training", n_train), ("evaluation", n_eval)):
        xyz = np.array(json.loads((root / f"{split}_xyz.json").read_text()))
        Ks = np.array(json.loads((root / f"{split}_K.json").read_text()))
        scale = np.array(json.loads((root / f"{split}_scale.json").read_text()))
        assert xyz.shape == (n, 21, 3) and Ks.shape == (n, 3, 3) and scale.shape == (n,)
        np.testing.assert_allclose(scale, np.linalg.norm(xyz[:, 9] - xyz[:, 10], axis=1))
        images = sorted((root / split / "rgb").glob("*.jpg"))
        assert [p.name for p in images] == [f"{i:08d}.jpg" for i in range(n)]
        assert cv2.imread(str(images[0])).shape == (224, 224, 3)
        uv = np.einsum("nij,nkj->nki", Ks, xyz)
        uv = uv[..., :2] / uv[..., 2:]
        assert np.all((uv > -5) & (uv < 229))                      # the hand is in its crop
    assert fh.split_of(0, 10, 0.2) == "training" and fh.split_of(9, 10, 0.2) == "evaluation"
    assert fh.split_of(0, 1, 0.2) == "training"
    datasets = pytest.importorskip("simhand_ray.evaluate.datasets")
    ds = datasets.FreiHAND(str(root), "training")
    records = ds.records()
    assert len(records) == n_train
    sample = ds.load(records[0])
    assert sample.image.shape == (224, 224, 3)
    np.testing.assert_allclose(records[0].joints_3d / 1000.0, samples[0].xyz, rtol=1e-12)
