"""The pretrain GPU check, in one run on a single-GPU machine (no package registry needed beyond the Ray kit).

1. Pairs: made here from the bundled sample images (``--pairs-rows`` rows; a few thousand real crops written
   again under other ids, so every row augments differently).
2. The step alone (``train.loop.train_step`` on one cached batch): images/s for each method/layout asked,
   synchronised, plus SiMHand-W's weights at the eight-worker gathered size (2048 x 16384) against the step.
3. The job: ``jobs/pretrain.py`` through Ray Train + Ray Data on the GPU, end-to-end images/s and the share
   of wall time the worker waited for data, read from its per-interval metrics (device synchronised).

    source .device-kit/on-device.sh && python3 benchmarks/gpu/pretrain_device.py --out $OUT/pretrain
    python benchmarks/gpu/pretrain_device.py --tiny --out /tmp/pd      # the same on CPU at toy size (a check)

Prints one line per figure and writes ``figures.json`` (and the job's log) into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def make_pairs(out: str, rows: int, unique: int) -> None:
    """``rows`` pair rows in 256-row groups: ``unique`` real crop pairs, repeated under other ids."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from simhand_ray import schema, storage
    from builders import make_pairs as make_unique

    base = os.path.join(out, "_unique")
    make_unique(base, n=unique, files=1, split=unique // 2)
    table = storage.read_parquet(base)
    copies = -(-rows // unique)
    for c in range(copies):
        t = table.set_column(0, "anchor_id", pc.binary_join_element_wise(table["anchor_id"], pa.scalar(f"#{c}"), ""))
        t = t.set_column(1, "positive_id", pc.binary_join_element_wise(t["positive_id"], pa.scalar(f"#{c}"), ""))
        storage.write_parquet_atomic(t.cast(schema.PAIRS), os.path.join(out, f"part-{c:05d}.parquet"),
                                     row_group_rows=schema.PAIRS_ROW_GROUP_ROWS)
    import shutil

    shutil.rmtree(base)


def step_rate(cfg, device: torch.device, steps: int, warmup: int) -> float:
    """images/s of ``train_step`` on one cached augmented batch, synchronised."""
    from simhand_ray.train import data
    from simhand_ray.train.augment import augment_batch
    from simhand_ray.train.loop import Plan, build_training, maybe_compile, train_step

    rows = data.read_all(data.index_pairs(cfg.pairs, cfg.stream.max_unit_rows), cfg.uses_positive, cfg.seed)
    idx = np.arange(cfg.optim.batch_size) % len(rows["row_key"])
    views = augment_batch({k: v[idx] for k, v in rows.items()}, seed=0, uses_positive=cfg.uses_positive,
                          cfg=cfg.augment)
    batch = {k: torch.from_numpy(v).to(device) for k, v in views.items() if k != "epoch"}
    model, opt, sched, scaler = build_training(cfg, Plan(1, steps + warmup, 0, 1, cfg.optim.batch_size), device)
    model = maybe_compile(model, cfg)
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t = time.perf_counter()
        train_step(model, batch, cfg, opt, sched, scaler, device)
    sync(device)
    return 2 * cfg.optim.batch_size * steps / (time.perf_counter() - t)


def weights_ms(device: torch.device, rows: int, cols: int, repeats: int = 5) -> float:
    """ms of SiMHand-W's negative weights for (rows, cols) keypoint sets (the gathered-batch size)."""
    from simhand_ray.train.losses import minmax_weights, mean_joint_distance

    g = torch.Generator(device="cpu").manual_seed(0)
    a = (torch.rand(rows, 21, 2, generator=g) * 128).to(device)
    b = (torch.rand(cols, 21, 2, generator=g) * 128).to(device)
    for i in range(repeats + 1):
        if i == 1:
            sync(device)
            t = time.perf_counter()
        d = mean_joint_distance(a, b)
        minmax_weights(d, d.min(), d.max())
    sync(device)
    return 1000 * (time.perf_counter() - t) / repeats


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_job(a, pairs: str, out: str) -> dict:
    """``jobs/pretrain.py`` in a subprocess (its own local Ray); figures from its metrics after warm-up."""
    from simhand_ray.train import metrics

    cmd = [sys.executable, os.path.join(REPO, "jobs", "pretrain.py"), "--pairs", pairs, "--output", out,
           "--method", "simhand-w", "--arch", a.arch, "--num-workers", "1", "--batch-size", str(a.batch_size),
           "--max-steps", str(a.job_steps), "--log-every", str(a.log_every), "--image-size", str(a.image_size),
           "--checkpoint-every", str(10 ** 6), "--warmup-epochs", "0", "--num-cpus", str(a.num_cpus)]
    if a.use_gpu:
        cmd += ["--use-gpu", "--cpus-per-worker", "2"]
    t = time.perf_counter()
    with open(os.path.join(a.out, "job.log"), "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=a.job_timeout).returncode
    wall = time.perf_counter() - t
    rows = metrics.read_metrics(out)
    if rc != 0 or not rows:
        raise SystemExit(f"the pretrain job failed (rc {rc}); see {a.out}/job.log")
    intervals = {r["step"]: r for r in rows if r["step"] % a.log_every == 0}
    steady = [r for s, r in sorted(intervals.items()) if s > a.log_every]   # the first interval holds start-up
    span = sum(r["interval_s"] for r in steady)
    return {"images_per_s": sum(r["images_per_s"] * r["interval_s"] for r in steady) / span,
            "data_wait_frac": sum(r["data_wait_frac"] * r["interval_s"] for r in steady) / span,
            "first_interval_s": intervals[min(intervals)]["interval_s"], "job_wall_s": wall,
            "steps": rows[-1]["step"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="toy sizes on CPU: checks the script, measures nothing")
    p.add_argument("--compile", action="store_true", help="also time the step with torch.compile")
    a = p.parse_args(argv)
    gpu = torch.cuda.is_available() and not a.tiny
    a.use_gpu = gpu
    a.arch, a.batch_size, a.image_size = ("resnet50", 512, 128) if not a.tiny else ("resnet18", 16, 32)
    a.job_steps, a.log_every, a.job_timeout = (150, 10, 240) if not a.tiny else (6, 2, 300)
    a.num_cpus = os.cpu_count()
    os.makedirs(a.out, exist_ok=True)
    device = torch.device("cuda" if gpu else "cpu")
    card = torch.cuda.get_device_name(0) if gpu else "CPU"
    fig = {"card": card, "torch": torch.__version__, "cpus": a.num_cpus, "arch": a.arch,
           "pairs_per_gpu": a.batch_size, "image_size": a.image_size}

    from simhand_ray.config import AugmentConfig, PretrainConfig, sectioned

    pairs = os.path.join(a.out, "pairs")
    t = time.perf_counter()
    make_pairs(pairs, rows=24_576 if not a.tiny else 512, unique=1024 if not a.tiny else 64)
    fig["make_pairs_s"] = time.perf_counter() - t
    print(f"[{card}] pairs made in {fig['make_pairs_s']:.0f} s", flush=True)

    base = sectioned(PretrainConfig, pairs=pairs, arch=a.arch, batch_size=a.batch_size, max_steps=1, warmup_epochs=0,
                          augment=AugmentConfig(size=a.image_size))
    steps, warm = (20, 5) if not a.tiny else (2, 1)
    variants = [("simhand-w", True, False), ("simhand-w", False, False), ("simclr", True, False)]
    if a.compile:
        variants.append(("simhand-w", True, True))
    for method, cl, comp in variants:
        from dataclasses import replace

        key = f"step_{method}{'' if cl else '_nchw'}{'_compiled' if comp else ''}_images_per_s"
        try:
            fig[key] = step_rate(replace(base, method=replace(base.method, name=method),
                                         run=replace(base.run, channels_last=cl, compile=comp)), device, steps, warm)
            print(f"[{card}] train_step {method} channels_last={cl} compile={comp}: {fig[key]:.0f} img/s", flush=True)
        except Exception as e:  # noqa: BLE001  (compile may need a compiler this machine lacks: report it)
            fig[key] = f"failed: {type(e).__name__}: {e}"[:300]
            print(f"[{card}] train_step {method} channels_last={cl} compile={comp}: {fig[key]}", flush=True)
    rows, cols = (2048, 16384) if not a.tiny else (64, 256)
    fig["weights_shape"] = [rows, cols]
    fig["weights_ms"] = weights_ms(device, rows, cols)
    step_ms = 1000 * 2 * 1024 / fig["step_simhand-w_images_per_s"]    # a 1024-pair (2048-image) step
    fig["weights_share_of_1024_pair_step"] = fig["weights_ms"] / step_ms
    print(f"[{card}] SiMHand-W weights at {rows} x {cols}: {fig['weights_ms']:.1f} ms = "
          f"{100 * fig['weights_share_of_1024_pair_step']:.1f}% of a 1024-pair step ({step_ms:.0f} ms)", flush=True)
    if gpu:
        torch.cuda.empty_cache()

    job = run_job(a, pairs, os.path.join(a.out, "job_output"))
    fig["job"] = job
    print(f"[{card}] jobs/pretrain.py through Ray (simhand-w, {a.arch}, {a.batch_size} pairs/step, "
          f"{a.num_cpus} CPUs): {job['images_per_s']:.0f} img/s end to end after the first interval, "
          f"data-wait {100 * job['data_wait_frac']:.0f}%, step alone "
          f"{fig['step_simhand-w_images_per_s']:.0f} img/s; job wall {job['job_wall_s']:.0f} s", flush=True)
    with open(os.path.join(a.out, "figures.json"), "w") as f:
        json.dump(fig, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
