"""Builders of test inputs shared by several test files (and benchmarks): real tables written through the
library, so a test reads what a stage would have written."""
from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa

from simhand_ray import storage
from simhand_ray.config import GraphConfig, GraphResources, IndexConfig, PairsConfig
from simhand_ray.schema import HANDS

SAMPLE_PHOTOS = ("handSrc.jpg", "fruits.jpg", "building.jpg", "messi5.jpg")


def pose_hands(n_videos: int, per_video: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pose-like keypoints (N, 21, 2): each video jitters around its own random hand. -> (kp, video)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 180, (n_videos, 21, 2))
    video = np.repeat(np.arange(n_videos), per_video)
    kp = base[video] + rng.normal(0, 4.0, (len(video), 21, 2))
    return kp.astype(np.float32), video


def real_crops(n: int, seed: int = 0) -> list[bytes]:
    """n distinct 224x224 JPEG crops cut from the real sample photos (each stamped with its index)."""
    from conftest import real_data

    rng = np.random.default_rng(seed)
    photos = [cv2.imread(str(real_data("images", name))) for name in SAMPLE_PHOTOS]
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w)))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = cv2.resize(img[y:y + side, x:x + side], (224, 224), interpolation=cv2.INTER_AREA)
        cv2.putText(crop, str(i), (8, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 255, 255), 2)
        out.append(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def hands_table(kp: np.ndarray, video: np.ndarray, sources=None, jpegs=None) -> pa.Table:
    """A HANDS table of keypoints kp (N, 21, 2) from videos ``video`` (N,); ``sources`` (N,) default "test",
    ``jpegs`` (N,) default empty crops. hand_id = source:video:frame:0 with frame = row number."""
    n = len(kp)
    sources = ["test"] * n if sources is None else list(sources)
    return pa.table({
        "hand_id": [f"{s}:v{v:03d}:{i:08d}:0" for i, (s, v) in enumerate(zip(sources, video))],
        "source": sources, "video_id": [f"v{v:03d}" for v in video],
        "uri": [f"/data/v{v:03d}.mp4" for v in video], "frame_index": np.arange(n),
        "hand_index": np.zeros(n, np.int32), "image_width": np.full(n, 640, np.int32),
        "image_height": np.full(n, 480, np.int32), "box": [[0.0, 0.0, 100.0, 100.0]] * n,
        "crop_box": [[0.0, 0.0, 130.0, 130.0]] * n, "handedness": ["right"] * n,
        "handedness_score": np.ones(n, np.float32), "det_score": np.ones(n, np.float32),
        "keypoints": list(kp.reshape(n, 42)), "keypoint_scores": [np.ones(21, np.float32)] * n,
        "crop_jpeg": jpegs if jpegs is not None else [b""] * n,
    }, schema=HANDS)


def hands_with_crops(n_videos: int, per_video: int, seed: int = 0) -> pa.Table:
    """A HANDS table for the pairs stage: pose_hands keypoints from two sources, real JPEG crops, and one
    hand (row 3) without a descriptor, so without neighbours and without a pair."""
    kp, video = pose_hands(n_videos, per_video, seed)
    kp[3, 5] = np.nan
    return hands_table(kp, video, sources=[f"src{v % 2}" for v in video], jpegs=real_crops(len(video), seed))


def write_hands(out: str, table: pa.Table, files: int = 2) -> None:
    """Write a HANDS table as the label stage would: ``files`` Parquet parts under ``out/hands``."""
    step = -(-len(table) // files)
    for i in range(files):
        storage.write_parquet_atomic(table.slice(i * step, step), storage.join(out, "hands", f"h{i}.parquet"))


def race(n: int, fn) -> list:
    """``fn(i)`` in n threads released together; their results (or exceptions) in thread order."""
    import threading

    barrier = threading.Barrier(n)
    out: list = [None] * n

    def run(i):
        barrier.wait()
        try:
            out[i] = fn(i)
        except Exception as e:  # handed back to the test
            out[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


#: A small, busy synthetic data set: 2 videos of 8 frames, 192x144, occluders and two hands half the time.
SMALL_SYNTH = dict(videos=2, frames_per_video=8, width=192, height=144, key_gap=(3, 5), occluder_prob=0.5,
                   two_hands_prob=0.5)


def synthetic_video(folder, index: int = 0, seed: int = 0, freihand_every: int = 0, **kw):
    """Video ``index`` of the ``SMALL_SYNTH`` data set (``kw`` overrides settings) and its sidecar labels,
    written to ``folder``, procedural backgrounds -> ``synthetic.video.VideoResult``."""
    from simhand_ray.config import SynthConfig
    from simhand_ray.synthetic.video import make_video

    cfg = SynthConfig(seed=seed, **{**SMALL_SYNTH, **kw})
    return make_video(cfg, index, str(folder), [], freihand_every=freihand_every)


def graph_config(output: str = "", pairs: PairsConfig = PairsConfig(), resources: GraphResources = GraphResources(),
                 **index) -> GraphConfig:
    """A GraphConfig for the graph and pairs stages, the index section's settings given as keywords."""
    return GraphConfig(output=output, index=IndexConfig(**index), pairs=pairs, resources=resources)


# --- pre-training and fine-tuning inputs --------------------------------------------------------------------
#: A right hand's 21 keypoints (SPEC order) in a 224 px crop.
HAND = np.array([
    [112, 190],
    [90, 170], [75, 150], [65, 130], [58, 112],
    [95, 120], [92, 95], [90, 78], [89, 62],
    [110, 115], [110, 88], [110, 70], [110, 54],
    [125, 118], [128, 93], [130, 76], [131, 62],
    [140, 125], [146, 105], [150, 91], [153, 78],
], dtype=np.float32)
PAIR_PHOTOS = ("handSrc.jpg", "messi5.jpg", "fruits.jpg", "building.jpg", "Back_Projection1_Source_Image.jpg")


def make_pairs(uri: str, n: int = 16, files: int = 2, seed: int = 0, split: int = 12) -> None:
    """``n`` pairs of 224x224 crops of the real sample images; the first ``split`` rows from source "ego4d",
    the rest from "100doh"; keypoints are the HAND layout turned, scaled and jittered per crop."""
    from conftest import real_data
    from simhand_ray import schema

    rng = np.random.default_rng(seed)
    images = [cv2.imread(str(real_data("images", name))) for name in PAIR_PHOTOS]
    rows = []
    for i in range(n):
        crops, kps = [], []
        for _ in range(2):
            im = images[rng.integers(len(images))]
            s = int(rng.integers(160, min(im.shape[:2]) + 1))
            y0, x0 = rng.integers(0, im.shape[0] - s + 1), rng.integers(0, im.shape[1] - s + 1)
            crops.append(cv2.imencode(".jpg", cv2.resize(im[y0:y0 + s, x0:x0 + s], (224, 224)))[1].tobytes())
            a = np.deg2rad(rng.uniform(-30, 30))
            rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            kp = (HAND - 112) @ rot.T * rng.uniform(0.7, 1.0) + 112 + rng.normal(0, 3, size=HAND.shape)
            kps.append(kp.astype(np.float32).reshape(-1).tolist())
        src = "ego4d" if i < split else "100doh"
        rows.append({"anchor_id": f"{src}:a{i}:{i:08d}:0", "positive_id": f"{src}:p{i}:{i:08d}:0",
                     "anchor_jpeg": crops[0], "positive_jpeg": crops[1], "anchor_keypoints": kps[0],
                     "positive_keypoints": kps[1], "distance": float(rng.uniform()), "source": src})
    per = -(-n // files)
    for f in range(files):
        table = pa.Table.from_pylist(rows[f * per:(f + 1) * per], schema=schema.PAIRS)
        storage.write_parquet_atomic(table, storage.join(uri, f"part-{f:05d}.parquet"))


def read_tensorboard(output: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of ``output/tensorboard`` as TensorBoard reads it (copied here first if on S3)."""
    import os
    import tempfile

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from simhand_ray.train import metrics

    with tempfile.TemporaryDirectory() as d:
        for u in storage.list_files(storage.join(output, metrics.TENSORBOARD_DIR)):
            with open(os.path.join(d, os.path.basename(u)), "wb") as f:
                f.write(storage.read_bytes(u))
        acc = EventAccumulator(d, size_guidance={"scalars": 0})
        acc.Reload()
        return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def hand_3d(rng: np.random.Generator, root=(0.0, 0.0, 0.5), scale=1.0) -> np.ndarray:
    """A plausible right hand (21, 3) in SPEC order around ``root`` (metres x ``scale``)."""
    pts = np.zeros((21, 3))
    dirs = np.linspace(-0.9, 0.9, 5)
    for f, d in enumerate(dirs):
        for k in range(4):
            r = 0.035 + 0.022 * k + rng.normal(0, 0.003)
            a = d + rng.normal(0, 0.05)
            pts[1 + 4 * f + k] = [r * np.sin(a), -r * np.cos(a), rng.normal(0, 0.01)]
    return (pts + np.asarray(root)) * scale


def draw(joints_2d: np.ndarray, width: int, height: int) -> np.ndarray:
    """A BGR image with the skeleton drawn, so crops have content."""
    from simhand_ray.schema import BONES

    img = np.zeros((height, width, 3), np.uint8)
    for a, b in BONES:
        cv2.line(img, tuple(int(v) for v in joints_2d[a]), tuple(int(v) for v in joints_2d[b]), (60, 160, 230), 2)
    return img


def write_freihand(root, n_train: int = 6, versions: int = 2, n_eval: int = 4, size: int = 64,
                   seed: int = 0) -> dict:
    """FreiHAND v2 layout under ``root`` (a pathlib.Path): {split}_xyz.json (metres), {split}_K.json,
    {split}/rgb/%08d.jpg; the training images come in ``versions`` blocks of ``n_train`` sharing annotations
    (image i shows sample i % n)."""
    import json

    from simhand_ray.evaluate.datasets import project

    rng = np.random.default_rng(seed)
    out = {}
    for split, n, vers in (("training", n_train, versions), ("evaluation", n_eval, 1)):
        xyz = [hand_3d(rng, root=(rng.normal(0, 0.01), rng.normal(0, 0.01), 0.5)) for _ in range(n)]
        f = size * 2.3
        K = [np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]]) for _ in range(n)]
        (root / split / "rgb").mkdir(parents=True, exist_ok=True)
        for v in range(vers):
            for i in range(n):
                img = draw(project(xyz[i], K[i]), size, size)
                img = np.clip(img.astype(int) + 10 * v, 0, 255).astype(np.uint8)    # versions differ
                cv2.imwrite(str(root / split / "rgb" / f"{v * n + i:08d}.jpg"), img)
        (root / f"{split}_xyz.json").write_text(json.dumps([x.tolist() for x in xyz]))
        (root / f"{split}_K.json").write_text(json.dumps([k.tolist() for k in K]))
        out[split] = (np.array(xyz), np.array(K))
    return out


# --- label stage: a job killed mid-run and run again ---------------------------------------------------------
def kill_and_rerun(make_cmd, tmp_path, wait_s: float = 300) -> dict:
    """Label Megamind.avi and its damaged copy with ``make_cmd(inputs, output)`` (a mine-job command line) on
    the session's Ray: SIGKILL the job once two work items are committed, run it again over the same output,
    and once more into a fresh reference output. -> {out, reference, done_at_kill, items}."""
    import os
    import shutil
    import signal
    import subprocess
    import time

    import ray

    from conftest import REPO, real_data
    from simhand_ray.mining.label_stage import done_work_ids

    d = tmp_path / "in"
    d.mkdir()
    for name in ("Megamind.avi", "Megamind_bugy.avi"):
        shutil.copy(real_data("videos", name), d / name)
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    out, reference = tmp_path / "out", tmp_path / "reference"
    proc = subprocess.Popen(make_cmd([d], out), env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def committed(output) -> int:   # the stage's own count: a kill mid-write may leave a _tmp.* file, not an item
        return len(done_work_ids(str(output)))

    deadline = time.time() + wait_s
    while time.time() < deadline and committed(out) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = committed(out)
    subprocess.run(make_cmd([d], out), env=env, cwd=REPO, check=True, capture_output=True)
    subprocess.run(make_cmd([d], reference), env=env, cwd=REPO, check=True, capture_output=True)
    items = committed(reference)
    assert 2 <= done_at_kill < items, f"the kill came too late to test resuming ({done_at_kill} items done)"
    assert committed(out) == items
    return {"out": out, "reference": reference, "done_at_kill": done_at_kill, "items": items}
