"""Evaluate a fine-tuned pose model on a dataset's evaluation split (SPEC §4 metrics).

Records -> Ray Data crops (no augmentation; left hands mirrored) -> ``PosePredictor`` actors (the model
loads once per actor, in ``__init__``) -> root-relative 3D predictions in the camera frame (mm) -> the
FreiHAND-convention metrics of ``metrics.evaluate_3d``. Writes ``eval_metrics.json``, ``pck_curve.csv``,
``pck_curve.png`` and ``predictions.npz`` (sample ids, predicted and true joints) into the output.
"""
from __future__ import annotations

import io
import logging
from dataclasses import asdict

import numpy as np
import torch

from simhand_ray import storage
from simhand_ray.config import PoseEvalConfig
from simhand_ray.evaluate import metrics, preprocess
from simhand_ray.evaluate.crop_stream import records_dataset
from simhand_ray.evaluate.datasets import open_dataset
from simhand_ray.evaluate.model import CHECKPOINT, MODEL, XYZ_UNIT_MM, load_pose_model
from simhand_ray.evaluate.preprocess import to_model_input
from simhand_ray.safe_load import load_torch_file
from simhand_ray.stage import StageManifest

log = logging.getLogger(__name__)

METRICS_JSON = "eval_metrics.json"
PCK_CSV = "pck_curve.csv"
PCK_PNG = "pck_curve.png"


def model_file(uri: str) -> str:
    """The weights file of a fine-tuning output directory, or ``uri`` itself when it is a file."""
    if storage.is_dir(uri) or not storage.exists(uri):
        for name in (MODEL, CHECKPOINT):
            if storage.exists(storage.join(uri, name)):
                return storage.join(uri, name)
        raise FileNotFoundError(f"no {MODEL} or {CHECKPOINT} under {uri}")
    return uri


def model_config(uri: str) -> dict:
    """The fine-tuning settings a model was trained with: its output's stage manifest when the file sits in a
    fine-tuning output (no large read on the driver), else the config saved in the file."""
    if storage.basename(uri) in (MODEL, CHECKPOINT):
        manifest = StageManifest.read(uri.rsplit("/", 1)[0], "finetune")
        if manifest is not None:
            return manifest.record["settings"]
    return load_torch_file(uri)["config"]


class PosePredictor:
    """Ray Data actor: crops -> root-relative 3D joints in the camera frame (mm)."""

    def __init__(self, model_uri: str, use_gpu: bool = False):
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = load_pose_model(model_uri, self.device)

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = torch.as_tensor(batch["image"], device=self.device)
        xyz_crop = self.model(to_model_input(images))["xyz"].float().cpu().numpy() * XYZ_UNIT_MM
        # back from the (mirrored) crop frame to the camera frame
        xyz = np.einsum("bij,bkj->bki", batch["frame_from_crop"].astype(np.float64), xyz_crop)
        return {"sample_id": batch["sample_id"], "pred_xyz": xyz.astype(np.float32)}


def _write_curve(cfg: PoseEvalConfig, result: dict, title: str) -> None:
    t = result["root_relative"]["thresholds_mm"]
    rows = ["threshold_mm,pck_root_relative,pck_procrustes"] + [
        f"{a:.4f},{b:.6f},{c:.6f}" for a, b, c in zip(t, result["root_relative"]["pck"], result["procrustes"]["pck"])]
    storage.write_bytes_atomic(storage.join(cfg.output, PCK_CSV), ("\n".join(rows) + "\n").encode())
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for key, label in (("root_relative", "root-relative"), ("procrustes", "Procrustes-aligned")):
        r = result[key]
        ax.plot(t, r["pck"], label=f"{label} (AUC {r['auc']:.3f})")
    ax.set_xlabel("threshold (mm)")
    ax.set_ylabel("3D PCK")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    storage.write_bytes_atomic(storage.join(cfg.output, PCK_PNG), buf.getvalue())


def run_pose_eval(cfg: PoseEvalConfig) -> dict:
    """Predict every hand of the evaluation split, score it, write the tables; returns the metrics dict."""
    storage.check_writable(cfg.output)
    uri = model_file(cfg.model)
    train_cfg = model_config(uri)
    dataset = open_dataset(cfg.dataset, cfg.data_root, cfg.split, cfg.max_samples, train=False)
    records = dataset.records()
    if not records:
        raise ValueError(f"no samples in {cfg.dataset} split {dataset.split!r} under {cfg.data_root}")
    spec = preprocess.crop_spec(train_cfg["input_size"], train_cfg["crop_scale"], augment=False)
    from ray.data import ActorPoolStrategy

    ds = records_dataset(records, spec, augment=False, shuffle=False)
    ds = ds.map_batches(PosePredictor, fn_constructor_kwargs={"model_uri": uri, "use_gpu": cfg.use_gpu},
                        batch_size=cfg.batch_size, batch_format="numpy", compute=ActorPoolStrategy(size=cfg.num_workers),
                        num_gpus=1 if cfg.use_gpu else 0)
    preds: dict[str, np.ndarray] = {}
    for batch in ds.iter_batches(batch_size=1024, batch_format="numpy"):
        preds.update(zip((str(s) for s in batch["sample_id"]), batch["pred_xyz"]))
    missing = [r.sample_id for r in records if r.sample_id not in preds]
    if missing:
        raise RuntimeError(f"{len(missing)} samples got no prediction (first: {missing[0]})")
    pred = np.stack([preds[r.sample_id] for r in records]).astype(np.float64)
    gt = np.stack([r.joints_3d for r in records])
    vis = np.stack([r.visible for r in records])
    result = metrics.evaluate_3d(pred, gt, vis, steps=cfg.auc_steps, allow_reflection=cfg.allow_reflection)
    out = {
        "dataset": cfg.dataset, "split": dataset.split, "model": uri, "samples": len(records),
        "trunk": train_cfg.get("trunk", ""),
        "mpjpe_mm": result["root_relative"]["mean_mm"], "auc_root_relative": result["root_relative"]["auc"],
        "pa_mpjpe_mm": result["procrustes"]["mean_mm"], "auc_procrustes": result["procrustes"]["auc"],
        "median_mm": result["root_relative"]["median_mm"], "pa_median_mm": result["procrustes"]["median_mm"],
        "auc_range_mm": [metrics.AUC_MIN_MM, metrics.AUC_MAX_MM], "auc_steps": cfg.auc_steps,
        "config": asdict(cfg),
    }
    storage.write_json_atomic(storage.join(cfg.output, METRICS_JSON), out)
    _write_curve(cfg, result, f"{cfg.dataset} {dataset.split}")
    buf = io.BytesIO()
    np.savez_compressed(buf, sample_id=np.array([r.sample_id for r in records]), pred_xyz=pred, gt_xyz=gt, visible=vis)
    storage.write_bytes_atomic(storage.join(cfg.output, "predictions.npz"), buf.getvalue())
    log.info("%s %s (%d hands): MPJPE %.2f mm, PA-MPJPE %.2f mm, AUC %.3f / PA %.3f", cfg.dataset, dataset.split,
             len(records), out["mpjpe_mm"], out["pa_mpjpe_mm"], out["auc_root_relative"], out["auc_procrustes"])
    return out
