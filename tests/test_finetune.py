"""Fine-tuning: trunk loading, the head + loss on one batch, checkpoint stamping, and the jobs end to end
through Ray (fine-tune with 2 DDP workers, resume with 1, evaluate, report) on a FreiHAND-format fixture."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision

from builders import read_tensorboard, write_freihand
from conftest import load_job
from simhand_ray import storage
from simhand_ray.config import FinetuneConfig
from simhand_ray.evaluate import preprocess
from simhand_ray.evaluate.datasets import FreiHAND
from simhand_ray.evaluate.finetune import open_output, plan_steps
from simhand_ray.evaluate.finetune_loop import load_checkpoint
from simhand_ray.evaluate.model import CHECKPOINT, PoseNet, pose_loss
from simhand_ray.evaluate.preprocess import to_model_input
from simhand_ray.safe_load import load_torch_file
from simhand_ray.stage import StageMismatch
from simhand_ray.train import checkpoint
from simhand_ray.train.optim import build_optimizer, warmup_cosine
from simhand_ray.train.trunk import infer_arch, make_trunk


def test_trunk_loads_pretrain_and_imagenet_formats_strictly(tmp_path):
    torch.manual_seed(0)
    full = torchvision.models.resnet18().state_dict()                 # ImageNet-style: has fc.*
    torch.save(full, tmp_path / "imagenet.pth")
    torch.save({k: v for k, v in full.items() if not k.startswith("fc.")}, tmp_path / "trunk.pt")
    torch.save({"model": {f"module.trunk.{k}": v for k, v in full.items()}}, tmp_path / "ckpt.pt")
    for name in ("imagenet.pth", "trunk.pt", "ckpt.pt"):
        trunk, arch = make_trunk("auto", str(tmp_path / name))
        assert arch == "resnet18"
        torch.testing.assert_close(trunk.layer4[1].bn2.running_var, full["layer4.1.bn2.running_var"])
    assert infer_arch(torchvision.models.resnet50().state_dict()) == "resnet50"
    broken = {k: v for k, v in full.items() if not k.startswith(("fc.", "layer3.1.bn1"))}
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(RuntimeError, match="Missing key"):
        make_trunk("resnet18", str(tmp_path / "broken.pt"))
    with pytest.raises(RuntimeError):
        make_trunk("resnet34", str(tmp_path / "trunk.pt"))           # wrong architecture: strict load fails


@pytest.fixture
def one_thread():
    """One intra-op thread: on a small shared CPU box OpenMP spin-waiting across 2 threads is 10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_pose_head_fits_one_batch(tmp_path, one_thread):
    """Trunk + heatmap/location-map head + loss train: the loss on a fixed batch of 4 hands falls."""
    write_freihand(tmp_path, n_train=4, versions=1, n_eval=1)
    ds = FreiHAND(str(tmp_path), "training")
    spec = preprocess.CropSpec(size=64)
    items = [preprocess.prepare_hand(s.image, s.joints_2d, s.joints_3d, s.side, s.visible, spec) for s in ds]
    batch = {k: torch.as_tensor(np.stack([it[k] for it in items])) for k in ("image", "uv", "xyz", "visible")}
    torch.manual_seed(0)
    trunk, _ = make_trunk("resnet18")
    model = PoseNet(trunk, head_width=64)
    out = model(to_model_input(batch["image"]))
    assert out["uv"].shape == (4, 21, 2) and out["xyz"].shape == (4, 21, 3) and out["heatmaps"].shape[-1] == 8
    assert ((out["uv"] > 0) & (out["uv"] < 1)).all()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        loss, parts = pose_loss(model(to_model_input(batch["image"])), batch["uv"], batch["xyz"], batch["visible"], 5.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["loss"])
    assert losses[-1] < 0.5 * losses[0], losses


def test_schedule_and_plan():
    def f(step):
        return warmup_cosine(step, warmup_steps=4, total_steps=14)

    assert [round(f(s), 3) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0) and f(9) == pytest.approx(0.5) and f(14) == pytest.approx(0.0)
    cfg = FinetuneConfig(output="x", batch_size=2, num_workers=2, epochs=3, max_steps=5)
    assert plan_steps(13, cfg) == {"num_records": 13, "steps_per_epoch": 3, "total_steps": 5, "warmup_steps": 3}
    with pytest.raises(ValueError, match="global batch"):
        plan_steps(3, cfg)


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    """The checkpoint (train.checkpoint's format) resumes only a run of its settings; the output's stage
    manifest refuses other settings before anything runs, and lets length and resources change."""
    cfg = FinetuneConfig(output=str(tmp_path), lr=1e-3)
    model = torch.nn.Linear(2, 2)
    opt, sched = build_optimizer(model, cfg.lr, cfg.weight_decay, 1, 4, kind="adamw")
    checkpoint.save_file(storage.join(cfg.output, CHECKPOINT), model=model, optimizer=opt, scheduler=sched, step=6,
                         position={"epoch": 2}, config_hash=storage.config_hash(cfg.result_dict()), history=[])
    assert load_checkpoint(cfg)["position"]["epoch"] == 2
    longer = FinetuneConfig(output=str(tmp_path), lr=1e-3, epochs=99, num_workers=4)   # length/resources may change
    assert load_checkpoint(longer)["step"] == 6
    assert load_checkpoint(FinetuneConfig(output=str(tmp_path), lr=1e-3, resume=False)) is None
    with pytest.raises(ValueError, match="other settings"):
        load_checkpoint(FinetuneConfig(output=str(tmp_path), lr=2e-3))
    with pytest.raises(StageMismatch, match="older simhand-ray"):       # a checkpoint without a manifest
        open_output(cfg)
    out = tmp_path / "run"
    assert not open_output(FinetuneConfig(output=str(out), lr=1e-3)).existed
    assert open_output(FinetuneConfig(output=str(out), lr=1e-3, epochs=99)).existed
    with pytest.raises(StageMismatch, match=r"lr: 0.001 -> 0.002"):
        open_output(FinetuneConfig(output=str(out), lr=2e-3))


@pytest.mark.slow
def test_finetune_resume_evaluate_report_end_to_end(ray_cluster, tmp_path, capsys):
    data = tmp_path / "FreiHAND_pub_v2"
    write_freihand(data, n_train=6, versions=2, n_eval=4, size=64)
    torch.manual_seed(0)
    trunk_pt = tmp_path / "trunk.pt"          # what the pretrain job writes: plain state_dict, no fc.*
    torch.save({k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")},
               trunk_pt)
    run = tmp_path / "run"
    ft_out = run / "finetune"
    common = ["--dataset", "freihand", "--data-root", str(data), "--output", str(ft_out), "--trunk", str(trunk_pt),
              "--input-size", "64", "--batch-size", "2"]
    finetune = load_job("finetune")
    # 12 images (6 samples x 2 versions) / (2 per worker x 2 workers) = 3 steps per epoch, DDP over gloo
    assert finetune.main(common + ["--epochs", "1", "--num-workers", "2", "--cpus-per-worker", "0.5"]) == 0
    ckpt = load_torch_file(str(ft_out / "checkpoint.pt"))
    assert (ckpt["position"]["epoch"], ckpt["step"]) == (1, 3)
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "step", "position", "config", "config_hash", "history"}
    # resume from the output directory with more epochs and one worker: 12 / 2 = 6 steps for epoch 1
    assert finetune.main(common + ["--epochs", "2", "--num-workers", "1"]) == 0
    ckpt = load_torch_file(str(ft_out / "checkpoint.pt"))
    assert (ckpt["position"]["epoch"], ckpt["step"]) == (2, 9)
    assert [h["epoch"] for h in ckpt["history"]] == [0, 1]
    summary = json.loads((ft_out / "finetune_summary.json").read_text())
    assert summary["steps"] == 9 and summary["arch"] == "resnet18" and np.isfinite(summary["final"]["loss"])
    assert (ft_out / "finetune_loss.png").stat().st_size > 1000
    assert storage.read_json(str(ft_out / "_manifest.json"))["status"] == "complete"
    from safetensors.torch import load_file                    # the fine-tuned trunk, in both formats
    model = load_torch_file(str(ft_out / "model.pt"))["model"]
    trunk = load_file(str(ft_out / "trunk.safetensors"))
    assert trunk.keys() == {k[len("trunk."):] for k in model if k.startswith("trunk.")}
    assert all(torch.equal(v, model["trunk." + k]) for k, v in trunk.items())
    scalars = read_tensorboard(str(ft_out))     # TensorBoard's own reader: both submissions' 9 steps
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 10)) and "train/loss_3d" in scalars

    ev_out = run / "eval"
    evaluate = load_job("evaluate")
    assert evaluate.main(["--dataset", "freihand", "--data-root", str(data), "--model", str(ft_out),
                          "--output", str(ev_out), "--batch-size", "2"]) == 0
    m = json.loads((ev_out / "eval_metrics.json").read_text())
    assert m["samples"] == 4 and m["split"] == "evaluation"
    assert 0 < m["pa_mpjpe_mm"] <= m["mpjpe_mm"] + 1e-6 and 0 <= m["auc_procrustes"] <= 1
    pred = np.load(ev_out / "predictions.npz")
    assert pred["pred_xyz"].shape == (4, 21, 3) and np.isfinite(pred["pred_xyz"]).all()
    assert (ev_out / "pck_curve.png").stat().st_size > 1000
    assert len((ev_out / "pck_curve.csv").read_text().splitlines()) == 101
    assert "PA-MPJPE" in capsys.readouterr().out

    assert evaluate.main(["--report", str(run)]) == 0
    report = (run / "report.md").read_text()
    assert "## 3D hand pose" in report and f"{m['pa_mpjpe_mm']:.2f}" in report
    assert "## Fine-tuning runs" in report and "![eval/pck_curve.png](eval/pck_curve.png)" in report
    assert "![finetune/finetune_loss.png](finetune/finetune_loss.png)" in report


def test_report_collects_tables_from_a_relative_run_dir(tmp_path, monkeypatch):
    from simhand_ray.evaluate.report import build_report

    run = tmp_path / "run"
    (run / "eval" / "dexycb").mkdir(parents=True)
    (run / "pretrain").mkdir()
    (run / "eval" / "dexycb" / "eval_metrics.json").write_text(json.dumps({
        "dataset": "dexycb", "split": "test", "samples": 7, "trunk": "s3://b/pretrain/trunk.pt", "mpjpe_mm": 15.5,
        "pa_mpjpe_mm": 7.25, "auc_root_relative": 0.71, "auc_procrustes": 0.856}))
    (run / "pretrain" / "summary.json").write_text(json.dumps({"steps": 100, "final_loss": 3.25, "history": [1, 2]}))
    (run / "eval" / "dexycb" / "pck_curve.png").write_bytes(b"\x89PNG")
    (run / "pretrain" / "_ray_train").mkdir()
    (run / "pretrain" / "_ray_train" / "x.png").write_bytes(b"\x89PNG")
    monkeypatch.chdir(tmp_path)
    report = build_report("run")
    assert "| eval/dexycb | dexycb | test | 7 | trunk.pt | 15.50 | 7.25 | 0.710 | 0.856 |" in report
    assert "`pretrain/summary.json`" in report and "| final_loss | 3.25 |" in report and "history" not in report
    assert "![eval/dexycb/pck_curve.png](eval/dexycb/pck_curve.png)" in report and "x.png" not in report
