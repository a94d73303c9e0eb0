"""The fine-tuning driver (SPEC §4): plan the run, open the output, start ``TorchTrainer``, write the summary.

Data flow: a dataset reader's records (metadata only) -> ``crop_stream.records_dataset`` (shuffled; images
read, cropped, augmented and mirrored in Ray Data) -> ``TorchTrainer(datasets={"train": ...})`` running
``finetune_loop.train_loop`` on every worker.

The output is a stage folder (``stage.StageManifest``, stage "finetune", settings = ``result_dict()``): a run
with other settings is refused; one with the same settings (more epochs, other resources) resumes from its
``checkpoint.pt``. At the end the driver writes ``finetune_summary.json`` for the report and the loss curve.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, replace

from simhand_ray import storage
from simhand_ray.config import FinetuneConfig
from simhand_ray.evaluate import preprocess
from simhand_ray.evaluate.crop_stream import records_dataset
from simhand_ray.evaluate.datasets import open_dataset
from simhand_ray.evaluate.finetune_loop import train_loop
from simhand_ray.evaluate.model import CHECKPOINT, MODEL
from simhand_ray.safe_load import load_torch_file
from simhand_ray.stage import MANIFEST, StageManifest, StageMismatch
from simhand_ray.train.metrics import plot_loss_curve

log = logging.getLogger(__name__)

STAGE = "finetune"
SUMMARY_JSON = "finetune_summary.json"
LOSS_PNG = "finetune_loss.png"


def plan_steps(num_records: int, cfg: FinetuneConfig) -> dict:
    """Steps per epoch (every worker drops its last partial batch), total steps and warm-up steps."""
    per_epoch = num_records // (cfg.batch_size * cfg.num_workers)
    if per_epoch < 1:
        raise ValueError(f"{num_records} training samples < one global batch ({cfg.batch_size} x {cfg.num_workers})")
    total = per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    return {"num_records": num_records, "steps_per_epoch": per_epoch, "total_steps": total,
            "warmup_steps": min(total, int(round(cfg.warmup_epochs * per_epoch)))}


def open_output(cfg: FinetuneConfig) -> StageManifest:
    """The output's stage manifest: fresh, or this run's (resumed), else ``StageMismatch`` (other settings, or
    a checkpoint an older simhand-ray wrote without a manifest)."""
    if not storage.exists(storage.join(cfg.output, MANIFEST)) and storage.exists(storage.join(cfg.output, CHECKPOINT)):
        raise StageMismatch(f"{cfg.output} holds a fine-tuning checkpoint of an older simhand-ray; delete it or "
                            "use another --output")
    return StageManifest.open(cfg.output, STAGE, cfg.result_dict())


def run_finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune on ``cfg.dataset``'s training split through Ray Train; returns the summary it writes."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = replace(cfg, data_root=storage.absolute(cfg.data_root), output=storage.absolute(cfg.output),
                  trunk=storage.absolute(cfg.trunk))     # Ray Train workers run in a directory of their own
    storage.check_writable(cfg.output)
    records = open_dataset(cfg.dataset, cfg.data_root, cfg.split, cfg.max_samples, train=True).records()
    plan = plan_steps(len(records), cfg)
    manifest = open_output(cfg)
    manifest.update(status="running", config=asdict(cfg), plan=plan)
    log.info("fine-tuning on %d %s samples: %s", len(records), cfg.dataset, plan)
    spec = preprocess.crop_spec(cfg.input_size, cfg.crop_scale, cfg.augment)
    ds = records_dataset(records, spec, augment=cfg.augment, shuffle=True, seed=cfg.seed)
    ds = ds.select_columns(["image", "uv", "xyz", "visible"])        # tensors only (ids are strings)
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {})}
    fs, path = storage.resolve(storage.join(cfg.output, "_ray_train"))
    trainer = TorchTrainer(
        train_loop, train_loop_config={"cfg": asdict(cfg), "plan": plan},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=f"finetune-{uuid.uuid4().hex[:8]}", storage_path=path, storage_filesystem=fs),
        datasets={"train": ds})
    t0 = time.time()
    trainer.fit()
    model = load_torch_file(storage.join(cfg.output, MODEL))
    summary = {"config": asdict(cfg), "plan": plan, "arch": model["arch"], "steps": model["step"],
               "history": model["history"], "seconds": time.time() - t0,
               "final": model["history"][-1] if model["history"] else {}}
    storage.write_json_atomic(storage.join(cfg.output, SUMMARY_JSON), summary)
    plot_loss_curve(summary["history"], storage.join(cfg.output, LOSS_PNG), f"fine-tuning on {cfg.dataset}",
                    x="epoch", losses=("loss", "loss_2d", "loss_3d"), ylabel="mean training loss")
    manifest.finish({k: summary[k] for k in ("arch", "steps", "final", "seconds")})
    log.info("fine-tuning done: %d steps in %.0fs, final %s", summary["steps"], summary["seconds"], summary["final"])
    return summary
