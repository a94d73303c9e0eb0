"""The pretrain job: the pairs stream (sampling, resume position), one training step, and end-to-end runs on
Ray Train with 2 CPU workers reading pairs from the moto S3 server.

The pairs are real JPEG crops of the sample images (schema.PAIRS) with hand-shaped keypoints.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
import torchvision

from builders import make_pairs, read_tensorboard
from conftest import REPO
from simhand_ray import storage
from simhand_ray.config import AugmentConfig, PretrainConfig, sectioned
from simhand_ray.stage import MANIFEST
from simhand_ray.train import checkpoint, data, metrics
from simhand_ray.train.loop import Plan, build_training, train_step
from simhand_ray.train.run import plan_run

@pytest.fixture(scope="module")
def local_pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    make_pairs(str(d))
    return str(d)


def _stream_rows(index, weights, seed, interleave, epochs, start=0):
    """The stream as (epoch, unit, row, copy) tuples, from the plan (what read_items emits, in order)."""
    out = []
    for it in data.plan_items(index, weights, seed, interleave, epochs, start):
        pos, rows, copies = data.item_rows(seed, it.epoch, it.item, it.units, index, weights)
        out += [(it.epoch, it.units[p], r, c) for p, r, c in zip(pos, rows, copies)][it.skip:]
    return out


# --- the pairs stream --------------------------------------------------------------------------------------
def test_index_and_source_balanced_weights(local_pairs):
    index = data.index_pairs(local_pairs, max_unit_rows=2048)
    assert index.num_rows == 16 and len(index.units) == 2
    assert index.source_counts() == {"ego4d": 12, "100doh": 4}
    w = data.source_weights(index, balance=True)
    np.testing.assert_allclose(w, [16 / (2 * 12), 16 / (2 * 4)])
    np.testing.assert_allclose(data.source_weights(index, balance=False), [1, 1])
    # Over many epochs each source contributes half of the rows, and an epoch holds about N rows.
    stream = _stream_rows(index, w, seed=0, interleave=2, epochs=200)
    codes = np.array([index.unit_sources[u][r] for _, u, r, _ in stream])
    assert abs(np.mean(codes == 0) - 0.5) < 0.02
    assert abs(len(stream) / 200 - 16) < 0.5
    # Copies of one row in one epoch are numbered 0, 1, ... (they get different augmentations).
    seen: dict = {}
    for e, u, r, c in stream:
        seen.setdefault((e, u, r), []).append(c)
    assert all(sorted(c) == list(range(len(c))) for c in seen.values())
    assert max(len(c) for c in seen.values()) >= 2


def test_plan_resumes_at_the_consumed_position(local_pairs):
    index = data.index_pairs(local_pairs, max_unit_rows=5)   # 8 rows per file -> units of 5 + 3 rows
    assert [u.num_rows for u in index.units] == [5, 3, 5, 3]
    w = data.source_weights(index, balance=True)
    full = _stream_rows(index, w, seed=3, interleave=2, epochs=3)
    for start in (0, 1, 7, 16, 23, len(full) - 1, len(full)):
        assert _stream_rows(index, w, seed=3, interleave=2, epochs=3, start=start) == full[start:]


def test_a_corrupt_pairs_file_is_named(tmp_path):
    make_pairs(str(tmp_path), n=8, files=2)
    bad = tmp_path / "part-00001.parquet"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])     # truncated: the footer is gone
    with pytest.raises(ValueError, match="part-00001.parquet"):
        data.index_pairs(str(tmp_path), max_unit_rows=2048)


def test_read_unit_chunks_a_large_row_group(tmp_path):
    table = pa.table({"anchor_id": [f"a{i}" for i in range(10)], "source": ["s"] * 10})
    pq.write_table(table, tmp_path / "one.parquet", row_group_size=10)
    index = data.index_pairs(str(tmp_path), max_unit_rows=4)
    assert [(u.start, u.stop) for u in index.units] == [(0, 4), (4, 8), (8, 10)]
    got = sum((data.read_unit(u, ["anchor_id"]).column(0).to_pylist() for u in index.units), [])
    assert got == table.column("anchor_id").to_pylist()


def test_read_items_gives_rows_for_augment(local_pairs):
    index = data.index_pairs(local_pairs, max_unit_rows=2048)
    w = data.source_weights(index, balance=True)
    items = data.plan_items(index, w, seed=0, interleave=2, num_epochs=1)
    rows = data.read_items(data.item_batch(items[:1]), index=index, weights=w, seed=0, uses_positive=True)
    n = len(rows["row_key"])
    assert rows["anchor_keypoints"].shape == (n, 21, 2) and len(rows["positive_jpeg"]) == n
    views = data.augment.augment_batch(rows, seed=0, uses_positive=True, cfg=AugmentConfig(size=64))
    assert views["view1"].shape == (n, 3, 64, 64)


def test_plan_run_warmup_and_totals():
    cfg = sectioned(PretrainConfig, batch_size=8, epochs=100, warmup_epochs=10)
    plan = plan_run(cfg, num_rows=80)
    assert (plan.steps_per_epoch, plan.total_steps, plan.warmup_steps) == (10, 1000, 100)
    plan = plan_run(sectioned(PretrainConfig, batch_size=8, max_steps=50), num_rows=80)
    assert (plan.total_steps, plan.warmup_steps, plan.stream_epochs) == (50, 5, 6)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        plan_run(sectioned(PretrainConfig, batch_size=100), num_rows=80)


def test_stream_covers_a_run_on_a_dataset_close_to_the_global_batch(tmp_path):
    """14 pairs, global batch 8, 30 steps (the demo run): the planned stream holds every row the run needs
    even when resampled epochs come out short, and a run that ends early is an error, not a success."""
    make_pairs(str(tmp_path), n=14, files=1, split=13)   # 13 + 1 rows: balancing resamples heavily
    index = data.index_pairs(str(tmp_path), max_unit_rows=2048)
    w = data.source_weights(index, balance=True)
    cfg = sectioned(PretrainConfig, batch_size=8, max_steps=30)
    plan = plan_run(cfg, index.num_rows)
    need = plan.total_steps * cfg.optim.batch_size + cfg.optim.batch_size
    for seed in range(20):
        items, epochs = data.plan_stream(index, w, seed, 2, plan.stream_epochs, 0, need)
        assert data.plan_rows(index, w, seed, items) >= need and epochs >= plan.stream_epochs
        assert data.plan_rows(index, w, seed, items) == len(_stream_rows(index, w, seed, 2, epochs))
    # Even a plan of one epoch is grown to cover the run, also from a resume position.
    items, _ = data.plan_stream(index, w, 0, 2, 1, 100, need - 100)
    assert data.plan_rows(index, w, 0, items) >= need - 100
    from simhand_ray.train.run import IncompleteRunError, check_reached
    check_reached(cfg, plan, 30)
    check_reached(sectioned(PretrainConfig, batch_size=8, max_steps=30, stop_at_step=10), plan, 10)
    with pytest.raises(IncompleteRunError, match="ended at step 0 of 30"):
        check_reached(cfg, plan, 0)


def test_tiny_stream_on_ray_yields_every_planned_batch(ray_cluster, tmp_path):
    """The Ray Data stream of a dataset smaller than two global batches gives the rows the run needs."""
    make_pairs(str(tmp_path), n=10, files=1, split=9)
    index = data.index_pairs(str(tmp_path), max_unit_rows=2048)
    cfg = sectioned(PretrainConfig, batch_size=8, max_steps=3, augment=AugmentConfig(size=32))
    plan = plan_run(cfg, index.num_rows)
    ds = data.build_dataset(cfg, index, 1, 0, plan.total_steps * cfg.optim.batch_size)   # 1 epoch planned: too few
    batches = list(ds.iter_batches(batch_size=cfg.optim.batch_size, drop_last=True, batch_format="numpy"))
    assert len(batches) >= plan.total_steps
    assert batches[0]["view1"].shape == (8, 3, 32, 32)


STREAM_PROBE = """
import json, os, sys, time
sys.path[:0] = sys.argv[3:]
import ray
from simhand_ray.config import AugmentConfig, PretrainConfig, sectioned
from simhand_ray.train import data

real, LOG = data.augment_items, sys.argv[2]

def timed(batch, **kw):      # the stream's own task function, with its start and end written down
    t0 = time.time()
    yield from real(batch, **kw)
    with open(LOG, "a") as f:
        f.write(json.dumps([os.getpid(), t0, time.time()]) + "\\n")

data.augment_items = timed
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
index = data.index_pairs(sys.argv[1], max_unit_rows=2048)
cfg = sectioned(PretrainConfig, batch_size=8, balance_sources=False, items_per_task=1, augment=AugmentConfig(size=256))
list(data.build_dataset(cfg, index, 1).iter_batches(batch_size=None))     # starts the workers
open(sys.argv[2], "w").close()
rows = sum(len(b["view1"]) for b in data.build_dataset(cfg, index, 6).iter_batches(batch_size=None))
print(json.dumps({"rows": rows}))
"""


def test_stream_runs_augmentation_tasks_side_by_side(tmp_path):
    """On a Ray of 2 CPUs of its own, the stream runs two read+augment tasks at once (one item each here),
    on two worker processes. (The tasks of a whole run went into one before: `Tasks: 1` on a 16-core node.)"""
    make_pairs(str(tmp_path / "pairs"), n=256, files=4, split=256)   # 64-row groups -> 2 items per epoch
    log = tmp_path / "tasks.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run([sys.executable, "-c", STREAM_PROBE, str(tmp_path / "pairs"), str(log), str(REPO)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["rows"] == 6 * 256
    spans = sorted((t0, t1, pid) for pid, t0, t1 in (json.loads(line) for line in log.read_text().splitlines()))
    assert len(spans) == 12                                             # one task per item
    overlap = max(sum(1 for s, e, _ in spans if s <= t0 < e) for t0, _, _ in spans)
    assert overlap >= 2 and len({pid for *_, pid in spans}) >= 2, spans


def test_cluster_fit_names_the_flag_to_change():
    from simhand_ray.train.resources import shortfall

    def cfg(**kw):
        return sectioned(PretrainConfig, batch_size=8, **kw)

    two = [{"CPU": 2.0}]
    why = shortfall(cfg(num_workers=2), two)           # 2 workers x 1 CPU: nothing left for the stream
    assert "--cpus-per-worker 0.5 or less" in why and "--num-workers" in why
    assert shortfall(cfg(num_workers=2, cpus_per_worker=0.5), two) is None
    assert shortfall(cfg(num_workers=1), two) is None
    assert "need 2 GPU(s); the cluster has 0" in shortfall(cfg(num_workers=2, use_gpu=True), two)
    gpu_node = [{"CPU": 16.0, "GPU": 1.0}, {"CPU": 16.0, "GPU": 1.0}]
    assert shortfall(cfg(num_workers=2, use_gpu=True, cpus_per_worker=4), gpu_node) is None
    # a share of a GPU per worker: four quarter-GPU workers fit one GPU, four of 0.3 do not
    one_gpu = [{"CPU": 16.0, "GPU": 1.0}]
    assert shortfall(cfg(num_workers=4, use_gpu=True, gpus_per_worker=0.25, cpus_per_worker=2), one_gpu) is None
    assert "need 1.2 GPU(s); the cluster has 1" in shortfall(
        cfg(num_workers=4, use_gpu=True, gpus_per_worker=0.3, cpus_per_worker=2), one_gpu)
    # a worker's CPUs must sit on one node: two 1.5-CPU nodes hold no 2-CPU worker
    assert "do not fit" in shortfall(cfg(num_workers=1, cpus_per_worker=2), [{"CPU": 1.5}, {"CPU": 1.5}])
    # the stream's task needs a whole CPU on one node, not scraps spread over several
    assert "leave no node with a whole CPU" in shortfall(cfg(num_workers=2, cpus_per_worker=1.5),
                                                          [{"CPU": 2.0}, {"CPU": 2.0}])


def test_two_workers_on_two_cpus_end_in_seconds_naming_the_flag(ray_cluster, local_pairs, tmp_path, caplog):
    """The case that waited forever (0 rows after 16 minutes): refused before anything is written; with an
    autoscaling wait, refused when the wait is over."""
    import logging

    import pretrain
    from simhand_ray.train.resources import ClusterTooSmallError, ensure_fits

    out = tmp_path / "pt"
    args = ["--pairs", local_pairs, "--output", str(out), "--arch", "resnet18", "--num-workers", "2",
            "--batch-size", "8", "--max-steps", "2", "--image-size", "32"]
    t = time.monotonic()
    with caplog.at_level(logging.ERROR):
        assert pretrain.main(args) == 2
    assert time.monotonic() - t < 60
    assert "--cpus-per-worker 0.5 or less" in caplog.text, caplog.text
    assert not out.exists() or not any(out.iterdir())
    t = time.monotonic()
    with pytest.raises(ClusterTooSmallError, match=r"after waiting 2 s \(--resource-wait\)"):
        ensure_fits(sectioned(PretrainConfig, batch_size=8, num_workers=2), wait_s=2)
    assert time.monotonic() - t < 30


# --- optimiser ---------------------------------------------------------------------------------------------
def test_param_groups_exclude_bn_and_biases():
    from simhand_ray.train.model import ContrastiveModel
    from simhand_ray.train.optim import param_groups

    m = ContrastiveModel("resnet18")
    decay, plain = param_groups(m, 1e-6)
    assert decay["weight_decay"] == 1e-6 and decay["lars"] and plain["weight_decay"] == 0 and not plain["lars"]
    names = {id(p): n for n, p in m.named_parameters()}
    assert all(names[id(p)].endswith("weight") and p.ndim > 1 for p in decay["params"])
    assert {names[id(p)] for p in plain["params"]} >= {"trunk.bn1.weight", "trunk.bn1.bias", "head.0.bias"}
    assert len(decay["params"]) + len(plain["params"]) == len(list(m.parameters()))


def test_lars_scales_gradients_as_the_reference():
    """With SGD(lr) inside, one step moves w by lr x min(eta |w| / (|g| + wd |w|) / lr, 1) x (g + wd w)."""
    from simhand_ray.train.optim import LARS

    w0 = torch.tensor([[3.0, 4.0]])              # |w| = 5
    for g, lr in ((torch.tensor([[0.6, 0.8]]), 0.1), (torch.tensor([[300.0, 400.0]]), 0.1),
                  (torch.tensor([[0.006, 0.008]]), 1e-4)):
        w = torch.nn.Parameter(w0.clone())
        opt = LARS(torch.optim.SGD([{"params": [w], "weight_decay": 0.01, "lars": True}], lr=lr), eta=0.02)
        w.grad = g.clone()
        opt.step()
        gn, wn = float(g.norm()), 5.0
        ratio = min(0.02 * wn / (gn + 0.01 * wn + 1e-8) / lr, 1.0)
        torch.testing.assert_close(w.detach(), w0 - lr * ratio * (g + 0.01 * w0))
        assert opt.param_groups[0]["weight_decay"] == 0.01   # restored after the step


def test_warmup_cosine_schedule():
    from simhand_ray.train.optim import build_optimizer, warmup_cosine

    assert [warmup_cosine(s, 4, 12) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine(4, 4, 12) == 1.0 and warmup_cosine(8, 4, 12) == pytest.approx(0.5)
    assert warmup_cosine(12, 4, 12) == pytest.approx(0.0, abs=1e-12)
    m = torch.nn.Linear(2, 2)
    opt, sched = build_optimizer(m, 0.4, 1e-6, 2, 6, eta=0.02)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        m(torch.ones(1, 2)).sum().backward()
        opt.step()
        sched.step()
    np.testing.assert_allclose(lrs, [0.2, 0.4, 0.4, 0.4 * 0.5 * (1 + np.cos(np.pi / 4)), 0.2,
                                     0.4 * 0.5 * (1 + np.cos(3 * np.pi / 4))], rtol=1e-6)


def test_float16_loss_scaling_works_with_the_lars_wrapper():
    from simhand_ray.train.optim import build_optimizer

    m = torch.nn.Linear(4, 2)
    opt, sched = build_optimizer(m, 1e-2, 1e-6, 0, 10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = m.weight.detach().clone()
    scaler.scale(m(torch.randn(3, 4)).pow(2).sum()).backward()
    scaler.unscale_(opt)
    scaler.step(opt)
    scaler.update()
    sched.step()
    assert not torch.equal(before, m.weight) and torch.isfinite(m.weight).all()


# --- one worker's step -------------------------------------------------------------------------------------
def test_loss_falls_when_overfitting_a_fixed_batch(local_pairs):
    """resnet18, 8 pairs, the same views every step: the SiMHand-W loss drops well below its start."""
    cfg = sectioned(PretrainConfig, method="simhand-w", arch="resnet18", batch_size=8, base_lr=1e-3, max_steps=10,
                         warmup_epochs=0, augment=AugmentConfig(size=64))
    index = data.index_pairs(local_pairs, max_unit_rows=2048)
    w = np.ones(len(index.sources))
    items = data.plan_items(index, w, seed=0, interleave=1, num_epochs=1)[:1]
    rows = data.read_items(data.item_batch(items), index=index, weights=w, seed=0, uses_positive=True)
    views = data.augment.augment_batch(rows, seed=0, uses_positive=True, cfg=cfg.augment)
    fixed = {k: torch.from_numpy(v) for k, v in views.items() if k != "epoch"}
    torch.manual_seed(0)
    device = torch.device("cpu")
    model, opt, sched, scaler = build_training(cfg, Plan(1, 10, 0, 2, 8), device)
    found = [float(train_step(model, fixed, cfg, opt, sched, scaler, device)["loss"]) for _ in range(10)]
    assert all(np.isfinite(found))
    assert np.mean(found[-3:]) < found[0] - 0.3, found


# --- end to end on Ray Train ---------------------------------------------------------------------------------
def submit_job(address: str, entrypoint: list[str]) -> str | None:
    """``ray job submit`` the entry point; returns its output (asserts success), or None when the cluster's
    job agent never came up (it can lose its port to another Ray on a shared machine).

    ``local://``: the repo is used in place (this machine is the only node), so no uploaded package is
    involved; an uploaded working_dir was seen garbage-collected from the GCS mid-job on a loaded machine.
    """
    cmd = [os.path.join(os.path.dirname(sys.executable), "ray"), "job", "submit", "--address", address,
           "--working-dir", f"local://{REPO}", "--", *entrypoint]
    deadline = time.monotonic() + 60
    while True:  # the dashboard's job agent may be slow to answer on a loaded machine
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
        if "No available agent" not in res.stdout + res.stderr:
            break
        if time.monotonic() > deadline:
            return None
        time.sleep(5)
    assert res.returncode == 0 and "succeeded" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


def _restores(out: str) -> list[dict]:
    return [storage.read_json(u) for u in storage.list_files(storage.join(out, "events"), (".json",))
            if "restore-" in u]


def _saved_digest(out: str, step: int) -> str:
    return storage.read_json(storage.join(out, checkpoint.RUN_NAME, checkpoint.dir_name(step),
                                          checkpoint.META_FILE))["digest"]


@pytest.mark.slow
def test_pretrain_job_on_s3_two_workers_with_failure_and_resubmission(ray_cluster, s3_bucket):
    """The job (CLI entry point), 2 CPU workers, pairs and output on the moto S3 server.

    Submission 1 (in-process): a worker dies at step 3; Ray Train restarts the group from the step-2
    checkpoint; the submission stops after its step-4 checkpoint. Submission 2 (``ray job submit``,
    --resume) restores step 4 and finishes at 8.
    Every restore loads exactly the saved model + optimiser state (digests). On a fixed batch (16 pairs =
    the global batch, same views every epoch) the loss is finite and falls; trunk.pt loads into torchvision.
    """
    import pretrain

    pairs, out = storage.join(s3_bucket, "pairs"), storage.join(s3_bucket, "pretrain")
    make_pairs(pairs, n=16, files=2)
    args = ["--pairs", pairs, "--output", out, "--method", "simhand-w", "--arch", "resnet18", "--num-workers", "2",
            "--cpus-per-worker", "0.5", "--batch-size", "16", "--max-steps", "8", "--warmup-epochs", "0",
            "--base-lr", "5e-4", "--checkpoint-every", "2", "--keep-checkpoints", "10", "--log-every", "2",
            "--max-failures", "1", "--no-balance-sources", "--fixed-views", "--image-size", "64",
            "--augment-batch-size", "8"]
    assert pretrain.main(args + ["--stop-at-step", "4", "--fail-at-step", "3"]) == 0
    manifest = storage.read_json(storage.join(out, MANIFEST))
    summary = manifest["summary"]
    assert manifest["status"] == summary["status"] == "stopped" and summary["step"] == 4 and summary["trunk"] is None
    assert storage.exists(storage.join(out, "events", "injected-failure-00000003.json"))
    assert pretrain.main(args) == 2          # the output holds a run and --resume is not given
    if submit_job(ray_cluster, [sys.executable, "jobs/pretrain.py", *args, "--resume"]) is None:
        warnings.warn("the Ray job agent is unavailable: submission 2 runs in-process instead")
        assert pretrain.main(args + ["--resume"]) == 0
    manifest = storage.read_json(storage.join(out, MANIFEST))
    assert manifest["status"] == "complete" and manifest["summary"]["step"] == 8
    assert manifest["stage"] == "pretrain" and manifest["settings"]["method"]["temperature"] == 0.5

    restores = sorted(_restores(out), key=lambda r: r["step"])
    assert [r["step"] for r in restores] == [2, 4]      # the worker-group restart, then the re-submission
    for r in restores:
        assert r["restored_digest"] == r["saved_digest"] == _saved_digest(out, r["step"])

    rows = metrics.read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    losses = [r["loss"] for r in rows]
    assert all(np.isfinite(losses)) and np.mean(losses[-2:]) < losses[0] - 0.1, losses
    assert all(r["images_per_s"] > 0 and r["weight_norm"] > 0 and 0 <= r["pos_weight"] <= 1 for r in rows)
    assert storage.read_bytes(storage.join(out, metrics.LOSS_CURVE))[:4] == b"\x89PNG"
    assert checkpoint.read_position(out)["position"]["samples"] == 8 * 16
    state = torch.load(io.BytesIO(storage.read_bytes(storage.join(out, "trunk.pt"))), weights_only=True)
    missing, unexpected = torchvision.models.resnet18().load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    from safetensors.torch import load as load_safetensors     # the same tensors, without pickle

    same = load_safetensors(storage.read_bytes(storage.join(out, "trunk.safetensors")))
    assert same.keys() == state.keys() and all(torch.equal(same[k], state[k]) for k in state)
    # TensorBoard's own reader finds every step's loss in the event files copied to S3 (the restored
    # attempts' purge_step drops what a failed attempt wrote past its checkpoint)
    scalars = read_tensorboard(out)
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 9))
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], losses, rtol=1e-5)
    assert {"train/lr", "train/images_per_s", "train/data_wait_frac", "train/pos_weight"} <= set(scalars)

    # A --resume with other settings is refused on the driver, in seconds, and leaves the output as it was.
    before = snapshot(out)
    t = time.monotonic()
    assert pretrain.main(args + ["--resume", "--temperature", "0.2"]) == 2
    assert time.monotonic() - t < 30
    assert snapshot(out) == before


def snapshot(output: str) -> dict:
    """Every file under ``output`` with its size and modification time, and the bytes of the JSON files."""
    fs, path = storage.resolve(output)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return {i.path: (i.size, i.mtime_ns, fs.open_input_stream(i.path).read() if i.path.endswith(".json") else b"")
            for i in infos if i.type == pafs.FileType.File}


@pytest.mark.slow
def test_pretrain_job_beside_another_local_ray(ray_cluster, local_pairs, tmp_path):
    """A plain ``python jobs/pretrain.py`` with relative paths, started in another directory, starts its own
    Ray while another one (the session's) runs on this machine.
    - Ray Train's controller queries the state API, which auto-detects "the" cluster unless pinned, and then
      fails with "Found multiple active Ray instances".
    - Ray Train workers run in a directory of their own: relative paths must be made absolute first, or the
      checkpoints and trunk.pt land there and the run ends "at step 0".
    Both handled, the run trains every step cleanly and its outputs are where the user asked."""
    shutil.copytree(local_pairs, tmp_path / "pairs")
    cmd = [sys.executable, os.path.join(REPO, "jobs", "pretrain.py"), "--pairs", "pairs", "--output", "pretrain",
           "--method", "simclr", "--arch", "resnet18", "--num-workers", "1", "--batch-size", "8", "--max-steps", "4",
           "--image-size", "64", "--augment-batch-size", "8", "--num-cpus", "2"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert "multiple active Ray instances" not in log, log[-3000:]
    manifest = storage.read_json(str(tmp_path / "pretrain" / MANIFEST))
    assert manifest["status"] == "complete" and manifest["summary"]["step"] == 4
    assert (tmp_path / "pretrain" / "trunk.pt").exists()
    # the model card: what was trained how, and loading snippets that run as written in the output folder
    card = (tmp_path / "pretrain" / "MODEL_CARD.md").read_text()
    assert "# simclr resnet18 trunk" in card and f"`{manifest['config_hash']}`" in card and "16 pairs" in card
    snippets = re.findall(r"```python\n(.*?)```", card, re.S)
    assert len(snippets) == 3
    check = ("import torch\nfrom simhand_ray.compat import mmcv_ext\nmmcv_ext.install()  # mmcv-lite here\n"
             + "\n".join(f"{s}\nresults.append({'backbone' if 'backbone =' in s else 'model'})\n" for s in snippets)
             + "ref = torch.load('trunk.pt', weights_only=True)\n"
             + "for m in results:\n    sd = m.state_dict()\n"
             + "    assert all(torch.equal(sd[k], v) for k, v in ref.items()), type(m)\nprint('loaded', len(results))")
    res = subprocess.run([sys.executable, "-c", "results = []\n" + check], cwd=tmp_path / "pretrain",
                         env=dict(env, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1"), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "loaded 3" in res.stdout, res.stdout[-2000:] + res.stderr[-3000:]
    scalars = read_tensorboard(str(tmp_path / "pretrain"))
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    # the logged rate is the wall-clock rate of its interval: 4 steps of 16 images in at most the run's time
    rows = metrics.read_metrics(str(tmp_path / "pretrain"))
    assert all(r["images_per_s"] == rows[-1]["images_per_s"] for r in rows)   # one log interval
    assert 0 <= rows[-1]["data_wait_frac"] <= 1 and 4 * 16 / rows[-1]["images_per_s"] == pytest.approx(
        rows[-1]["interval_s"], rel=1e-6)
