"""Synthetic hand videos: kinematics and limits (hand_model, motion), rendering and occlusion (render, raster),
projection = labels, determinism and a decodable video (video), and the synth job on Ray."""
from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from builders import SMALL_SYNTH as SMALL
from builders import synthetic_video as _video
from conftest import load_job
from simhand_ray.config import SynthConfig
from simhand_ray.mining.labelers import sidecar_labels as lb
from simhand_ray.synthetic import hand_model as hm
from simhand_ray.synthetic import motion, raster, render
from simhand_ray.synthetic import video as V


# --- hand model -----------------------------------------------------------------------------------
def test_forward_kinematics_keeps_bone_lengths_and_frames_orthonormal():
    rng = np.random.default_rng(0)
    for _ in range(20):
        shape = hm.sample_shape(rng)
        joints, frames = hm.forward_kinematics(hm.sample_pose(rng), shape)
        for f in range(5):
            j = 1 + 4 * f
            np.testing.assert_allclose(joints[j], shape.base[f])
            seg = np.linalg.norm(np.diff(joints[j:j + 4], axis=0), axis=1)
            np.testing.assert_allclose(seg, shape.lengths[f], rtol=1e-12)
        for r in frames:
            np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
            assert np.linalg.det(r) == pytest.approx(1.0)


def test_flexion_bends_towards_the_palm_and_left_is_the_mirror():
    shape = hm.mean_shape()
    flat, _ = hm.forward_kinematics(np.zeros(hm.POSE_DIM), shape)
    fist, _ = hm.forward_kinematics(hm.TEMPLATES[hm.TEMPLATE_NAMES.index("fist")], shape)
    assert np.all(flat[[8, 12, 16, 20], 2] < 0.01)            # straight fingers stay near the palm plane
    assert np.all(fist[[6, 10, 14, 18], 2] > 0.02)            # flexed PIPs move to the palm side (+z)
    assert flat[4, 0] > flat[20, 0]                             # thumb radial (+x), little ulnar
    rot = hm.view_rotation(0.3, -0.2, 1.1)
    t = np.array([0.0, 0.0, 0.5])
    right, _ = hm.place_hand(flat, np.tile(np.eye(3), (21, 1, 1)), rot, t, left=False)
    left, _ = hm.place_hand(flat, np.tile(np.eye(3), (21, 1, 1)), rot, t, left=True)
    np.testing.assert_allclose(np.linalg.norm(right - t, axis=1), np.linalg.norm(left - t, axis=1))
    # the left hand is the mirror image: its triple product of (index, little, middle-tip) changes sign
    def chirality(p):
        return np.sign(np.linalg.det(np.stack([p[5] - p[0], p[17] - p[0], p[12] - p[0]])))
    assert chirality(right) == -chirality(left)


def test_sampled_poses_and_interpolated_tracks_respect_joint_limits():
    rng = np.random.default_rng(1)
    assert hm.within_limits(hm.TEMPLATES)
    poses = np.stack([hm.sample_pose(rng) for _ in range(500)])
    assert hm.within_limits(poses)
    assert np.all(poses.std(axis=0) > 0)                         # every joint actually varies
    pool = motion.sample_pool(rng, 8)
    track = motion.sample_track(rng, 60, pool, 0.5, (5, 12), (0.3, 0.7), (0.4, 0.6), (0.3, 0.5))
    for frame in range(60):
        pose, view, place = motion.track_at(track, frame)
        assert hm.within_limits(pose)
    assert track.keys[0] == 0 and track.keys[-1] == 59
    # smooth: consecutive frames differ little
    steps = [np.abs(motion.track_at(track, f + 1)[0] - motion.track_at(track, f)[0]).max() for f in range(59)]
    assert max(steps) < np.deg2rad(30)


# --- rendering and labels ------------------------------------------------------------------------
def test_labels_are_the_projection_of_the_3d_joints(tmp_path):
    res = _video(tmp_path, seed=3)
    table = pq.read_table(res.labels_uri)
    assert table.schema.remove_metadata().equals(lb.LABELS)
    kp = lb.column_array(table, "keypoints_2d", (21, 2)).astype(np.float64)
    xyz = lb.column_array(table, "joints_3d", (21, 3)).astype(np.float64)
    K = lb.column_array(table, "K", (3, 3)).astype(np.float64)
    proj = np.einsum("nij,nkj->nki", K, xyz)
    proj = proj[..., :2] / proj[..., 2:]
    assert np.abs(proj - kp).max() < 0.01                          # sub-pixel (float32 storage)
    assert np.all(xyz[..., 2] > 0.05)
    vis = lb.column_array(table, "visibility", (21,))
    assert set(np.unique(vis)) <= {0.0, 1.0} and vis.mean() > 0.3
    box = lb.column_array(table, "box", (4,))
    inside = (kp >= box[:, None, :2] - 1) & (kp <= box[:, None, 2:] + 1)
    assert inside.all(axis=2)[vis > 0].all()                       # visible joints lie in the hand's box
    assert set(table.column("handedness").to_pylist()) <= {"left", "right"}


def test_renderer_draws_hand_coloured_pixels_at_visible_joints():
    """Where a joint is labelled visible, the rendered pixel belongs to that hand, and occlusion is by depth."""
    shape = hm.mean_shape()
    K = V.intrinsics(200, 200, 60.0)
    look = render.sample_appearance(np.random.default_rng(0))
    joints, frames = hm.forward_kinematics(hm.TEMPLATES[hm.TEMPLATE_NAMES.index("open")], shape)
    rot = hm.view_rotation(0.0, 0.0, 0.0)                         # palm to the camera
    t = motion.hand_translation(rot, 0.5 * shape.base[2], np.array([0.5, 0.5, 0.45]), K, 200, 200)
    jc, fc = hm.place_hand(joints, frames, rot, t, left=False)
    prims = render.hand_primitives(jc, fc, shape, look, 0)
    light = raster.Light(look.light_dir, look.light_color, look.ambient, float(jc[:, 2].min()))
    drawn = raster.rasterize(prims, K, 200, 200, light, 2)
    vis = render.visibility(drawn, jc, fc, shape.radii, K, 0, 200, 200)
    assert vis.sum() >= 18                                        # open palm facing the camera: ~all visible
    # an occluder in front of the palm hides the joints behind it
    occ = raster.material(np.array([0.2, 0.4, 0.9]), owner=raster.OCCLUDER)
    prims.capsule(jc[0] - np.array([0.2, 0.0, 0.06]), jc[0] + np.array([0.2, 0.0, -0.06]), 0.03, 0.03, occ)
    drawn2 = raster.rasterize(prims, K, 200, 200, light, 2)
    vis2 = render.visibility(drawn2, jc, fc, shape.radii, K, 0, 200, 200)
    assert vis2[0] == 0 and vis2.sum() < vis.sum()
    _, owner = drawn2.sample(raster.project(jc[:1], K))
    assert owner[0] == raster.OCCLUDER


def test_same_seed_gives_byte_identical_labels(tmp_path):
    a = _video(tmp_path / "a", index=1, seed=7)
    b = _video(tmp_path / "b", index=1, seed=7)
    c = _video(tmp_path / "c", index=1, seed=8)
    bytes_a = Path(a.labels_uri).read_bytes()
    assert bytes_a == Path(b.labels_uri).read_bytes()
    assert bytes_a != Path(c.labels_uri).read_bytes()


def test_video_decodes_to_the_labelled_frames(tmp_path):
    res = _video(tmp_path, seed=2)
    with av.open(res.video_uri) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == SMALL["frames_per_video"] == res.frames
    assert frames[0].shape == (SMALL["height"], SMALL["width"], 3)
    table = pq.read_table(res.labels_uri)
    assert set(table.column("frame_index").to_pylist()) <= set(range(len(frames)))
    assert res.codec in ("libx264", "mpeg4")
    assert lb.sidecar_uri(res.video_uri) == res.labels_uri


def test_shared_pose_pool_recurs_across_videos():
    cfg = SynthConfig(**{**SMALL, "pool_prob": 1.0, "pool_size": 3})
    pool = V.pose_pool(cfg)
    plans = [V.plan_video(cfg, i, pool, []) for i in range(2)]
    keys = [p.hands[0][1].poses[0] for p in plans]
    dist = [np.abs(k - pool.poses).max(axis=1).min() for k in keys]
    assert max(dist) < np.deg2rad(15)                              # each key pose is a pool pose + noise


# --- the job on Ray --------------------------------------------------------------------------------
@pytest.mark.slow
def test_synth_job_writes_videos_labels_freihand_and_montage(ray_cluster, tmp_path):
    job = load_job("synth")
    args = ["--videos", "3", "--frames-per-video", "6", "--width", "160", "--height", "120", "--seed", "5",
            "--freihand", "--freihand-every", "3"]
    assert job.main(args + ["--output", str(tmp_path / "a")]) == 0
    assert job.main(args + ["--output", str(tmp_path / "b")]) == 0
    out = tmp_path / "a"
    record = json.loads((out / "_manifest.json").read_text())
    assert record["stage"] == "synth" and record["status"] == "complete"
    manifest = record["summary"]
    assert manifest["videos"] == 3 and manifest["frames"] == 18 and manifest["hands"] >= 18
    for i in range(3):
        name = f"synth_{i:05d}.labels.parquet"
        assert (out / "videos" / name).read_bytes() == (tmp_path / "b" / "videos" / name).read_bytes()
        assert (out / "videos" / f"synth_{i:05d}.mp4").stat().st_size > 0
    assert manifest["freihand"]["evaluation"] > 0 and manifest["freihand"]["training"] > 0
    assert (out / "freihand" / "evaluation_xyz.json").exists()
    montage = cv2.imread(str(out / "montage.png"))
    assert montage is not None and montage.shape[0] > 100
    # the same output with other settings is refused, naming what differs, and nothing is changed
    before = (out / "_manifest.json").read_bytes()
    assert job.main([*args[:-2], "--freihand-every", "2", "--output", str(out)]) == 2
    assert (out / "_manifest.json").read_bytes() == before
