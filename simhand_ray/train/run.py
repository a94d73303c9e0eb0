"""The pretrain driver: plan the run from the pairs, start ``TorchTrainer``, write the summary and loss curve.

Runs in the job's process (``ray job submit`` or plain python); the work happens in Ray Data tasks (reading,
augmenting) and Ray Train workers (``loop.train_loop_per_worker``). The output is a stage folder
(``stage.StageManifest``, stage "pretrain", settings = ``PretrainConfig.result_dict()``); its status goes
running -> complete, or incomplete / stopped for a run that ended short of its total.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace

from simhand_ray import storage
from simhand_ray.config import PretrainConfig, from_dict
from simhand_ray.stage import StageManifest
from simhand_ray.train import checkpoint, data, metrics, resources
from simhand_ray.train.loop import Plan, train_loop_per_worker

log = logging.getLogger(__name__)

STAGE = "pretrain"


class DatasetFactory:
    """Builds the training Dataset when Ray Train (re)starts its worker group.

    Ray Train calls a callable in ``datasets`` at every worker-group start, so after a worker failure or a
    re-submission the stream restarts where the latest finished checkpoint left it (``latest.json``).
    """

    def __init__(self, cfg: dict, index: data.PairsIndex, stream_epochs: int, total_samples: int = 0):
        self.cfg, self.index, self.stream_epochs, self.total_samples = cfg, index, stream_epochs, total_samples

    def __call__(self):
        cfg = from_dict(PretrainConfig, self.cfg)
        position = checkpoint.read_position(cfg.output)
        start = int(position["position"]["samples"]) if position else 0
        if start:
            log.info("data stream resumes at sample %d (checkpoint step %d)", start, position["step"])
        return data.build_dataset(cfg, self.index, self.stream_epochs, start, self.total_samples)


class IncompleteRunError(RuntimeError):
    """Training ended before the step it was asked to reach (a stream that ran out, a worker that wrote elsewhere)."""


def target_step(cfg: PretrainConfig, plan: Plan) -> int:
    """The step this submission must reach: the run's total, or ``stop_at_step`` when earlier."""
    return min(plan.total_steps, cfg.run.stop_at_step) if cfg.run.stop_at_step else plan.total_steps


def check_reached(cfg: PretrainConfig, plan: Plan, step: int) -> None:
    """Raise ``IncompleteRunError`` when the run stopped short of ``target_step`` (never a silent success)."""
    target = target_step(cfg, plan)
    if step < target:
        raise IncompleteRunError(
            f"training ended at step {step} of {target}: the last checkpoint in {cfg.output} is at step {step} "
            f"({plan.num_rows} pairs, global batch {cfg.optim.batch_size}, {plan.stream_epochs} stream epochs planned); "
            "no trunk was written. See the workers' log above for why they stopped.")


def plan_run(cfg: PretrainConfig, num_rows: int) -> Plan:
    """Steps per epoch, total steps, warm-up steps (same fraction of the run as warmup_epochs / epochs)."""
    if num_rows < cfg.optim.batch_size:
        raise ValueError(f"the pairs hold {num_rows} rows, fewer than one global batch ({cfg.optim.batch_size})")
    per_epoch = num_rows // cfg.optim.batch_size
    total = cfg.optim.max_steps or cfg.optim.epochs * per_epoch
    warmup = int(round(total * min(cfg.optim.warmup_epochs, cfg.optim.epochs) / cfg.optim.epochs))
    return Plan(per_epoch, total, warmup, data.stream_epochs(total, cfg.optim.batch_size, num_rows), num_rows)


def check_resumable(cfg: PretrainConfig, previous: dict | None) -> None:
    """Refuse, before anything is written or started, an output that holds a run without ``--resume``, or one
    made with other settings (``StageMismatch``, naming the settings that differ)."""
    if previous is not None and not cfg.run.resume:
        raise ValueError(f"{cfg.output} already holds a run (step {previous['step']}): pass --resume to "
                         "continue it, or choose another output")
    if StageManifest.read(cfg.output, STAGE) is not None:
        StageManifest.open(cfg.output, STAGE, cfg.result_dict())     # present: compares, writes nothing


def run_pretrain(cfg: PretrainConfig, resource_wait_s: float | None = None) -> dict:
    """Train ``cfg.method.name`` on ``cfg.pairs`` into ``cfg.output``; returns the summary (also in ``_manifest.json``).

    Everything that can refuse the run (paths, an earlier run in the output, the pairs, the cluster's size)
    is checked before the first byte is written. ``resource_wait_s``: how long an autoscaling cluster may take
    to offer the resources (default ``cfg.run.resource_wait_s``; 0 for a local Ray, which cannot grow).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    t0 = time.time()
    # Ray Train workers run in a directory of their own: relative paths would land there
    cfg = replace(cfg, pairs=storage.absolute(cfg.pairs), output=storage.absolute(cfg.output))
    storage.check_readable(cfg.pairs)
    storage.check_writable(cfg.output)
    previous = checkpoint.read_position(cfg.output)
    check_resumable(cfg, previous)
    index = data.index_pairs(cfg.pairs, cfg.stream.max_unit_rows)
    plan = plan_run(cfg, index.num_rows)
    weights = data.source_weights(index, cfg.stream.balance_sources)
    resources.ensure_fits(cfg, cfg.run.resource_wait_s if resource_wait_s is None else resource_wait_s)
    log.info("%s on %d pairs (%s): %d steps of %d (%d/epoch, warm-up %d), %d worker(s)%s", cfg.method.name,
             index.num_rows, index.source_counts(), plan.total_steps, cfg.optim.batch_size, plan.steps_per_epoch,
             plan.warmup_steps, cfg.run.num_workers, f", resuming from step {previous['step']}" if previous else "")
    manifest = StageManifest.open(cfg.output, STAGE, cfg.result_dict())
    manifest.update(status="running", config=asdict(cfg), plan=asdict(plan), sources=index.source_counts(),
                    sampling_weights={s: float(w) for s, w in zip(index.sources, weights)})

    storage_path, fs = checkpoint.run_storage(cfg.output)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": asdict(cfg), "plan": asdict(plan)},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu,
                                               resources_per_worker=resources.worker_bundle(cfg)),
        run_config=ray.train.RunConfig(
            name=checkpoint.RUN_NAME, storage_path=storage_path, storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints)),
        datasets={"train": DatasetFactory(asdict(cfg), index, plan.stream_epochs,
                                          plan.total_steps * cfg.optim.batch_size)},
    )
    result = trainer.fit()
    rows = metrics.read_metrics(cfg.output)
    curve = metrics.plot_loss_curve(rows, storage.join(cfg.output, metrics.LOSS_CURVE),
                                    f"{cfg.method.name} {cfg.method.arch}, global batch {cfg.optim.batch_size}")
    final = checkpoint.read_position(cfg.output) or {}
    step = final.get("step", 0)
    done = step >= plan.total_steps
    short = step < target_step(cfg, plan)
    status = "complete" if done else "incomplete" if short else "stopped"
    summary = {"status": status, "step": step, "plan": asdict(plan),
               "final_loss": rows[-1]["loss"] if rows else None, "loss_curve": curve,
               "trunk": storage.join(cfg.output, checkpoint.TRUNK_FILE) if done else None,
               "result_metrics": {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float, str))}}
    if done:
        from simhand_ray.train.model_card import write_model_card

        summary["model_card"] = write_model_card(cfg, summary, manifest.config_hash, resources.describe_cluster(),
                                                 time.time() - t0)
    manifest.finish(summary, status=status)
    check_reached(cfg, plan, step)
    return summary
