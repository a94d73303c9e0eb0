"""The per-worker training function for ``ray.train.torch.TorchTrainer`` (SPEC §3), and one training step.

Each worker: rebuild the config, build the model (same seed everywhere), restore the latest checkpoint if
Ray Train hands one over, wrap in DDP (gloo on CPU, NCCL on GPU: ``TorchConfig``'s default), then stream its
share of the augmented views. The global batch is split evenly over the workers; the loss gathers negatives
from every worker (``gather_distributed``). Mixed precision only on CUDA devices; the device always comes from
``ray.train.torch.get_device()``.

Every step's metrics (loss, lr, weight and gradient norms, SiMHand-W weight means) are kept; rank 0 writes
them as shards with each checkpoint and to TensorBoard, logs every ``log_every`` steps, and all ranks call
``ray.train.report`` then (it is a barrier). Speed is measured per log interval with the device synchronised
at its end (``IntervalTimer``): a GPU step's host time only measures kernel launches.
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field

import torch

from simhand_ray import storage
from simhand_ray.config import PretrainConfig, from_dict
from simhand_ray.train import checkpoint, dist, metrics
from simhand_ray.train.augment import normalize_imagenet
from simhand_ray.train.losses import compile_distances, contrastive_loss
from simhand_ray.train.model import ContrastiveModel
from simhand_ray.train.optim import build_optimizer

log = logging.getLogger(__name__)

EVENTS_DIR = "events"  # restores and injected failures, one small JSON each


@dataclass(frozen=True)
class Plan:
    """Step counts the driver derives from the data (``run.plan_run``)."""
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    stream_epochs: int
    num_rows: int


@dataclass
class IntervalTimer:
    """Wall-clock speed of one log interval. ``close`` runs after the device is synchronised, so images/s is
    what the run really did, and data-wait is the share of that wall time the loop sat waiting for the next
    batch (the rest is the step, reporting and checkpointing)."""
    start: float | None = None
    data_s: float = 0.0
    steps: int = 0
    rows: list = field(default_factory=list)    # per-step records not yet written to a metrics shard

    def add(self, t_ask: float, t_got: float) -> None:
        self.start = t_ask if self.start is None else self.start
        self.data_s += t_got - t_ask
        self.steps += 1

    def close(self, images_per_step: int) -> dict:
        now = time.perf_counter()
        wall = max(now - (self.start if self.start is not None else now), 1e-9)
        out = {"images_per_s": images_per_step * self.steps / wall, "data_wait_frac": min(1.0, self.data_s / wall),
               "interval_s": wall}
        self.start, self.data_s, self.steps = now, 0.0, 0
        return out


def channels_last(cfg: PretrainConfig, device: torch.device) -> bool:
    """channels_last on CUDA only: cuDNN's tensor-core convolutions want it; on CPU it measured no faster."""
    return cfg.run.channels_last and device.type == "cuda"


def maybe_compile(model: torch.nn.Module, cfg: PretrainConfig) -> torch.nn.Module:
    """``--compile``: the model (DDP-wrapped or not) and SiMHand-W's distances through ``torch.compile``."""
    if not cfg.run.compile:
        return model
    compile_distances()
    return torch.compile(model)


def amp_settings(cfg: PretrainConfig, device: torch.device) -> tuple[bool, torch.dtype]:
    """Mixed precision on CUDA only (CPU autocast is slower than float32 for these convolutions)."""
    dtype = torch.bfloat16 if cfg.run.amp_dtype == "bfloat16" else torch.float16
    return cfg.run.amp and device.type == "cuda", dtype


def build_training(cfg: PretrainConfig, plan: Plan, device: torch.device):
    """(model on device, LARS(Adam), scheduler, GradScaler) for ``cfg``; the model is not yet DDP-wrapped."""
    torch.manual_seed(cfg.seed)
    model = ContrastiveModel(cfg.method.arch, cfg.method.proj_hidden, cfg.method.proj_dim).to(device)
    if channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    opt, sched = build_optimizer(model, cfg.lr, cfg.optim.weight_decay, plan.warmup_steps, plan.total_steps, eta=cfg.optim.lars_eta)
    amp_on, dtype = amp_settings(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_on and dtype == torch.float16)
    return model, opt, sched, scaler


@torch.no_grad()
def weight_stats(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Global L2 norms of the weights and of their gradients (device tensors, no host sync)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad for p in params if p.grad is not None]
    out = {"weight_norm": torch.linalg.vector_norm(torch.stack(torch._foreach_norm(params)))}
    if grads:
        out["grad_norm"] = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    return out


def train_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: PretrainConfig, opt, sched, scaler,
               device: torch.device, gather: bool = False) -> dict[str, torch.Tensor]:
    """One optimiser step on a batch of ``augment.VIEW_COLUMNS``; returns detached metrics (device tensors).

    Both views go through the network in one forward (2n images), as in PeCLR.
    """
    amp_on, dtype = amp_settings(cfg, device)
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    x = normalize_imagenet(torch.cat((batch["view1"], batch["view2"])))
    if channels_last(cfg, device):
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=device.type, dtype=dtype, enabled=amp_on):
        p = model(x)
    p1, p2 = p.float().chunk(2)
    loss, extras = contrastive_loss(cfg.method.name, p1, p2, batch, cfg.method.temperature, gather, cfg.method.neg_weight_min)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if scaler.is_enabled():
        scaler.unscale_(opt)
    stats = weight_stats(model)
    lr = opt.param_groups[0]["lr"]
    scaler.step(opt)
    scaler.update()
    sched.step()
    return {"loss": loss.detach(), "lr": torch.tensor(lr), **stats, **{k: v.detach() for k, v in extras.items()}}


def _inject_failure_once(output: str, step: int) -> None:
    """Testing aid (``fail_at_step``): raise the first time a run reaches ``step``, as a dying worker would."""
    marker = storage.join(output, EVENTS_DIR, f"injected-failure-{step:08d}.json")
    if not storage.exists(marker):
        storage.write_json_atomic(marker, {"step": step})
        raise RuntimeError(f"injected failure at step {step} (fail_at_step)")


def _worker_logging(rank: int) -> None:
    """Rank 0 logs at INFO to the worker's stderr (which Ray forwards); other ranks stay quiet."""
    root = logging.getLogger("simhand_ray")
    if rank == 0 and not root.handlers and not logging.getLogger().handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(h)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def _flush(pending: list[dict], device: torch.device) -> list[dict]:
    """Turn the interval's device tensors into plain records (one host sync per interval)."""
    if not pending:
        return []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    losses = dist.all_reduce(torch.stack([r["loss"] for r in pending]).float(), "mean")  # mean over workers
    rows = []
    for i, r in enumerate(pending):
        row = {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in r.items()}
        row["loss"], row["epoch"] = float(losses[i]), int(row["epoch"])
        rows.append(row)
    return rows


TB_STEP_KEYS = ("loss", "lr", "weight_norm", "grad_norm", "pos_weight", "neg_weight")


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point: ``config = {"cfg": asdict(PretrainConfig), "plan": asdict(Plan)}``."""
    import ray.train
    import ray.train.torch

    cfg = from_dict(PretrainConfig, config["cfg"])
    plan = Plan(**config["plan"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _worker_logging(rank)
    device = ray.train.torch.get_device()
    config_hash = storage.config_hash(cfg.result_dict())

    model, opt, sched, scaler = build_training(cfg, plan, device)
    step, restored = 0, None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        # A private copy per worker: workers on one node sharing as_directory()'s download raced on S3.
        with tempfile.TemporaryDirectory() as d:
            state = checkpoint.load(ckpt.to_directory(d), config_hash)
        restored = checkpoint.restore(state, model=model, optimizer=opt, scheduler=sched, scaler=scaler)
        step = int(state["step"])
        if rank == 0:
            log.info("restored step %d from checkpoint (digest %s, saved %s)", step, restored, state["digest"])
            storage.write_json_atomic(
                storage.join(cfg.output, EVENTS_DIR, f"restore-{step:08d}-{time.time_ns()}.json"),
                {"step": step, "restored_digest": restored, "saved_digest": state["digest"]})
    ddp_model = ray.train.torch.prepare_model(model, move_to_device=False) if world > 1 else model
    ddp_model = maybe_compile(ddp_model, cfg)
    gather = cfg.method.gather_distributed and world > 1
    global_batch = cfg.local_batch_size * world
    events = metrics.EventWriter(cfg.output, purge_step=step + 1 if ckpt is not None else None) if rank == 0 else None

    shard = ray.train.get_dataset_shard("train")
    batches = shard.iter_torch_batches(
        batch_size=cfg.local_batch_size, drop_last=True, prefetch_batches=cfg.stream.prefetch_batches,
        pin_memory=device.type == "cuda",   # Ray copies pinned batches to the device in its prefetch thread
        local_shuffle_buffer_size=cfg.stream.shuffle_buffer or None,
        local_shuffle_seed=(cfg.seed + 1000 * rank + step) if cfg.stream.shuffle_buffer else None)
    stop = min(plan.total_steps, cfg.run.stop_at_step) if cfg.run.stop_at_step else plan.total_steps
    timer, pending, epoch = IntervalTimer(), [], 0
    last_saved = step if ckpt is not None else -1
    it = iter(batches)
    while step < stop:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            log.error("the data stream ended at step %d of %d (the driver fails the run)", step, stop)
            break
        t1 = time.perf_counter()
        timer.add(t0, t1)
        epoch_t = batch.pop("epoch")[0]     # on the device: read at the interval's sync, not per step
        out = train_step(ddp_model, batch, cfg, opt, sched, scaler, device, gather)
        step += 1
        pending.append({"step": step, "epoch": epoch_t, "time": time.time(), "data_s": t1 - t0,
                        "host_s": time.perf_counter() - t1, **out})
        if cfg.run.fail_at_step and step == cfg.run.fail_at_step and rank == 0:
            _inject_failure_once(cfg.output, step)
        save_now = step % cfg.run.checkpoint_every == 0 or step == stop
        if save_now or step % cfg.run.log_every == 0:
            report = _close_interval(pending, timer, device, 2 * global_batch, events)
            pending, epoch = [], report["epoch"]
            report["restored_digest"] = restored or ""
            if rank == 0:
                log.info("step %d/%d epoch %d loss %.4f lr %.2e %.0f img/s data-wait %.0f%%", step,
                         plan.total_steps, epoch, report["loss"], report["lr"], report["images_per_s"],
                         100 * report["data_wait_frac"])
            if save_now:
                _save(cfg, model, opt, sched, scaler, step, epoch, global_batch, config_hash, report, timer, rank,
                      events)
                last_saved = step
            else:
                ray.train.report(report)
    if last_saved != step:  # the stream ended early: keep what was trained
        report = _close_interval(pending, timer, device, 2 * global_batch, events) if pending else {"step": step}
        epoch = report.get("epoch", epoch)
        _save(cfg, model, opt, sched, scaler, step, epoch, global_batch, config_hash,
              {**report, "restored_digest": restored or ""}, timer, rank, events)
    if rank == 0 and step >= plan.total_steps:
        uri = checkpoint.save_trunk(model, cfg.output)
        log.info("wrote %s", uri)
    if events is not None:
        events.close()


def _close_interval(pending: list[dict], timer: IntervalTimer, device: torch.device, images_per_step: int,
                    events: metrics.EventWriter | None) -> dict:
    """End a log interval: sync, turn its steps into records (kept in ``timer.rows``), write TensorBoard
    scalars; returns the last step's record with the interval's speed (what ``ray.train.report`` gets)."""
    rows = _flush(pending, device)
    speed = timer.close(images_per_step)
    for r in rows:
        r.update(speed)     # every step of an interval carries its wall-clock rate
    timer.rows.extend(rows)
    if events is not None:
        for r in rows:
            events.scalars(r["step"], {k: r.get(k) for k in TB_STEP_KEYS})
        events.scalars(rows[-1]["step"], {k: speed[k] for k in ("images_per_s", "data_wait_frac")})
    return dict(rows[-1])


def _save(cfg: PretrainConfig, model, opt, sched, scaler, step: int, epoch: int, global_batch: int,
          config_hash: str, report: dict, timer: IntervalTimer, rank: int,
          events: metrics.EventWriter | None) -> None:
    """Checkpoint through ``ray.train.report`` (rank 0 writes it), then the position pointer and metrics."""
    import ray.train

    position = {"samples": step * global_batch, "epoch": epoch}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if rank == 0:
            meta = checkpoint.save(tmp, model=model, optimizer=opt, scheduler=sched, scaler=scaler, step=step,
                                   position=position, config_hash=config_hash)
            ckpt = ray.train.Checkpoint.from_directory(tmp)
            report = {**report, "digest": meta["digest"]}
        ray.train.report(report, checkpoint=ckpt, checkpoint_dir_name=checkpoint.dir_name(step))
    if rank == 0:
        checkpoint.write_position(cfg.output, {**meta, "checkpoint": checkpoint.dir_name(step)})
        metrics.write_shard(cfg.output, timer.rows)
        events.sync()
    timer.rows = []
