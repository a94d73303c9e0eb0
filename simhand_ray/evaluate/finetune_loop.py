"""The fine-tuning worker function for ``ray.train.torch.TorchTrainer`` (SPEC §4).

Each worker builds the trunk (``train.trunk``) + pose head, the AdamW optimiser and warm-up/cosine schedule
of ``train.optim``, restores the output's ``checkpoint.pt`` when resuming (every worker reads it before
wrapping the model in DDP), then trains on its shard of the crop stream (``crop_stream``). Rank 0 writes the
checkpoint (``train.checkpoint``'s one format) atomically after every epoch, and ``model.pt`` (weights +
arch + config, for evaluation) at the end; both hold tensors and plain values only and are read back with
``safe_load.load_torch_file`` (``weights_only=True``). The output must be storage every worker can read
(s3:// or a shared file system) when workers span nodes.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict

import torch

from simhand_ray import storage
from simhand_ray.config import FinetuneConfig, from_dict
from simhand_ray.evaluate.model import CHECKPOINT, MODEL, PoseNet, pose_loss
from simhand_ray.evaluate.preprocess import to_model_input
from simhand_ray.train import checkpoint
from simhand_ray.train.metrics import EventWriter
from simhand_ray.train.optim import build_optimizer
from simhand_ray.train.trunk import make_trunk

log = logging.getLogger(__name__)


def load_checkpoint(cfg: FinetuneConfig) -> dict | None:
    """The output's checkpoint when resuming (None for a fresh start); one of other settings is refused."""
    uri = storage.join(cfg.output, CHECKPOINT)
    if not cfg.resume or not storage.exists(uri):
        return None
    return checkpoint.load_file(uri, storage.config_hash(cfg.result_dict()))


def train_loop(config: dict) -> None:
    """The Ray Train worker function; ``config`` = {"cfg": asdict(FinetuneConfig), "plan": {...}}."""
    import ray.train
    import ray.train.torch

    cfg = from_dict(FinetuneConfig, config["cfg"])
    plan = config["plan"]
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device()

    trunk, arch = make_trunk(cfg.arch, cfg.trunk)
    model = PoseNet(trunk, cfg.head_width)
    optimizer, scheduler = build_optimizer(model, cfg.lr, cfg.weight_decay, plan["warmup_steps"], plan["total_steps"],
                                           kind="adamw")
    start_epoch, step, history = 0, 0, []
    ckpt = load_checkpoint(cfg)
    if ckpt is not None:
        checkpoint.restore(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, scaler=None)
        start_epoch, step, history = ckpt["position"]["epoch"], ckpt["step"], ckpt.get("history", [])
        if rank == 0:
            log.info("resumed from %s at epoch %d, step %d", cfg.output, start_epoch, step)
    model = ray.train.torch.prepare_model(model)
    raw_model = model.module if hasattr(model, "module") else model
    events = EventWriter(cfg.output, purge_step=step + 1 if ckpt is not None else None) if rank == 0 else None
    use_amp = cfg.amp and device.type == "cuda"
    shard = ray.train.get_dataset_shard("train")
    config_hash = storage.config_hash(cfg.result_dict())

    for epoch in range(start_epoch, cfg.epochs):
        if step >= plan["total_steps"]:
            break
        model.train()
        t0, sums, n = time.time(), {}, 0
        for batch in shard.iter_torch_batches(batch_size=cfg.batch_size, drop_last=True, device=device,
                                              local_shuffle_buffer_size=4 * cfg.batch_size):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = model(to_model_input(batch["image"]))
            loss, parts = pose_loss({k: v.float() for k, v in out.items()}, batch["uv"], batch["xyz"],
                                    batch["visible"], cfg.weight_2d, cfg.weight_3d)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            n += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if events is not None:
                events.scalars(step, {**parts, "lr": scheduler.get_last_lr()[0]})
            if step >= plan["total_steps"]:
                break
        # an epoch cut short by max_steps is not counted as done: a resumed run repeats it
        complete = n == plan["steps_per_epoch"]
        metrics = {"epoch": epoch, "step": step, "lr": scheduler.get_last_lr()[0], "seconds": time.time() - t0,
                   **{k: v / max(1, n) for k, v in sums.items()}}
        history.append(metrics)
        if rank == 0:
            checkpoint.save_file(storage.join(cfg.output, CHECKPOINT), model=raw_model, optimizer=optimizer,
                                 scheduler=scheduler, step=step, position={"epoch": epoch + 1 if complete else epoch},
                                 config_hash=config_hash, arch=arch, config=asdict(cfg), history=history)
            events.scalars(step, {"epoch_seconds": metrics["seconds"]})
            events.sync()
            log.info("epoch %d step %d loss %.4f (2d %.4f, 3d %.4f) %.1fs", epoch, step, metrics.get("loss", float("nan")),
                     metrics.get("loss_2d", float("nan")), metrics.get("loss_3d", float("nan")), metrics["seconds"])
        ray.train.report(metrics)
    if rank == 0:
        checkpoint.write_torch(storage.join(cfg.output, MODEL), {"model": raw_model.state_dict(), "arch": arch,
                                                                 "config": asdict(cfg), "step": step, "history": history})
        checkpoint.write_trunk_files(raw_model.trunk.state_dict(), cfg.output)    # the fine-tuned trunk alone
        events.close()
