"""Fine-tune a trunk for 3D hand pose under Ray Train (SPEC §4).

Data flow: a dataset reader's records (metadata only) -> ``ray.data.from_items`` (shuffled) -> one
``map_batches`` that reads each image, crops, augments and mirrors left hands (``preprocess``) ->
``TorchTrainer(datasets={"train": ...})``; each worker iterates its shard with ``iter_torch_batches``.

Checkpoints follow torchvision's classification reference: rank 0 writes ``checkpoint.pt`` = {model,
optimizer, lr_scheduler, epoch, step, config, config_hash, history} atomically into the output directory
after every epoch, and a run pointed at a directory holding one resumes from it (every worker reads it
before wrapping the model in DDP). The config hash covers the settings that change the result, so a
changed run refuses to resume into the wrong directory. At the end rank 0 writes ``model.pt`` (weights +
config) for ``evaluate`` and ``finetune_summary.json`` for the report. Both hold tensors and plain values
only (the config as a dict) and are read back with ``safe_load.load_torch_file`` (``weights_only=True``).
The output must be storage every worker can read (s3:// or a shared file system) when workers span nodes.
"""
from __future__ import annotations

import io
import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from simhand_ray import storage
from simhand_ray.config import from_dict
from simhand_ray.evaluate import preprocess
from simhand_ray.evaluate.datasets import open_dataset, read_image
from simhand_ray.evaluate.model import PoseNet, make_trunk, pose_loss
from simhand_ray.safe_load import load_torch_file
from simhand_ray.train.metrics import EventWriter

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
CONFIG_JSON = "finetune_config.json"
SUMMARY_JSON = "finetune_summary.json"
LOSS_PNG = "finetune_loss.png"


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings. ``batch_size`` is per worker; ``max_steps`` (0 = none) caps the run for smoke
    tests; ``trunk`` is a weights path / s3:// URI (pre-trained trunk.pt, an ImageNet state_dict) or empty
    for random init; ``arch`` "auto" takes it from the weights."""
    dataset: str = "freihand"
    data_root: str = ""
    split: str = ""
    output: str = ""
    trunk: str = ""
    arch: str = "auto"
    input_size: int = 128
    crop_scale: float = 1.5
    augment: bool = True
    epochs: int = 50
    max_steps: int = 0
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    weight_2d: float = 5.0
    weight_3d: float = 1.0
    head_width: int = 256
    max_samples: int = 0
    seed: int = 0
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    amp: bool = True
    resume: bool = True

    def __post_init__(self):
        if not self.output:
            raise ValueError("fine-tuning needs an output directory")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (BatchNorm in the head)")
        if self.epochs < 1 or self.num_workers < 1:
            raise ValueError("epochs and num_workers must be >= 1")

    def result_dict(self) -> dict:
        """Settings that change the trained weights (hashed into checkpoints; length/resources excluded)."""
        d = asdict(self)
        for k in ("output", "epochs", "max_steps", "num_workers", "use_gpu", "cpus_per_worker", "resume"):
            d.pop(k)
        return d

    @property
    def crop_spec(self) -> preprocess.CropSpec:
        if self.augment:
            return preprocess.train_spec(self.input_size, self.crop_scale)
        return preprocess.CropSpec(size=self.input_size, scale=self.crop_scale)


def schedule(warmup_steps: int, total_steps: int):
    """LR multiplier: linear warm-up, then cosine to 0 at ``total_steps``."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def preprocess_batch(batch: dict[str, np.ndarray], spec: dict, augment: bool) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` fn: record rows -> crops + targets (see ``preprocess.prepare_hand``).

    Augmentation draws from fresh entropy, so each epoch's pass sees new jitter.
    """
    crop = preprocess.CropSpec(**spec)
    rng = np.random.default_rng() if augment else None
    outs = [preprocess.prepare_hand(read_image(str(uri)), batch["joints_2d"][i], batch["joints_3d"][i],
                                    str(batch["side"][i]), batch["visible"][i], crop, rng)
            for i, uri in enumerate(batch["image_uri"])]
    res = {k: np.stack([o[k] for o in outs]) for k in ("image", "uv", "xyz", "visible", "frame_from_crop")}
    res["sample_id"] = np.asarray(batch["sample_id"])
    return res


def records_dataset(records, spec: preprocess.CropSpec, augment: bool, shuffle: bool, seed: int | None = None,
                    batch_size: int = 16, rows_per_block: int = 128):
    """Records -> a Ray Dataset of model inputs (crops read and prepared lazily, block by block in parallel).

    Shuffling is cheap on purpose: the light records are permuted once here, the blocks are re-ordered on
    every pass (``randomize_block_order``), and the trainer adds a local shuffle buffer; an all-to-all
    ``random_shuffle`` of tiny rows would cost more than the epoch on small datasets.
    """
    import ray

    rows = [r.to_row() for r in records]
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(rows))
        rows = [rows[i] for i in order]
    blocks = int(np.clip(len(rows) // rows_per_block, 1, 2048))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    if shuffle:
        ds = ds.randomize_block_order()
    return ds.map_batches(preprocess_batch, fn_kwargs={"spec": asdict(spec), "augment": augment},
                          batch_size=batch_size, batch_format="numpy")


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float, ImageNet-normalised, on the images' device."""
    mean = torch.as_tensor(preprocess.IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.as_tensor(preprocess.IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def save_torch(uri: str, obj: dict) -> None:
    """Write ``obj`` (tensors and plain containers only, so ``load_torch_file`` reads it back) atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    storage.write_bytes_atomic(uri, buf.getvalue())


def load_checkpoint(cfg: FinetuneConfig) -> dict | None:
    """The output directory's checkpoint if resuming, after checking it belongs to this config."""
    uri = storage.join(cfg.output, CHECKPOINT)
    if not cfg.resume or not storage.exists(uri):
        return None
    ckpt = load_torch_file(uri)
    want = storage.config_hash(cfg.result_dict())
    if ckpt.get("config_hash") != want:
        raise ValueError(f"{uri} was written by a different configuration ({ckpt.get('config_hash')} != {want}); "
                         "use a new output directory or --no-resume")
    return ckpt


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only (not BatchNorm or biases)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_loop(config: dict) -> None:
    """The Ray Train worker function; ``config`` = {"cfg": asdict(FinetuneConfig), "plan": {...}}."""
    import ray.train
    import ray.train.torch

    cfg = from_dict(FinetuneConfig, config["cfg"])
    plan = config["plan"]
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device()

    trunk, arch = make_trunk(cfg.arch, cfg.trunk)
    model = PoseNet(trunk, cfg.head_width)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(plan["warmup_steps"], plan["total_steps"]))
    start_epoch, step, history = 0, 0, []
    ckpt = load_checkpoint(cfg)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        start_epoch, step, history = ckpt["epoch"], ckpt["step"], ckpt.get("history", [])
        if rank == 0:
            log.info("resumed from %s at epoch %d, step %d", cfg.output, start_epoch, step)
    model = ray.train.torch.prepare_model(model)
    raw_model = model.module if hasattr(model, "module") else model
    events = EventWriter(cfg.output, purge_step=step + 1 if ckpt is not None else None) if rank == 0 else None
    use_amp = cfg.amp and device.type == "cuda"
    shard = ray.train.get_dataset_shard("train")

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
            save_torch(storage.join(cfg.output, CHECKPOINT), {
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "epoch": epoch + 1 if complete else epoch, "step": step,
                "arch": arch, "config": asdict(cfg), "config_hash": storage.config_hash(cfg.result_dict()),
                "history": history})
            events.scalars(step, {"epoch_seconds": metrics["seconds"]})
            events.sync()
            log.info("epoch %d step %d loss %.4f (2d %.4f, 3d %.4f) %.1fs", epoch, step, metrics.get("loss", float("nan")),
                     metrics.get("loss_2d", float("nan")), metrics.get("loss_3d", float("nan")), metrics["seconds"])
        ray.train.report(metrics)
    if rank == 0:
        save_torch(storage.join(cfg.output, MODEL), {"model": raw_model.state_dict(), "arch": arch,
                                                     "config": asdict(cfg), "step": step, "history": history})
        events.close()


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


def loss_plot(history: list[dict], title: str) -> bytes:
    """PNG of the per-epoch training losses (total, 2D, 3D)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    epochs = [h["epoch"] for h in history]
    for key in ("loss", "loss_2d", "loss_3d"):
        ax.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss")
    ax.set_title(f"fine-tuning on {title}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def run_finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune on ``cfg.dataset``'s training split through Ray Train; returns the summary it writes."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = replace(cfg, data_root=storage.absolute(cfg.data_root), output=storage.absolute(cfg.output),
                  trunk=storage.absolute(cfg.trunk))     # Ray Train workers run in a directory of their own
    storage.check_writable(cfg.output)
    records = open_dataset(cfg.dataset, cfg.data_root, cfg.split, cfg.max_samples, train=True).records()
    plan = plan_steps(len(records), cfg)
    log.info("fine-tuning on %d %s samples: %s", len(records), cfg.dataset, plan)
    storage.write_json_atomic(storage.join(cfg.output, CONFIG_JSON), {"config": asdict(cfg), "plan": plan})
    ds = records_dataset(records, cfg.crop_spec, augment=cfg.augment, shuffle=True, seed=cfg.seed)
    ds = ds.select_columns(["image", "uv", "xyz", "visible"])        # tensors only (ids are strings)
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
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
    if summary["history"]:
        storage.write_bytes_atomic(storage.join(cfg.output, LOSS_PNG), loss_plot(summary["history"], cfg.dataset))
    log.info("fine-tuning done: %d steps in %.0fs, final %s", summary["steps"], summary["seconds"], summary["final"])
    return summary
