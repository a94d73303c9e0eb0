"""The comparison of pre-training methods: 3D truth of mined hands, the mining probe, the linear probe, the
video split, and ``jobs/compare.py --preset tiny`` end to end through real Ray, killed and resumed.

Expected values are worked out here independently: plain loops over the sidecar label files, numpy's
least squares, the label stage's own crop function.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import REPO, load_job
from simhand_ray import storage
from simhand_ray.compare import linear_probe as lp
from simhand_ray.compare import truth as tr
from simhand_ray.compare.splits import SETS, split_videos


def _rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


# --- pure maths -----------------------------------------------------------------------------------------------
def test_normalized_poses_are_wrist_relative_right_hands_with_unit_palm():
    rng = np.random.default_rng(0)
    joints = rng.normal(size=(3, 21, 3)) + [0, 0, 0.6]
    left = np.array([False, True, False])
    out = tr.normalized_poses(joints, left)
    for i in range(3):
        rel = joints[i] - joints[i][0]
        if left[i]:
            rel = rel * [-1, 1, 1]
        rel = rel / np.sqrt(((rel[9]) ** 2).sum())
        np.testing.assert_allclose(out[i], rel, atol=1e-12)
    assert np.allclose(np.linalg.norm(out[:, 9], axis=-1), 1)
    # a hand and its mirror image, the mirror called left, are the same right-hand pose
    mirrored = joints[:1] * [-1, 1, 1]
    np.testing.assert_allclose(tr.normalized_poses(mirrored, [True]), tr.normalized_poses(joints[:1], [False]),
                               atol=1e-12)
    a, b = out[:1], out[2:]
    expected = np.mean([np.sqrt(((a[0, j] - b[0, j]) ** 2).sum()) for j in range(21)])
    assert tr.pose_distances(a, b)[0] == pytest.approx(expected)


def test_rotation_alignment_undoes_a_rotation_about_the_wrist():
    rng = np.random.default_rng(1)
    a = tr.normalized_poses(rng.normal(size=(4, 21, 3)), np.zeros(4, bool))
    rots = np.stack([_rotation(rng) for _ in range(4)])
    b = np.einsum("nij,nkj->nki", rots, a)
    assert (tr.pose_distances(a, b) > 0.1).all()
    np.testing.assert_allclose(tr.aligned_distances(a, b), 0, atol=1e-9)
    np.testing.assert_allclose(np.einsum("nij,nkj->nki", tr.best_rotations(a, b), b), a, atol=1e-9)
    # never a reflection, and never worse than no rotation at all
    other = tr.normalized_poses(rng.normal(size=(4, 21, 3)), np.zeros(4, bool))
    assert np.allclose(np.linalg.det(tr.best_rotations(a, other)), 1)
    assert (tr.aligned_distances(a, other) <= tr.pose_distances(a, other) + 1e-12).all()


def test_frame_keypoints_invert_the_label_stage_crop():
    from simhand_ray.config import CropConfig
    from simhand_ray.mining.crops import crop_hand
    from simhand_ray.mining.labelers.base import DetectedHand

    rng = np.random.default_rng(2)
    frame = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    for side, box in (("left", (200, 30, 300, 150)), ("right", (10, 100, 90, 235))):
        kp = rng.uniform(box[:2], box[2:], (21, 2)).astype(np.float32)
        crop = crop_hand(frame, DetectedHand(box=np.array(box, np.float32), det_score=1.0, keypoints=kp,
                                             keypoint_scores=np.ones(21, np.float32), handedness=side,
                                             handedness_score=1.0), CropConfig())
        back = tr.frame_keypoints(crop.keypoints[None], crop.crop_box[None], np.array([side == "left"]))
        np.testing.assert_allclose(back[0], kp, atol=1e-3)


def test_ridge_probe_equals_numpy_least_squares():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 12)) * rng.uniform(0.1, 5, 12) + rng.normal(size=12)
    y = rng.normal(size=(60, 63))
    lam = 7.5
    model = lp.fit_ridge(x, y, lam)
    # the same problem as one least-squares system: [Z 1; sqrt(lam) I 0] [w; b] = [y; 0]
    z = (x - x.mean(0)) / x.std(0)
    a = np.block([[z, np.ones((60, 1))], [np.sqrt(lam) * np.eye(12), np.zeros((12, 1))]])
    sol = np.linalg.lstsq(a, np.vstack([y, np.zeros((12, 63))]), rcond=None)[0]
    np.testing.assert_allclose(model.weights, sol[:12], atol=1e-9)
    np.testing.assert_allclose(model.bias, sol[12], atol=1e-9)
    np.testing.assert_allclose(model.predict(x), z @ sol[:12] + sol[12], atol=1e-9)
    # features that determine the pose are probed almost perfectly; noise is not
    poses = tr.normalized_poses(rng.normal(size=(80, 21, 3)), np.zeros(80, bool))
    feats = poses.reshape(80, -1) @ rng.normal(size=(63, 100))
    groups = np.repeat(np.arange(8), 10)
    good = lp.linear_probe(feats[:60], poses[:60], groups[:60], feats[60:], poses[60:])
    noise = lp.linear_probe(rng.normal(size=(60, 100)), poses[:60], groups[:60], rng.normal(size=(20, 100)),
                            poses[60:])
    assert good["probe_error"] < 0.5 * noise["probe_error"]


def test_video_split_is_disjoint_complete_and_seeded():
    videos = [f"v{i:02d}" for i in range(20)]
    s = split_videos(videos, (0.5, 0.2, 0.15), seed=3)
    assert set(s) == set(videos) and set(s.values()) == set(SETS)
    counts = {k: sum(v == k for v in s.values()) for k in SETS}
    assert counts == {"pretrain": 10, "probe": 4, "finetune": 3, "test": 3}
    assert split_videos(reversed(videos), (0.5, 0.2, 0.15), seed=3) == s
    assert split_videos(videos, (0.5, 0.2, 0.15), seed=4) != s
    small = split_videos(videos[:4], (0.5, 0.2, 0.15), seed=0)
    assert sorted(small.values()) == sorted(SETS)


# --- a tiny synthetic mine output ----------------------------------------------------------------------------
TINY_SYNTH = ["--videos", "8", "--frames-per-video", "12", "--width", "240", "--height", "180", "--pool-size", "4",
              "--pool-prob", "0.9", "--two-hands-prob", "0", "--montage-videos", "0"]


def _job(args: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def tiny_mine(tmp_path_factory, ray_cluster):
    """8 synthetic videos (4 shared key poses) mined with the ground-truth labeler on the session's Ray."""
    import ray

    d = tmp_path_factory.mktemp("compare")
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    for args in (["jobs/synth.py", "--output", str(d / "synth"), *TINY_SYNTH],
                 ["jobs/mine.py", "--input", str(d / "synth" / "videos"), "--output", str(d / "mine"),
                  "--every-n", "2", "--labeler", "groundtruth"]):
        r = _job(args, env)
        assert r.returncode == 0, r.stderr[-3000:]
    return {"dir": d, "mine": d / "mine", "env": env}


def _labels_by_hand(mine) -> dict:
    """{hand_id: (normalised 3D pose, video_id)} read by plain loops: the sidecar row of the hand's frame and
    index (the ground-truth labeler keeps the label's hand order; one hand per video here)."""
    import pandas as pd

    hands = pd.read_parquet(os.path.join(mine, "hands"), columns=["hand_id", "video_id", "uri", "frame_index",
                                                                  "hand_index"])
    out = {}
    for h in hands.itertuples():
        labels = pd.read_parquet(h.uri.rsplit(".", 1)[0] + ".labels.parquet")
        row = labels[(labels.frame_index == h.frame_index) & (labels.hand_index == h.hand_index)].iloc[0]
        j = np.asarray(row.joints_3d, np.float64).reshape(21, 3)
        rel = j - j[0]
        if row.handedness == "left":
            rel[:, 0] = -rel[:, 0]
        out[h.hand_id] = (rel / np.linalg.norm(rel[9]), h.video_id)
    return out


def _dist(a, b) -> float:
    return float(np.mean([np.linalg.norm(a[j] - b[j]) for j in range(21)]))


@pytest.mark.slow
def test_mining_probe_against_an_independent_recomputation(tiny_mine, tmp_path):
    out = tmp_path / "mining"
    assert load_job("evaluate").main(["--probe", "mining", "--mine", str(tiny_mine["mine"]), "--output", str(out),
                                      "--seed", "5"]) == 0
    figures = json.loads((out / "mining.json").read_text())
    judged = pq.read_table(out / "mining_pairs.parquet").to_pylist()
    truth = _labels_by_hand(tiny_mine["mine"])
    pairs = pq.read_table(os.path.join(tiny_mine["mine"], "pairs")).select(["anchor_id", "positive_id"]).to_pylist()
    assert figures["pairs"] == len(pairs) == len(judged) == figures["pairs_judged"]
    assert figures["hands"]["matched"] == len(truth)
    mined, random, oracle = [], [], []
    for r in judged:
        pose, video = truth[r["anchor_id"]]
        mined.append(_dist(pose, truth[r["positive_id"]][0]))
        assert truth[r["random_id"]][1] != video
        random.append(_dist(pose, truth[r["random_id"]][0]))
        others = [(_dist(pose, p), h) for h, (p, v) in truth.items() if v != video]
        best = min(others)[0]
        assert _dist(pose, truth[r["oracle_id"]][0]) == pytest.approx(best, abs=1e-5)   # the nearest by 3D pose
        oracle.append(best)
        assert r["mined"] == pytest.approx(mined[-1], abs=1e-5)
    assert figures["mined"] == pytest.approx(np.mean(mined), abs=1e-5)
    assert figures["random"] == pytest.approx(np.mean(random), abs=1e-5)
    assert figures["oracle"] == pytest.approx(np.mean(oracle), abs=1e-5)
    eff = (np.mean(random) - np.mean(mined)) / (np.mean(random) - np.mean(oracle))
    assert figures["efficiency"] == pytest.approx(eff, abs=1e-5)
    assert figures["oracle"] <= figures["mined"] < figures["random"]
    assert (out / "mining.png").read_bytes()[:4] == b"\x89PNG"
    # the random hands are seeded
    again = tmp_path / "again"
    load_job("evaluate").main(["--probe", "mining", "--mine", str(tiny_mine["mine"]), "--output", str(again),
                               "--seed", "5"])
    assert json.loads((again / "mining.json").read_text())["random"] == figures["random"]


@pytest.mark.slow
def test_compare_tiny_end_to_end_killed_and_resumed(tiny_mine):
    """Every method, one seed, through Ray Train on the session's Ray; killed after its first finished run and
    run again: the finished run is not repeated, and the outputs hold one record per method."""
    out = tiny_mine["dir"] / "compare"
    cmd = [sys.executable, "jobs/compare.py", "--mine", str(tiny_mine["mine"]), "--output", str(out), "--preset", "tiny"]
    first = out / "runs" / "pretrain" / "simclr-s0" / "_manifest.json"
    proc = subprocess.Popen(cmd, cwd=REPO, env=tiny_mine["env"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if first.exists() and json.loads(first.read_text()).get("status") == "complete":
            break
        time.sleep(0.5)
    assert proc.poll() is None, "the job ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_at_kill = json.loads(first.read_text())["finished"]
    assert not (out / "results.json").exists()

    # run again, two runs at a time (how runs share the cluster is not a setting of the comparison)
    r = _job(cmd[1:] + ["--parallel-runs", "2", "--cpus-per-run", "0.5"], tiny_mine["env"], timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "pretrain simclr s0: loss" in r.stderr and "(done before)" in r.stderr and "2 at a time" in r.stderr
    assert json.loads(first.read_text())["finished"] == finished_at_kill       # not run again
    spans = sorted((m["created"], m["finished"]) for m in (json.loads(p.read_text()) for p in
                   (out / "runs").glob("*/*/_manifest.json")) if m["created"] > finished_at_kill)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), spans          # two runs side by side
    results = json.loads((out / "results.json").read_text())["records"]
    assert [x["method"] for x in results] == ["random", "simclr", "peclr", "simhand", "simhand-w", "oracle"]
    for x in results:
        assert x["seed"] == 0 and x["label_fraction"] == 1.0
        assert np.isfinite(x["probe_error"]) and np.isfinite(x["mpjpe"]) and 0 <= x["auc"] <= 1
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "| oracle | 1 | 1 |" in report and "efficiency" in report

    # no leak: every video in one set; pre-training pairs, probe and fine-tuning data hold only their own videos
    splits = json.loads((out / "data" / "splits.json").read_text())["videos"]
    truth = _labels_by_hand(tiny_mine["mine"])
    video_of = {h: v for h, (_, v) in truth.items()}
    pretrain = {v for v, s in splits.items() if s == "pretrain"}
    for name in ("mined", "oracle"):
        pairs = pq.read_table(out / "data" / name / "pairs", columns=["anchor_id", "positive_id"]).to_pylist()
        assert pairs and all(video_of[p["anchor_id"]] in pretrain and video_of[p["positive_id"]] in pretrain
                             and video_of[p["anchor_id"]] != video_of[p["positive_id"]] for p in pairs)
    vid = lambda folder: set(pq.read_table(folder, columns=["video_id"]).column("video_id").to_pylist())  # noqa: E731
    assert vid(out / "data" / "probe" / "hands") == {v for v, s in splits.items() if s in ("probe", "test")}
    for x in results:
        assert x["test_hands"] == x["eval_samples"]     # the probe and the fine-tuned model score the same hands
    assert results[0]["test_hands"] == sum(splits[v] == "test" for v in video_of.values())
    n_train = len(json.loads((out / "data" / "freihand" / "training_xyz.json").read_text()))
    assert n_train == sum(splits[v] == "finetune" for v in video_of.values())
    # the FreiHAND export: its K projects its joints onto the mined crop's keypoints (FreiHAND's pixel centres)
    from simhand_ray.evaluate.datasets import open_dataset

    crops = {h["crop_jpeg"]: np.reshape(h["keypoints"], (21, 2))
             for h in pq.read_table(tiny_mine["mine"] / "hands", columns=["crop_jpeg", "keypoints"]).to_pylist()}
    for split in (True, False):
        for rec in open_dataset("freihand", str(out / "data" / "freihand"), "", 0, train=split).records():
            with open(rec.image_uri, "rb") as f:
                np.testing.assert_allclose(rec.joints_2d + 0.5, crops[f.read()], atol=1e-3)

    # the mined positive: the nearest neighbour in a graph of the pre-training videos' hands alone
    graph = {r["hand_id"]: r["neighbor_ids"] for r in pq.read_table(out / "data" / "mined" / "graph").to_pylist()}
    assert all(video_of[h] in pretrain and {video_of[n] for n in ns} <= pretrain for h, ns in graph.items())
    for p in pq.read_table(out / "data" / "mined" / "pairs", columns=["anchor_id", "positive_id"]).to_pylist():
        assert p["positive_id"] == graph[p["anchor_id"]][0]
    # the oracle's positive: the other-video pre-training hand nearest by true 3D pose
    for row in pq.read_table(out / "data" / "oracle" / "pairs", columns=["anchor_id", "positive_id"]).to_pylist():
        pose, video = truth[row["anchor_id"]]
        best = min(_dist(pose, p) for h, (p, v) in truth.items() if v in pretrain and v != video)
        assert _dist(pose, truth[row["positive_id"]][0]) == pytest.approx(best, abs=1e-5)

    # the same settings again: nothing is re-run; other settings are refused, naming what differs
    again = _job(cmd[1:], tiny_mine["env"], timeout=300)
    assert again.returncode == 0 and again.stderr.count("(done before)") == 11
    refused = _job(cmd[1:] + ["--steps", "4"], tiny_mine["env"], timeout=120)
    assert refused.returncode == 2 and "steps: 3 -> 4" in refused.stderr


def test_compare_options_are_checked_before_anything_runs(tmp_path):
    job = load_job("compare")
    for bad in (["--label-fractions", "0"], ["--method", "moco"], ["--pretrain-videos", "0.6", "--probe-videos", "0.4"],
                ["--seeds"]):
        with pytest.raises(SystemExit) as e:
            job.main(["--mine", str(tmp_path), "--output", str(tmp_path / "o"), *bad])
        assert e.value.code == 2
    assert not (tmp_path / "o").exists()
    a = job.build_parser().parse_args(["--mine", "m", "--output", "o", "--preset", "tiny", "--steps", "7"])
    cfg = job.compare_config(a)
    assert cfg.steps == 7 and cfg.image_size == 32 and cfg.seeds == (0,)


@pytest.mark.slow
def test_gpu_check_runs_from_a_prepared_folder(tiny_mine, tmp_path):
    """benchmarks/gpu/compare_device.py as the GPU machine runs it, at toy size: data prepared here, then the job
    in its own local Ray from a copy of that folder alone (the mine output's videos and hands stay behind);
    only figures, report, plot and log come back, none of them large."""
    kit = tmp_path / "kit"
    script = os.path.join(REPO, "benchmarks", "gpu", "compare_device.py")
    r = _job([script, "--prepare", str(kit), "--mine", str(tiny_mine["mine"]), "--tiny"], tiny_mine["env"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (kit / "mine" / "hands").exists()
    env = {k: v for k, v in tiny_mine["env"].items() if k != "RAY_ADDRESS"}
    out = tmp_path / "out"
    r = _job([script, "--tiny", "--data", str(kit), "--out", str(out), "--method", "random", "--method", "simclr"],
             env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    fig = json.loads((out / "figures.json").read_text())
    assert fig["status"] == "complete" and fig["card"] == "CPU" and fig["preset"] == "tiny"
    assert [x["method"] for x in fig["records"]] == ["random", "simclr"]
    assert {p.name for p in out.iterdir()} == {"figures.json", "compare.log", "report.md", "results.json",
                                               "compare.png"}
    assert max(p.stat().st_size for p in out.iterdir()) < 5 * 2 ** 20
    # without a prepared folder: one line saying what is missing, and the figures say it too
    r = _job([script, "--tiny", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o2")], env)
    assert r.returncode == 2 and "--prepare" in r.stderr
    assert json.loads((tmp_path / "o2" / "figures.json").read_text())["status"] == "failed"
