"""The comparison's runs: one pre-training per (method, seed), one fine-tuning + evaluation per (method, seed,
label fraction), one linear probe per seed, each a stage folder under ``OUTPUT/runs`` that a re-run reuses.

Pre-training and fine-tuning run on Ray Train from Ray tasks (``num_cpus=0``: they only drive), as many at a
time as the cluster holds (``parallel_runs``), so a cluster with room runs them side by side.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from simhand_ray import schema, storage
from simhand_ray.compare.linear_probe import linear_probe
from simhand_ray.config import (CompareConfig, FinetuneConfig, PoseEvalConfig, PretrainConfig, ProbeConfig,
                                from_dict, sectioned)
from simhand_ray.stage import StageManifest

log = logging.getLogger(__name__)

PROBE_JSON = "probe.json"


@dataclass
class Run:
    """One unit of work: ``kind`` pretrain | finetune, its folder, its config (a dict) and the runs it needs."""
    kind: str
    name: str
    folder: str
    config: dict
    needs: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)


def pretrain_method(method: str) -> str:
    """The pretrain job's method of a comparison method (the oracle is SiMHand-W on other pairs)."""
    return "simhand-w" if method == "oracle" else method


def pretrain_config(cfg: CompareConfig, method: str, seed: int, pairs: str, folder: str) -> PretrainConfig:
    """Every method with the same steps, batch, view size, schedule and optimiser; 4 checkpoints a run, all kept
    (the probe follows the trunk across them)."""
    return sectioned(PretrainConfig, pairs=pairs, output=folder, seed=seed, method=pretrain_method(method),
                     arch=cfg.arch, batch_size=cfg.batch_size, max_steps=cfg.steps, image_size=cfg.image_size,
                     num_workers=1, use_gpu=cfg.use_gpu, gpus_per_worker=cfg.gpus_per_run,
                     cpus_per_worker=cfg.cpus_per_run, resume=True,
                     checkpoint_every=max(1, cfg.steps // 4), keep_checkpoints=4, log_every=max(1, cfg.steps // 10))


def checkpoint_trunks(run_folder: str) -> dict[int, str]:
    """{step: state.pt} of a pre-training run's checkpoints (a trunk loads from one as from trunk.pt)."""
    out = {}
    for f in storage.list_files(storage.join(run_folder, "ray_train"), (".pt",)):
        parent = f.rsplit("/", 2)[-2]
        if parent.startswith("checkpoint_") and parent[len("checkpoint_"):].isdigit():
            out[int(parent[len("checkpoint_"):])] = f
    return dict(sorted(out.items()))


def finetune_config(cfg: CompareConfig, trunk: str, seed: int, fraction: float, train_records: int,
                    data_root: str, folder: str) -> FinetuneConfig:
    """``finetune_steps`` steps on the first ``fraction`` of the (shuffled) fine-tuning records."""
    samples = max(cfg.finetune_batch_size, int(round(fraction * train_records)))
    per_epoch = max(1, samples // cfg.finetune_batch_size)
    return FinetuneConfig(dataset=cfg.dataset or "freihand", data_root=data_root, output=folder, trunk=trunk,
                          arch=cfg.arch, input_size=cfg.image_size, epochs=math.ceil(cfg.finetune_steps / per_epoch),
                          max_steps=cfg.finetune_steps, batch_size=cfg.finetune_batch_size, lr=cfg.finetune_lr,
                          warmup_epochs=min(1.0, 0.1 * cfg.finetune_steps / per_epoch),
                          max_samples=samples if fraction < 1 else 0, seed=seed, use_gpu=cfg.use_gpu,
                          gpus_per_worker=cfg.gpus_per_run, cpus_per_worker=cfg.cpus_per_run)


def is_done(run: Run) -> bool:
    """A pre-training whose stage is complete; a fine-tuning whose evaluation is written."""
    if run.kind == "pretrain":
        m = StageManifest.read(run.folder, "pretrain")
        return m is not None and m.complete
    return storage.exists(storage.join(run.folder, "eval", "eval_metrics.json"))


def execute(kind: str, config: dict, eval_config: dict | None = None) -> dict:
    """The body of a run's Ray task: pre-train, or fine-tune then evaluate."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("simhand_ray").setLevel(logging.WARNING)
    if kind == "pretrain":
        from simhand_ray.train.run import run_pretrain

        s = run_pretrain(from_dict(PretrainConfig, config), resource_wait_s=0.0)
        return {"final_loss": s["final_loss"], "step": s["step"]}
    from simhand_ray.evaluate.finetune import run_finetune
    from simhand_ray.evaluate.pose_eval import run_pose_eval

    ft = from_dict(FinetuneConfig, config)
    m = StageManifest.read(ft.output, "finetune")
    if m is None or not m.complete:
        run_finetune(ft)
    return run_pose_eval(from_dict(PoseEvalConfig, eval_config))


def parallel_runs(cfg: CompareConfig) -> int:
    """Runs side by side: ``parallel_runs``, else what the cluster holds (``gpus_per_run`` of a GPU and a
    worker's CPUs plus one for its stream, per run)."""
    import ray

    if cfg.parallel_runs:
        return cfg.parallel_runs
    res = ray.cluster_resources()
    by_cpu = int(res.get("CPU", 1) // (cfg.cpus_per_run + 1))
    if cfg.use_gpu:
        return max(1, min(int(res.get("GPU", 0) / cfg.gpus_per_run + 1e-9), by_cpu))
    return max(1, by_cpu)


def run_all(runs: list[Run], parallel: int, on_done) -> None:
    """Execute ``runs`` (skipping finished ones) at most ``parallel`` at a time, each after the runs it needs;
    ``on_done(run, result_or_None, seconds)`` after each. A failed run raises, naming its folder."""
    import ray

    task = ray.remote(num_cpus=0, max_retries=0)(execute)
    done = {r.name for r in runs if is_done(r)}
    for r in runs:
        if r.name in done:
            on_done(r, None, 0.0)
    todo = [r for r in runs if r.name not in done]
    running: dict = {}
    while todo or running:
        ready = [r for r in todo if all(n in done for n in r.needs)]
        while ready and len(running) < parallel:
            r = ready.pop(0)
            todo.remove(r)
            running[task.remote(r.kind, r.config, r.meta.get("eval"))] = (r, time.time())
        finished, _ = ray.wait(list(running), num_returns=1)
        r, t0 = running.pop(finished[0])
        try:
            result = ray.get(finished[0])
        except Exception as e:
            raise RuntimeError(f"{r.kind} run {r.name} failed (its output: {r.folder}): {e}") from e
        done.add(r.name)
        on_done(r, result, time.time() - t0)


def probe_trunks(cfg: CompareConfig, data: str, fit_videos: set[str], trunks: dict[str, str], seed: int,
                 folder: str) -> dict:
    """Linear probes of every trunk ({method: trunk.pt, or '' for random init}) of one seed on the data's probe
    hands, fitted on those of ``fit_videos`` and scored on the others (the test videos):
    {method: linear_probe(...)}; cached in ``folder/probe.json``."""
    from simhand_ray.compare.data import read_truth
    from simhand_ray.evaluate.retrieval import embed_hands

    hands = storage.join(data, "probe", "hands")
    key = storage.config_hash({"trunks": trunks, "seed": seed, "fit": sorted(fit_videos), "size": cfg.image_size,
                               "arch": cfg.arch})
    uri = storage.join(folder, PROBE_JSON)
    if storage.exists(uri) and (old := storage.read_json(uri)).get("key") == key:
        return old["probes"]
    ids, poses = read_truth(data)
    table = storage.read_parquet(hands, columns=["hand_id", "video_id"], schema=schema.HANDS)
    video_of = dict(zip(table.column("hand_id").to_pylist(), table.column("video_id").to_pylist()))
    videos = np.array([video_of[h] for h in ids], dtype=object).astype(str)
    is_fit = np.isin(videos, sorted(fit_videos))
    pcfg = ProbeConfig(hands=hands, output=folder, input_size=cfg.image_size, seed=seed, use_gpu=cfg.use_gpu,
                       batch_size=256 if cfg.use_gpu else 64)
    names = list(trunks)
    feats = embed_hands(pcfg, ids, [(trunks[n], cfg.arch) for n in names])
    probes = {n: linear_probe(f[is_fit], poses[is_fit], videos[is_fit], f[~is_fit], poses[~is_fit])
              for n, f in zip(names, feats)}
    storage.write_json_atomic(uri, {"key": key, "probes": probes, "trunks": trunks, "seed": seed})
    return probes


def eval_config(cfg: CompareConfig, data_root: str, folder: str) -> PoseEvalConfig:
    """Evaluation of a fine-tuned model on the test hands (or the dataset's test split)."""
    return PoseEvalConfig(dataset=cfg.dataset or "freihand", data_root=data_root, model=folder,
                          output=storage.join(folder, "eval"), use_gpu=cfg.use_gpu,
                          max_samples=cfg.max_test_samples, batch_size=256 if cfg.use_gpu else 64)


def plan_runs(cfg: CompareConfig, data: str, train_records: int) -> list[Run]:
    """Every pre-training and fine-tuning run of the comparison, in the order they are started."""
    runs_dir = storage.join(cfg.output, "runs")
    data_root = cfg.data_root if cfg.dataset else storage.join(data, "freihand")
    runs = []
    for seed in cfg.seeds:
        for method in cfg.methods:
            if method == "random":
                continue
            pairs = storage.join(data, "oracle" if method == "oracle" else "mined", "pairs")
            folder = storage.join(runs_dir, "pretrain", f"{method}-s{seed}")
            runs.append(Run("pretrain", f"pretrain {method} s{seed}", folder,
                            asdict(pretrain_config(cfg, method, seed, pairs, folder)),
                            meta={"method": method, "seed": seed}))
    if cfg.finetune_steps:
        for seed in cfg.seeds:
            for method in cfg.methods:
                trunk = "" if method == "random" else storage.join(runs_dir, "pretrain", f"{method}-s{seed}", "trunk.pt")
                for frac in cfg.label_fractions:
                    folder = storage.join(runs_dir, "finetune", f"{method}-s{seed}-f{frac:g}")
                    ft = finetune_config(cfg, trunk, seed, frac, train_records, data_root, folder)
                    runs.append(Run("finetune", f"finetune {method} s{seed} f{frac:g}", folder, asdict(ft),
                                    needs=() if method == "random" else (f"pretrain {method} s{seed}",),
                                    meta={"method": method, "seed": seed, "label_fraction": frac,
                                          "eval": asdict(eval_config(cfg, data_root, folder))}))
    return runs
