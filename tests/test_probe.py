"""Pose-retrieval probe: the maths on a constructed example worked out by hand, brute-force references,
and one small run of the probe job through Ray (marked slow)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import load_job
from simhand_ray import schema
from simhand_ray.evaluate import probe

R = np.sqrt(21 / 20)          # radius of the 20 non-wrist joints so that the RMS radius over 21 joints is 1


def base_pose() -> np.ndarray:
    """A canonical pose: wrist at 0, the other 20 joints on a circle of radius R (RMS radius 1)."""
    ang = np.linspace(0.2, 2.8, 20)
    return np.vstack([[0.0, 0.0], R * np.c_[np.cos(ang), np.sin(ang)]])


def rotated(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return base_pose() @ rot.T


def dist_for_angle(deg: float) -> float:
    """Pose distance between two rotations of the base pose deg apart: 20 joints move a chord 2 R sin(a/2)."""
    return 20 / 21 * 2 * R * np.sin(np.deg2rad(deg) / 2)


#: five hands: (video, pose angle); pixels = canonical * scale + offset (the probe must undo both)
HANDS = [("a", 0.0), ("a", 10.0), ("b", 90.0), ("b", 5.0), ("c", 95.0)]


@pytest.fixture
def example():
    rng = np.random.default_rng(0)
    kps = np.stack([rotated(a) * rng.uniform(20, 60) + rng.uniform(0, 200, 2) for _, a in HANDS])
    videos = np.array([v for v, _ in HANDS])
    # embeddings built so cosine retrieval picks 0->2, 1->4, 2->0, 3->4, 4->1 (worked out in the test)
    target = {0: 2, 1: 4, 2: 0, 3: 4, 4: 1}
    emb = np.eye(5)
    for i, t in target.items():
        emb[i, t] += 0.9
    return kps, videos, emb


def test_canonical_poses_undo_translation_and_scale():
    kp = rotated(30.0)
    out = probe.canonical_poses(np.stack([kp, kp * 3.5 + [100, -7]]))
    np.testing.assert_allclose(out[0], kp, atol=1e-12)
    np.testing.assert_allclose(out[1], kp, atol=1e-12)
    np.testing.assert_allclose(np.sqrt((out ** 2).sum(-1).mean(-1)), 1.0)


def test_oracle_row_is_the_minimum_on_a_constructed_example(example):
    kps, videos, emb = example
    poses = probe.canonical_poses(kps)
    # oracle: every hand has another-video hand 5 degrees away (0->3, 1->3, 2->4, 3->0|1, 4->2)
    oracle = probe.nearest_by_pose(poses, videos)
    assert oracle[0] == 3 and oracle[1] == 3 and oracle[2] == 4 and oracle[3] in (0, 1) and oracle[4] == 2
    d_oracle = probe.retrieval_distances(poses, oracle)
    np.testing.assert_allclose(d_oracle, dist_for_angle(5.0))
    # cosine: e0 = x0 + .9 x2 and e2 = x2 + .9 x0 have cosine 1.8/1.81; e3 = x3 + .9 x4 is closer to e4
    # (0.9/1.81) than to e1 (0.81/1.81); hands of the query's own video are never candidates
    nn = probe.nearest_by_cosine(emb, videos)
    np.testing.assert_array_equal(nn, [2, 4, 0, 4, 1])
    d_emb = probe.retrieval_distances(poses, nn)
    np.testing.assert_allclose(d_emb, [dist_for_angle(a) for a in (90, 85, 90, 90, 85)])
    s_oracle, s_emb = probe.summarize(d_oracle), probe.summarize(d_emb)
    assert s_oracle["mean"] == pytest.approx(dist_for_angle(5.0))
    assert s_emb["mean"] == pytest.approx((3 * dist_for_angle(90) + 2 * dist_for_angle(85)) / 5)
    chance = probe.summarize(probe.retrieval_distances(poses, probe.random_other_video(videos, np.random.default_rng(1))))
    assert s_oracle["mean"] < s_emb["mean"] and s_oracle["mean"] < chance["mean"]


def test_nearest_by_pose_is_the_brute_force_minimum_and_never_the_same_video():
    rng = np.random.default_rng(3)
    poses = probe.canonical_poses(rng.normal(size=(40, 21, 2)))
    videos = rng.integers(0, 6, 40).astype(str)
    got = probe.nearest_by_pose(poses, videos, block=7)
    for i in range(40):
        cand = [k for k in range(40) if videos[k] != videos[i]]
        d = [probe.pose_distances(poses[i:i + 1], poses[k:k + 1])[0] for k in cand]
        assert probe.pose_distances(poses[i:i + 1], poses[got[i]:got[i] + 1])[0] == pytest.approx(min(d), rel=1e-5)
        assert videos[got[i]] != videos[i]
    emb = rng.normal(size=(40, 8))
    nn = probe.nearest_by_cosine(emb, videos, block=5)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for i in range(40):
        cand = [k for k in range(40) if videos[k] != videos[i]]
        assert nn[i] == cand[int(np.argmax([unit[i] @ unit[k] for k in cand]))]


def test_no_other_video_gives_no_neighbour():
    videos = np.array(["v"] * 4)
    poses = probe.canonical_poses(np.random.default_rng(0).normal(size=(4, 21, 2)))
    assert (probe.nearest_by_pose(poses, videos) == -1).all()
    assert (probe.nearest_by_cosine(np.eye(4), videos) == -1).all()
    assert (probe.random_other_video(videos, np.random.default_rng(0)) == -1).all()
    assert probe.summarize(probe.retrieval_distances(poses, np.full(4, -1)))["queries"] == 0
    mixed = np.array(["v", "v", "w"])
    r = probe.random_other_video(mixed, np.random.default_rng(0))
    assert r[0] == 2 and r[1] == 2 and r[2] in (0, 1)


def hands_table(n_videos: int = 3, per_video: int = 4, seed: int = 0) -> pa.Table:
    """A small ``schema.HANDS`` table whose crops show each hand's skeleton (224x224 JPEG)."""
    rng = np.random.default_rng(seed)
    rows = {f.name: [] for f in schema.HANDS}
    for v in range(n_videos):
        for i in range(per_video):
            kp = rotated(rng.uniform(-60, 60)) * 50 + 112
            img = np.zeros((schema.CROP_SIZE, schema.CROP_SIZE, 3), np.uint8)
            for a, b in schema.BONES:
                cv2.line(img, tuple(int(x) for x in kp[a]), tuple(int(x) for x in kp[b]), (255, 200, 150), 4)
            ok, jpg = cv2.imencode(".jpg", img)
            assert ok
            vals = {"hand_id": f"test:v{v}:{i:08d}:0", "source": "test", "video_id": f"v{v}", "uri": f"v{v}.mp4",
                    "frame_index": i, "hand_index": 0, "image_width": 640, "image_height": 480,
                    "box": [0.0, 0.0, 100.0, 100.0], "crop_box": [0.0, 0.0, 130.0, 130.0], "handedness": "right",
                    "handedness_score": 1.0, "det_score": 1.0, "keypoints": kp.astype(np.float32).reshape(-1).tolist(),
                    "keypoint_scores": [1.0] * schema.NUM_JOINTS, "crop_jpeg": jpg.tobytes()}
            for k, val in vals.items():
                rows[k].append(val)
    return pa.Table.from_pydict(rows, schema=schema.HANDS)


@pytest.mark.slow
def test_retrieval_probe_job_end_to_end(ray_cluster, tmp_path, capsys):
    import torch
    import torchvision

    hands = tmp_path / "hands"
    hands.mkdir()
    pq.write_table(hands_table(), hands / "part-00000.parquet")
    torch.manual_seed(1)
    sd = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    torch.save(sd, tmp_path / "trunk.pt")
    out = tmp_path / "probe"
    assert load_job("evaluate").main(["--probe", "retrieval", "--hands", str(hands), "--trunk", f"mine={tmp_path / 'trunk.pt'}",
                 "--output", str(out), "--input-size", "64", "--max-hands", "10", "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "pose oracle" in printed and "mine" in printed
    result = json.loads((out / "probe_retrieval.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert result["hands"] == 10 and set(rows) == {"mine", "random-init resnet18", "pose oracle",
                                                   "chance (random other video)"}
    assert all(r["queries"] == 10 for r in rows.values())
    assert all(rows["pose oracle"]["mean"] <= r["mean"] + 1e-9 for r in rows.values())
    assert (out / "probe_retrieval.png").stat().st_size > 1000
    assert (out / "probe_retrieval.csv").read_text().startswith("method,")
    assert load_job("evaluate").main(["--report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "## Pose-retrieval probe" in report and "| pose oracle | 10 |" in report
    assert "![probe_retrieval.png](probe_retrieval.png)" in report
