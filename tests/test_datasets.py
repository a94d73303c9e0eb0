"""Dataset readers on small fixtures written here in each dataset's published layout (FreiHAND v2,
dex-ycb-toolkit, assemblyhands-toolkit), plus the crop/mirror preprocessing the readers feed."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from simhand_ray.evaluate import datasets, preprocess
from simhand_ray.evaluate.datasets import (DEXYCB_SERIALS, DEXYCB_SUBJECTS, AssemblyHands, DexYCB, FreiHAND,
                                           project)
from builders import draw, hand_3d, write_freihand


def test_freihand_versions_share_annotations(tmp_path):
    truth = write_freihand(tmp_path, n_train=3, versions=2, n_eval=2)
    recs = FreiHAND(str(tmp_path), "training").records()
    assert len(recs) == 6
    xyz, K = truth["training"]
    for idx, r in enumerate(recs):
        assert r.image_uri.endswith(f"training/rgb/{idx:08d}.jpg")
        np.testing.assert_allclose(r.joints_3d, xyz[idx % 3] * 1000.0)          # metres -> mm
        np.testing.assert_allclose(r.joints_2d, project(xyz[idx % 3], K[idx % 3]))
        assert r.side == "right"
    ev = FreiHAND(str(tmp_path), "evaluation")
    assert len(ev) == 2
    sample = next(iter(ev))
    assert sample.image.shape == (64, 64, 3) and sample.image.dtype == np.uint8
    assert len(FreiHAND(str(tmp_path), "training", versions=(1,)).records()) == 3
    assert len(datasets.open_dataset("freihand", str(tmp_path), train=False).records()) == 2


# --- DexYCB ----------------------------------------------------------------------------------------

def write_dexycb(root: Path, subjects: dict[int, list[tuple[str, str, int]]], seed: int = 0) -> dict:
    """dex-ycb-toolkit layout. ``subjects``: subject index -> [(sequence name, mano side, frames)].
    Frame 1 of every camera of a left-hand sequence is left unannotated (joint_3d all -1)."""
    rng = np.random.default_rng(seed)
    intr = {}
    (root / "calibration" / "intrinsics").mkdir(parents=True)
    for k, s in enumerate(DEXYCB_SERIALS):
        c = {"fx": 610.0 + k, "fy": 611.0 + k, "ppx": 320.0 + k, "ppy": 240.0 - k}
        intr[s] = np.array([[c["fx"], 0, c["ppx"]], [0, c["fy"], c["ppy"]], [0, 0, 1.0]])
        (root / "calibration" / "intrinsics" / f"{s}_640x480.yml").write_text(
            yaml.safe_dump({"color": c, "depth": c}))
    truth = {}
    for si, seqs in subjects.items():
        for seq, side, frames in seqs:
            d = root / DEXYCB_SUBJECTS[si] / seq
            d.mkdir(parents=True)
            meta = {"serials": list(DEXYCB_SERIALS), "num_frames": frames, "ycb_ids": [1, 5], "ycb_grasp_ind": 0,
                    "mano_sides": [side], "mano_calib": [f"mano_{si}"], "pcd": "pcd.ply"}
            (d / "meta.yml").write_text(yaml.safe_dump(meta))
            for s in DEXYCB_SERIALS:
                (d / s).mkdir()
                for f in range(frames):
                    j3d = hand_3d(rng, root=(0.0, 0.0, 0.7))
                    j2d = project(j3d, intr[s])
                    if side == "left" and f == 1:
                        j3d, j2d = -np.ones((21, 3)), -np.ones((21, 2))
                    else:
                        truth[f"{DEXYCB_SUBJECTS[si]}/{seq}/{s}/{f:06d}"] = (j3d, j2d, intr[s])
                    np.savez_compressed(d / s / f"labels_{f:06d}.npz", seg=np.zeros((480, 640), np.uint8),
                                        pose_y=np.zeros((2, 3, 4), np.float32), pose_m=np.zeros((1, 51), np.float32),
                                        joint_3d=j3d[None].astype(np.float32), joint_2d=j2d[None].astype(np.float32))
                    cv2.imwrite(str(d / s / f"color_{f:06d}.jpg"), draw(j2d, 640, 480))
    return truth


def test_dexycb_s1_split_and_labels(tmp_path):
    # s1: train subjects 0-5 + 9, val 6, test 7-8 (all cameras, all sequences)
    truth = write_dexycb(tmp_path, {
        7: [("20201002_105058", "right", 2)],
        8: [("20201015_150000", "left", 2)],
        0: [("20200709_141754", "right", 1)],
    })
    test = DexYCB(str(tmp_path), "s1", "test").records()
    # 8 cameras x (2 frames + 1 annotated frame of the left sequence)
    assert len(test) == 8 * 3
    assert {r.sample_id.split(":")[1].split("/")[0] for r in test} == {DEXYCB_SUBJECTS[7], DEXYCB_SUBJECTS[8]}
    for r in test:
        j3d, j2d, K = truth[r.sample_id.split(":", 1)[1]]
        np.testing.assert_allclose(r.joints_3d, j3d * 1000.0, rtol=1e-6)
        np.testing.assert_allclose(r.joints_2d, j2d, atol=1e-3)
        np.testing.assert_allclose(r.K, K)
        assert r.side == ("left" if DEXYCB_SUBJECTS[8] in r.sample_id else "right")
    assert not any(r.sample_id.endswith(f"{DEXYCB_SUBJECTS[8]}/20201015_150000/{s}/000001")
                   for r in test for s in DEXYCB_SERIALS)
    train = DexYCB(str(tmp_path), "s1", "train").records()     # subject 0 present; 1-5 and 9 absent: skipped
    assert len(train) == 8 and all(DEXYCB_SUBJECTS[0] in r.sample_id for r in train)
    assert DexYCB(str(tmp_path), "s1", "val").records() == []
    sample = DexYCB(str(tmp_path), "s1", "test").load(test[0])
    assert sample.image.shape == (480, 640, 3)
    with pytest.raises(ValueError, match="100"):
        DexYCB(str(tmp_path), "s0", "test").records()        # s0 picks sequences by index: needs all 100


# --- AssemblyHands ---------------------------------------------------------------------------------

def write_assemblyhands(root: Path, split: str = "test", seed: int = 0) -> dict:
    """assemblyhands-toolkit layout (v1-1, ego): COCO-style data json, calib json (intrinsics per camera,
    extrinsics per frame and camera, world -> camera, mm), joint_3d json (42 world joints, InterHand order:
    right 0-20 then left 21-41, each finger tip first, wrist last)."""
    rng = np.random.default_rng(seed)
    seq = "nusar-2021_action_both_9081-c11b_9081_user_id_2021-02-12_161433"
    cams = ["HMC_21176875_mono10bit", "HMC_21179183_mono10bit"]      # calibration keys and image folders
    K = {c: [[300.0 + i, 0, 320.0], [0, 300.0 + i, 240.0], [0, 0, 1]] for i, c in enumerate(cams)}
    images, anns, calib_ext, joints3d, truth = [], [], {}, {}, {}

    def to_interhand(spec: np.ndarray) -> np.ndarray:
        """SPEC order -> InterHand order (written out independently of the reader's table)."""
        ih = np.empty_like(spec)
        ih[20] = spec[0]
        for f in range(5):                  # thumb, index, middle, ring, little; k = 0 base .. 3 tip
            for k in range(4):
                ih[4 * f + 3 - k] = spec[1 + 4 * f + k]
        return ih

    def to_spec(ih: np.ndarray) -> np.ndarray:
        spec = np.empty_like(ih)
        spec[0] = ih[20]
        for f in range(5):
            for k in range(4):
                spec[1 + 4 * f + k] = ih[4 * f + 3 - k]
        return spec
    for frame in (554, 555, 556):
        key = f"{frame:06d}"
        right = hand_3d(rng, root=(0.02, 0.0, 0.45), scale=1000.0)           # camera frame of camera 0, mm
        left = hand_3d(rng, root=(-0.05, 0.0, 0.45), scale=1000.0) * np.array([-1, 1, 1])
        calib_ext[key] = {}
        for ci, c in enumerate(cams):
            # camera ci sees the scene from a slightly different rotation: cam = R_c world + t_c
            R_c = np.linalg.qr(np.eye(3) + 0.05 * ci * rng.normal(size=(3, 3)))[0]
            R_c *= np.sign(np.diag(R_c))[None, :]
            t_c = np.array([0.0, 0.0, 10.0 * ci])
            calib_ext[key][c] = np.c_[R_c, t_c].tolist()
        # world coords: the hands as camera 0 sees them, mapped back through camera 0's extrinsics
        R0, t0 = np.array(calib_ext[key][cams[0]])[:, :3], np.array(calib_ext[key][cams[0]])[:, 3]
        world = np.vstack([to_interhand(right), to_interhand(left)])
        world = (world - t0) @ R0                                  # inverse of cam = R0 world + t0
        valid = np.ones(42)
        if frame == 555:
            valid[21:21 + 12] = 0                                  # left hand: 9 valid joints -> skipped
        if frame == 556:
            valid[[0, 5]] = 0                                      # right thumb tip + index dip invalid
        joints3d[key] = {"world_coord": world.tolist(), "joint_valid": valid.tolist()}
        for ci, c in enumerate(cams):
            image_id = len(images)
            fname = f"ego_images_rectified/{split}/{seq}/{c}/{key}.jpg"
            images.append({"id": image_id, "file_name": fname, "width": 640, "height": 480, "seq_name": seq,
                           "camera": c.removesuffix("_mono10bit"), "frame_idx": frame})
            Rt = np.array(calib_ext[key][c])
            cam_r, cam_l = [(w @ Rt[:, :3].T + Rt[:, 3]) for w in (world[:21], world[21:])]
            boxes = {"right": [10, 10, 200, 200], "left": None if (frame == 554 and ci == 1) else [300, 10, 500, 200]}
            anns.append({"id": image_id, "image_id": image_id, "bbox": boxes, "joint_valid": valid.tolist(),
                         "hand_type": "interacting", "category_id": 1})
            p = root / "images" / fname
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), cv2.cvtColor(draw(project(cam_r, np.array(K[c])), 640, 480), cv2.COLOR_BGR2GRAY))
            truth[(fname, "right")] = (to_spec(cam_r), to_spec(valid[:21]), np.array(K[c]))
            truth[(fname, "left")] = (to_spec(cam_l), to_spec(valid[21:]), np.array(K[c]))
    ann_dir = root / "annotations" / split
    ann_dir.mkdir(parents=True)
    (ann_dir / f"assemblyhands_{split}_ego_data_v1-1.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "hand"}]}))
    (ann_dir / f"assemblyhands_{split}_ego_calib_v1-1.json").write_text(json.dumps(
        {"calibration": {seq: {"intrinsics": K, "extrinsics": calib_ext}}}))
    (ann_dir / f"assemblyhands_{split}_joint_3d_v1-1.json").write_text(json.dumps({"annotations": {seq: joints3d}}))
    # the toolkit's skip list: the right hand of frame 556 seen by camera 1
    (ann_dir / f"invalid_{split}_ego.txt").write_text(f"ego_images_rectified/{split}/{seq}/{cams[1]}/000556.jpg,0\n")
    return truth


def test_assemblyhands_order_frames_and_validity(tmp_path):
    truth = write_assemblyhands(tmp_path)
    recs = AssemblyHands(str(tmp_path), "test").records()
    # 3 frames x 2 cameras x 2 hands = 12, minus the missing left box (frame 554, camera 1), the
    # left hands of frame 555 (9 valid joints < 10) on both cameras, and the listed invalid crop
    assert len(recs) == 12 - 1 - 2 - 1
    for r in recs:
        fname, side = r.sample_id.split(":")[1], r.sample_id.split(":")[2]
        xyz, vis, K = truth[(fname, side)]
        np.testing.assert_allclose(r.joints_3d, xyz, atol=1e-6)
        np.testing.assert_array_equal(r.visible, vis > 0)
        np.testing.assert_allclose(r.joints_2d, project(xyz, K), atol=1e-6)
        assert r.side == side and r.box is not None
    # SPEC order: the wrist is InterHand joint 20, the thumb tip joint 0 (stored SPEC index 4)
    r556 = next(r for r in recs if "000556" in r.sample_id and r.sample_id.endswith("right"))
    assert not r556.visible[4] and not r556.visible[7] and r556.visible[0]
    # wrist-to-middle-MCP is a palm length (~3.5 cm in the fixture), fingertips farther than MCPs
    d = np.linalg.norm(r556.joints_3d - r556.joints_3d[0], axis=1)
    assert 25 < d[9] < 45 and (d[[4, 8, 12, 16, 20]] > d[[1, 5, 9, 13, 17]]).all()
    img = AssemblyHands(str(tmp_path), "test").load(recs[0]).image
    assert img.shape == (480, 640, 3)                                  # grayscale files come back as RGB


# --- preprocessing ---------------------------------------------------------------------------------

def test_crop_keeps_image_and_keypoints_aligned_and_mirrors_left_hands():
    rng = np.random.default_rng(0)
    img = np.zeros((120, 160, 3), np.uint8)
    j2d = rng.uniform(40, 90, (21, 2))
    j3d = hand_3d(rng, scale=1000.0)
    x, y = np.round(j2d[8]).astype(int)
    img[y - 1:y + 2, x - 1:x + 2] = 255                    # a 3x3 dot centred on joint 8 (OpenCV pixel centres)
    for side in ("right", "left"):
        for spec, r in ((preprocess.CropSpec(size=96), None), (preprocess.train_spec(96), rng)):
            out = preprocess.prepare_hand(img, j2d, j3d, side, np.ones(21, bool), spec, r)
            crop = out["image"][..., 0].astype(float)
            ys, xs = np.nonzero(crop > 60)
            w = crop[ys, xs]
            centroid = np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()]) + 0.5
            # the dot sits at the rounded joint position: within a pixel, times the crop's zoom
            assert np.linalg.norm(centroid - out["uv"][8] * 96) < 2.0, (side, spec)
            rel = j3d - j3d[0]
            back = out["xyz"] @ out["frame_from_crop"].T.astype(np.float64)
            np.testing.assert_allclose(back, rel, atol=1e-3)
            if r is None:
                sign = -1.0 if side == "left" else 1.0
                np.testing.assert_allclose(out["xyz"][:, 0], sign * rel[:, 0], atol=1e-3)
                np.testing.assert_allclose(out["xyz"][:, 1:], rel[:, 1:], atol=1e-3)
    right = preprocess.prepare_hand(img, j2d, j3d, "right", np.ones(21, bool), preprocess.CropSpec(size=96))
    left = preprocess.prepare_hand(img, j2d, j3d, "left", np.ones(21, bool), preprocess.CropSpec(size=96))
    np.testing.assert_allclose(left["uv"][:, 0], 1.0 - right["uv"][:, 0], atol=1e-6)
    np.testing.assert_array_equal(left["image"], right["image"][:, ::-1])
