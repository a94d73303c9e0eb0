"""Hand pose descriptors for similar-hand mining (SPEC §2), plus an optional PCA fitted on a sample.

A descriptor is the 21x2 right-hand keypoints minus the wrist, divided by a scale, flattened to 42 values.
It is invariant to translation and to uniform scale, and on purpose NOT to in-plane rotation: SiMHand
mines hands whose 2D pose *as seen in the image* is similar, so a hand and its rotated copy are different.

Scales (``scale=``):

- ``"rms"`` (default): the RMS distance of the 21 joints from the wrist, sqrt(mean_j |k_j - k_wrist|^2).
  It uses every joint, so one foreshortened bone (a hand pointing at the camera) does not blow it up.
- ``"palm"``: the wrist -> middle-finger MCP length (joint 0 -> 9), the choice of the paper's code; it
  degenerates when the palm is seen edge-on.

With ``"rms"`` the descriptor has unit RMS norm per joint, i.e. |descriptor|_2 = sqrt(21), so L2
distances between descriptors lie in [0, 2 sqrt(21)].
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from simhand_ray.config import DESCRIPTOR_SCALES
from simhand_ray.schema import MIDDLE_MCP, NUM_JOINTS, WRIST

log = logging.getLogger(__name__)

DIM = 2 * NUM_JOINTS
SCALES = DESCRIPTOR_SCALES
#: Reasons a hand gets no descriptor ("" = valid).
REASON_NONFINITE = "nonfinite_keypoints"
REASON_DEGENERATE = "degenerate_scale"


class Descriptors(NamedTuple):
    """descriptors: (N, 42) float32, zero rows where invalid.  valid: (N,) bool.
    reason: (N,) str, "" for valid hands, else REASON_NONFINITE or REASON_DEGENERATE."""
    descriptors: np.ndarray
    valid: np.ndarray
    reason: np.ndarray


def hand_scale(keypoints: np.ndarray, scale: str = "rms") -> np.ndarray:
    """Per-hand scale of wrist-relative keypoints.  keypoints: (N, 21, 2) -> (N,) float64."""
    rel = np.asarray(keypoints, dtype=np.float64) - np.asarray(keypoints, dtype=np.float64)[:, WRIST:WRIST + 1]
    if scale == "rms":
        return np.sqrt(np.mean(np.sum(rel ** 2, axis=-1), axis=-1))
    if scale == "palm":
        return np.linalg.norm(rel[:, MIDDLE_MCP], axis=-1)
    raise ValueError(f"unknown descriptor scale {scale!r}: one of {SCALES}")


def hand_descriptors(keypoints: np.ndarray, scale: str = "rms", min_scale: float = 1e-3) -> Descriptors:
    """Wrist-relative, scale-normalised descriptors of right-hand keypoints (SPEC §2).

    keypoints: (N, 21, 2) in any pixel frame (crop pixels in the hands table).  A hand is invalid when any
    coordinate is NaN/inf, or its scale is below ``min_scale`` (same unit as the keypoints): all joints
    (or the palm) collapsed onto the wrist.  Returns :class:`Descriptors` with (N, 42) float32 rows.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[1:] != (NUM_JOINTS, 2):
        raise ValueError(f"keypoints must have shape (N, {NUM_JOINTS}, 2), got {kp.shape}")
    n = kp.shape[0]
    finite = np.isfinite(kp).all(axis=(1, 2))
    safe = np.where(finite[:, None, None], kp, 0.0)
    s = hand_scale(safe, scale)
    degenerate = finite & ~(s >= min_scale)
    valid = finite & ~degenerate
    rel = safe - safe[:, WRIST:WRIST + 1]
    desc = np.zeros((n, DIM), dtype=np.float32)
    desc[valid] = (rel[valid] / s[valid, None, None]).reshape(-1, DIM).astype(np.float32)
    reason = np.full(n, "", dtype=object)
    reason[~finite] = REASON_NONFINITE
    reason[degenerate] = REASON_DEGENERATE
    return Descriptors(desc, valid, reason)


@dataclass(frozen=True)
class Pca:
    """A PCA projection ``y = (x - mean) @ components.T``: mean (D,), components (d, D), explained (d,).

    Not whitened, so L2 distances in the projected space approximate those between full descriptors.
    """
    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    def apply(self, x: np.ndarray, batch: int = 1 << 18) -> np.ndarray:
        """(N, D) -> (N, d) float32, in batches so a large N needs no float64 copy."""
        out = np.empty((x.shape[0], self.dim), dtype=np.float32)
        comp = self.components.astype(np.float64)
        for i in range(0, x.shape[0], batch):
            out[i:i + batch] = ((x[i:i + batch].astype(np.float64) - self.mean) @ comp.T).astype(np.float32)
        return out

    def to_bytes(self) -> bytes:
        """An .npz of mean, components, explained_variance (stored beside the graph)."""
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean, components=self.components, explained_variance=self.explained_variance)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Pca":
        z = np.load(io.BytesIO(data))
        return cls(z["mean"], z["components"], z["explained_variance"])


def fit_pca(x: np.ndarray, dim: int, sample: int = 100_000, seed: int = 0) -> Pca:
    """Fit a ``dim``-component PCA on up to ``sample`` rows of x (N, D), drawn with ``seed``."""
    if not 0 < dim <= x.shape[1]:
        raise ValueError(f"pca dim must be in [1, {x.shape[1]}], got {dim}")
    if x.shape[0] == 0:
        raise ValueError("cannot fit a PCA on zero descriptors")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(x.shape[0], size=min(sample, x.shape[0]), replace=False))
    xs = x[rows].astype(np.float64)
    if len(xs) < dim:
        raise ValueError(f"a {dim}-component PCA needs at least {dim} descriptors, got {len(xs)}")
    mean = xs.mean(axis=0)
    _, sv, vt = np.linalg.svd(xs - mean, full_matrices=False)
    var = sv ** 2 / max(len(xs) - 1, 1)
    log.info("PCA %d -> %d keeps %.4f of the variance (fitted on %d descriptors)",
             x.shape[1], dim, var[:dim].sum() / max(var.sum(), 1e-12), len(xs))
    return Pca(mean, vt[:dim].copy(), var[:dim].copy())
