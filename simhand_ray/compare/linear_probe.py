"""The frozen-trunk linear probe: closed-form ridge regression from pooled trunk features to normalised 3D poses.

Features are standardised with the fitting set's mean and standard deviation; the targets are the 63 values
of ``truth.normalized_poses``. The ridge strength is chosen on the fitting set alone, by leave-videos-out
cross-validation over ``ALPHAS`` (lambda = alpha x fitting rows), so no test hand shapes the probe. The
probe error is ``truth.pose_distances`` between predicted and true poses of the test hands (lower = better).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simhand_ray.compare.truth import pose_distances

ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass
class Ridge:
    """y = ((x - mean) / std) @ weights + bias. weights (D, T), bias (T,)."""
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mean) / self.std) @ self.weights + self.bias


def fit_ridge(x: np.ndarray, y: np.ndarray, lam: float) -> Ridge:
    """Minimise |Z w + b - y|^2 + lam |w|^2 over w, b (the bias unpenalised), Z the standardised x.
    x (N, D), y (N, T)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    z = (x - mean) / std
    y_mean = y.mean(0)
    gram = z.T @ z + lam * np.eye(z.shape[1])
    w = np.linalg.solve(gram, z.T @ (y - y_mean))
    return Ridge(mean, std, w, y_mean)


def _folds(groups: np.ndarray, k: int) -> list[np.ndarray]:
    """Rows split into up to ``k`` folds of whole groups (videos), groups dealt round-robin in sorted order."""
    names = np.unique(groups)
    k = min(k, len(names))
    return [np.isin(groups, names[i::k]) for i in range(k)]


def choose_alpha(x: np.ndarray, y: np.ndarray, groups: np.ndarray, alphas=ALPHAS, folds: int = 4) -> float:
    """The alpha (lambda = alpha x rows) with the lowest leave-videos-out pose error on (x, y); the largest
    alpha when there are fewer than two videos to hold out."""
    masks = _folds(np.asarray(groups).astype(str), folds)
    if len(masks) < 2:
        return float(max(alphas))
    errors = []
    for alpha in alphas:
        err = []
        for held in masks:
            fit = ~held
            model = fit_ridge(x[fit], y[fit], alpha * fit.sum())
            err.append(pose_distances(model.predict(x[held]).reshape(-1, 21, 3), y[held].reshape(-1, 21, 3)))
        errors.append(np.concatenate(err).mean())
    return float(alphas[int(np.argmin(errors))])


def linear_probe(x_fit: np.ndarray, poses_fit: np.ndarray, groups_fit: np.ndarray, x_test: np.ndarray,
                 poses_test: np.ndarray) -> dict:
    """Fit on (x_fit, poses_fit (N, 21, 3)), score on the test rows: {"probe_error": mean pose distance,
    "median", "alpha", "fit_rows", "test_rows", "fit_error"}."""
    y_fit = np.asarray(poses_fit, np.float64).reshape(len(poses_fit), -1)
    alpha = choose_alpha(np.asarray(x_fit), y_fit, groups_fit)
    model = fit_ridge(x_fit, y_fit, alpha * len(y_fit))
    test = pose_distances(model.predict(x_test).reshape(-1, 21, 3), poses_test)
    fit = pose_distances(model.predict(x_fit).reshape(-1, 21, 3), poses_fit)
    return {"probe_error": float(test.mean()), "median": float(np.median(test)), "alpha": alpha,
            "fit_rows": int(len(y_fit)), "test_rows": int(len(test)), "fit_error": float(fit.mean())}
