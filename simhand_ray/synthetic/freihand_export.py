"""Export synthetic hands in FreiHAND's published on-disk layout, so FreiHAND readers and evaluations run
on them unchanged.

Layout (FreiHAND_pub_v2; Zimmermann et al., ICCV 2019), for split in {training, evaluation}:
    {split}_xyz.json     list of N 21x3 joint positions, camera space, metres (FreiHAND's joint order is
                         the SPEC order: wrist, thumb CMC..tip, index MCP..tip, middle, ring, little)
    {split}_K.json       list of N 3x3 intrinsics; uv = (K @ xyz.T).T, uv[:, :2] / uv[:, 2:] in OpenCV's
                         pixel convention (pixel centres at integers), as FreiHAND's calibrated K are;
                         the rest of this project uses centres at i + 0.5, so K's principal point is
                         shifted by -0.5 on export
    {split}_scale.json   list of N floats: the metric length of the middle finger's MCP-PIP bone
    {split}/rgb/%08d.jpg N 224x224 RGB crops, sample i is image i
FreiHAND ships four colour versions of each training image (ids i + k * N); a synthetic export has one,
so its training/rgb holds exactly N images. FreiHAND has right hands only: left hands are mirrored (image
flipped, x of the joints negated, the principal point reflected) and so become right hands. MANO
parameters and vertices (*_mano.json, *_verts.json) are not written: the hand model is not MANO.
The evaluation split holds whole videos, i.e. persons never seen in training.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from simhand_ray import storage

SIZE = 224
SPLITS = ("training", "evaluation")


@dataclass
class Sample:
    """One FreiHAND sample: the 224x224 crop as JPEG, xyz (21, 3) metres and K (3, 3) of the crop."""
    jpeg: bytes
    xyz: np.ndarray
    K: np.ndarray
    video_id: str


def crop_box(kp2d: np.ndarray, width: int, height: int, rng: np.random.Generator, margin: float = 1.7,
             jitter: float = 0.08) -> tuple[int, int, int]:
    """Integer square (x0, y0, side) around keypoints (21, 2): side = margin x their extent (x U(0.9, 1.1)),
    centre jittered by up to ``jitter`` x side, then shifted to lie inside the image where it fits."""
    lo, hi = kp2d.min(axis=0), kp2d.max(axis=0)
    side = float(max(hi - lo)) * margin * rng.uniform(0.9, 1.1)
    side = int(max(round(side), 16))
    centre = (lo + hi) / 2 + rng.uniform(-jitter, jitter, 2) * side
    x0, y0 = int(round(centre[0] - side / 2)), int(round(centre[1] - side / 2))
    x0 = min(max(x0, 0), max(width - side, 0)) if side <= width else x0
    y0 = min(max(y0, 0), max(height - side, 0)) if side <= height else y0
    return x0, y0, side


def crop_intrinsics(K: np.ndarray, x0: float, y0: float, side: float, size: int = SIZE) -> np.ndarray:
    """K of the crop [x0, x0 + side) x [y0, y0 + side) resized to size x size (continuous coordinates)."""
    a = size / side
    return np.array([[a, 0.0, -a * x0], [0.0, a, -a * y0], [0.0, 0.0, 1.0]]) @ K


def mirror_camera(xyz: np.ndarray, K: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    """The joints and K of an image of ``width`` pixels once it is flipped left-right: x of the joints negated,
    the principal point reflected (continuous coordinates)."""
    K2 = np.array(K, dtype=np.float64)
    K2[0, 2] = width - K2[0, 2]
    return np.asarray(xyz) * np.array([-1.0, 1.0, 1.0]), K2


def mirror(image: np.ndarray, xyz: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A left hand -> a right hand: flip the image, negate x of the joints, reflect the principal point."""
    return (image[:, ::-1].copy(), *mirror_camera(xyz, K, image.shape[1]))


def make_sample(image: np.ndarray, kp2d: np.ndarray, xyz: np.ndarray, K: np.ndarray, left: bool,
                rng: np.random.Generator, video_id: str, quality: int = 95) -> Sample:
    """Crop one hand of an RGB frame (H, W, 3) uint8 into a FreiHAND sample (mirrored if left).

    kp2d (21, 2) and K (3, 3) are in continuous pixel coordinates (centres at i + 0.5); the sample's K is
    in FreiHAND's convention (centres at integers)."""
    h, w = image.shape[:2]
    x0, y0, side = crop_box(kp2d, w, h, rng)
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    src = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else image
    crop = src[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]
    crop = cv2.resize(crop, (SIZE, SIZE), interpolation=cv2.INTER_AREA if side > SIZE else cv2.INTER_LINEAR)
    Kc = crop_intrinsics(K, x0, y0, side)
    xyz = np.asarray(xyz, dtype=np.float64)
    if left:
        crop, xyz, Kc = mirror(crop, xyz, Kc)
    Kc[:2, 2] -= 0.5     # continuous coordinates -> OpenCV's integer pixel centres (FreiHAND's K)
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return Sample(jpg.tobytes(), xyz, Kc, video_id)


def bone_scale(xyz: np.ndarray) -> float:
    """FreiHAND's per-sample scale: |middle MCP - middle PIP| in metres."""
    return float(np.linalg.norm(np.asarray(xyz)[9] - np.asarray(xyz)[10]))


def split_of(index: int, videos: int, eval_fraction: float) -> str:
    """The split of video ``index``: the last ceil(eval_fraction x videos) videos (at least one when there
    are two or more) are evaluation persons."""
    n_eval = int(np.ceil(eval_fraction * videos)) if videos >= 2 and eval_fraction > 0 else 0
    n_eval = min(n_eval, videos - 1) if videos >= 2 else 0
    return "evaluation" if index >= videos - n_eval else "training"


def write_split(root: str, split: str, samples: Sequence[Sample]) -> int:
    """Write one split under ``root`` (path or s3://) in FreiHAND's layout; returns the sample count.
    The JSON lists are written after the images, so a complete list implies its images exist."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    for i, s in enumerate(samples):
        storage.write_bytes_atomic(storage.join(root, split, "rgb", f"{i:08d}.jpg"), s.jpeg)
    xyz = [np.asarray(s.xyz, dtype=np.float64).tolist() for s in samples]
    Ks = [np.asarray(s.K, dtype=np.float64).tolist() for s in samples]
    scale = [bone_scale(s.xyz) for s in samples]
    for name, obj in (("xyz", xyz), ("K", Ks), ("scale", scale)):
        storage.write_bytes_atomic(storage.join(root, f"{split}_{name}.json"), json.dumps(obj).encode())
    return len(samples)
