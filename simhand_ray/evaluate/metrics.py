"""3D hand pose metrics of SPEC §4, as the FreiHAND evaluation code defines them (pure numpy).

Conventions (FreiHAND ``eval.py`` + ``utils/eval_util.py``, reused unchanged by DexYCB's ``hpe_eval.py``):
- errors are per joint Euclidean distances; a joint counts only where it is visible;
- the mean error (MPJPE) is the mean over joints of each joint's mean error over samples;
- the 3D PCK curve of one joint is the fraction of its errors ``<=`` each threshold, the curve reported is
  the mean over joints; thresholds are ``np.linspace(0, 50 mm, steps)``;
- the AUC is ``trapz(pck, t) / trapz(1, t)`` (area normalised to [0, 1]) per joint, averaged over joints.
  FreiHAND's and DexYCB's scripts use 100 steps (``get_measures(0, 0.05 m, 100)`` / ``_AUC_STEPS = 100``),
  which is the setting of the published numbers (PeCLR's AUC 0.860); the older RHD/STB code used 20.
- Procrustes alignment (PA) is FreiHAND's ``align_w_scale``: a similarity transform (translation, rotation,
  one scale) of the prediction onto the ground truth, solved in closed form. FreiHAND uses scipy's
  ``orthogonal_procrustes``, which may return a reflection; ``allow_reflection=True`` keeps that.

Everything here is in millimetres; joints are (..., 21, 3) in SPEC order, the root is the wrist (0).
"""
from __future__ import annotations

import numpy as np

from simhand_ray.config import AUC_STEPS

ROOT = 0
AUC_MIN_MM = 0.0
AUC_MAX_MM = 50.0


def root_align(joints: np.ndarray, root: int = ROOT) -> np.ndarray:
    """Joints relative to the root joint. (..., J, D) -> (..., J, D)."""
    joints = np.asarray(joints, dtype=np.float64)
    return joints - joints[..., root:root + 1, :]


def procrustes_align(pred: np.ndarray, gt: np.ndarray, allow_reflection: bool = True) -> np.ndarray:
    """The similarity transform of ``pred`` that best fits ``gt`` in least squares, applied to ``pred``.

    pred, gt: (J, 3) or (N, J, 3) -> same shape. Closed form (Umeyama): centre both, SVD of the 3x3
    cross-covariance, rotation U V^T (optionally without reflection), scale = trace(S D) / |pred_c|^2.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    single = pred.ndim == 2
    if single:
        pred, gt = pred[None], gt[None]
    mu_p = pred.mean(axis=1, keepdims=True)
    mu_g = gt.mean(axis=1, keepdims=True)
    p, g = pred - mu_p, gt - mu_g
    cov = np.einsum("nji,njk->nik", p, g)                      # (N, 3, 3) = p^T g
    u, s, vt = np.linalg.svd(cov)
    d = np.ones_like(s)
    if not allow_reflection:
        d[:, -1] = np.sign(np.linalg.det(u @ vt))
        d[d == 0] = 1.0
    rot = u @ (d[:, :, None] * vt)                             # p @ rot ~ g
    norm2 = np.maximum(np.einsum("nji,nji->n", p, p), 1e-12)
    scale = (s * d).sum(axis=1) / norm2
    out = scale[:, None, None] * (p @ rot) + mu_g
    return out[0] if single else out


def joint_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per joint Euclidean errors. (N, J, 3) x2 -> (N, J)."""
    return np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=-1)


def pck_thresholds(min_mm: float = AUC_MIN_MM, max_mm: float = AUC_MAX_MM, steps: int = AUC_STEPS) -> np.ndarray:
    return np.linspace(min_mm, max_mm, steps)


def summarize_errors(errors: np.ndarray, visible: np.ndarray | None = None,
                     thresholds: np.ndarray | None = None) -> dict:
    """FreiHAND ``EvalUtil.get_measures`` over a matrix of errors.

    errors: (N, J) in mm; visible: (N, J) bool (default all). Joints never visible are left out of the
    means, as FreiHAND does. Returns mean/median error (mean over joints), AUC, the PCK curve (T,) and
    the thresholds (T,).
    """
    errors = np.asarray(errors, dtype=np.float64)
    visible = np.ones(errors.shape, bool) if visible is None else np.asarray(visible, bool)
    t = pck_thresholds() if thresholds is None else np.asarray(thresholds, np.float64)
    norm = np.trapezoid(np.ones_like(t), t)
    means, medians, aucs, curves = [], [], [], []
    for j in range(errors.shape[1]):
        e = errors[visible[:, j], j]
        if e.size == 0:
            continue
        curve = (e[:, None] <= t[None, :]).mean(axis=0)
        means.append(e.mean())
        medians.append(np.median(e))
        curves.append(curve)
        aucs.append(np.trapezoid(curve, t) / norm)
    if not curves:
        raise ValueError("no visible joints to evaluate")
    return {
        "mean_mm": float(np.mean(means)),
        "median_mm": float(np.mean(medians)),
        "auc": float(np.mean(aucs)),
        "pck": np.mean(curves, axis=0),
        "thresholds_mm": t,
    }


def evaluate_3d(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray | None = None, root: int = ROOT,
                steps: int = AUC_STEPS, max_mm: float = AUC_MAX_MM, allow_reflection: bool = True) -> dict:
    """The downstream table of SPEC §4 for one split.

    pred, gt: (N, 21, 3) in mm (any common frame: both are root-aligned here); visible: (N, 21) bool.
    Returns {"root_relative": summary, "procrustes": summary} where each summary is ``summarize_errors``'s
    dict; MPJPE = ``root_relative["mean_mm"]``, PA-MPJPE = ``procrustes["mean_mm"]``.
    """
    pred_rr, gt_rr = root_align(pred, root), root_align(gt, root)
    t = pck_thresholds(AUC_MIN_MM, max_mm, steps)
    pa = procrustes_align(pred_rr, gt_rr, allow_reflection=allow_reflection)
    return {
        "root_relative": summarize_errors(joint_errors(pred_rr, gt_rr), visible, t),
        "procrustes": summarize_errors(joint_errors(pa, gt_rr), visible, t),
    }
