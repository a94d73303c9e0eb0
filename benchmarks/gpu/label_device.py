"""The label GPU check, in one run on a single-GPU machine (no package registry: OpenMMLab comes in a wheel kit).

1. Frames: made there from the bundled sample images (resized to ``--size``, ``--frames`` of them).
2. The labeler alone (``OpenMMLabLabeler``: RTMDet-nano + RTMPose-m from mmpose's configs, self-made weights as
   the tests make them, a detector that fires on every frame, ``--max-hands`` hands each): frames/s on the GPU
   at each ``--batch-sizes`` (synchronised, after a warm-up), in ``--precision``.
3. If Ray is there and ``--stage`` is given: the label stage through Ray (split pipeline, ``--gpus-per-labeler
   1``) over JPEGs of those frames (images: no PyAV needed), its frames/s beside the labeler's.

    python3 benchmarks/gpu/label_device.py --out $OUT/label --stage          # there (label_device.sh)
    python benchmarks/gpu/label_device.py --tiny --stage --out /tmp/ld        # here, on CPU at toy size (a check)

Prints one line per figure and writes ``figures.json`` into ``--out``.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def make_frames(n: int, size: tuple[int, int]) -> list[np.ndarray]:
    import cv2

    paths = sorted(glob.glob(os.path.join(REPO, "data", "sample", "images", "*.jpg")))
    base = [cv2.cvtColor(cv2.resize(cv2.imread(p), size), cv2.COLOR_BGR2RGB) for p in paths] or \
        [np.full((size[1], size[0], 3), 128, np.uint8)]
    return [np.ascontiguousarray(np.roll(base[i % len(base)], 7 * i, axis=1)) for i in range(n)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def labeler_rate(weights: dict, frames: list, batch: int, a) -> dict:
    from simhand_ray.config import LabelerConfig
    from simhand_ray.mining.labelers.base import FrameRef
    from simhand_ray.mining.labelers.openmmlab import OpenMMLabLabeler

    lab = OpenMMLabLabeler(LabelerConfig(backend="openmmlab", det_checkpoint=weights["det"],
                                         pose_checkpoint=weights["pose"], max_hands=a.max_hands, batch_size=batch,
                                         device=a.device, precision=a.precision))
    refs = [FrameRef("", "", i) for i in range(batch)]
    for _ in range(a.warmup):
        lab.label(frames[:batch], refs)
    sync(lab.device)
    t = time.perf_counter()
    hands = 0
    for i in range(0, len(frames) - batch + 1, batch):
        hands += sum(len(h) for h in lab.label(frames[i:i + batch], refs))
    sync(lab.device)
    n = (len(frames) // batch) * batch
    dt = time.perf_counter() - t
    return {"batch": batch, "frames": n, "hands": hands, "seconds": round(dt, 3), "frames_per_s": round(n / dt, 1),
            "device": lab.device, "precision": str(lab.dtype or "fp32")}


def stage_rate(weights: dict, frames: list, a, out: str) -> dict:
    import cv2
    import ray

    from simhand_ray.config import FilterConfig, LabelConfig, LabelerConfig
    from simhand_ray.mining.label_stage import run_label_stage

    d = os.path.join(out, "images")
    os.makedirs(d, exist_ok=True)
    for i, f in enumerate(frames):
        cv2.imwrite(os.path.join(d, f"f{i:05d}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    gpus = 1.0 if a.device != "cpu" and torch.cuda.is_available() else 0.0
    lab = LabelerConfig(backend="openmmlab", det_checkpoint=weights["det"], pose_checkpoint=weights["pose"],
                        max_hands=a.max_hands, batch_size=a.batch_sizes[-1], gpus_per_labeler=gpus,
                        cpus_per_labeler=1.0 if gpus else 0.75, device=a.device, precision=a.precision)
    cfg = LabelConfig(inputs=(d,), output=os.path.join(out, "stage"), label_pipeline="split",
                      decode_cpus=1.0 if gpus else 0.5, images_per_item=a.images_per_item, labeler=lab,
                      filter=FilterConfig(min_det_score=0, min_keypoint_score=0, min_box_side=0, min_keypoints_inside=0))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    try:
        t = time.perf_counter()
        s = run_label_stage(cfg, progress=False)
        dt = time.perf_counter() - t
    finally:
        ray.shutdown()
    return {"frames": s["frames_kept"], "hands": s["hands_kept"], "seconds": round(dt, 2),
            "frames_per_s": round(s["frames_kept"] / dt, 1), "gpus_per_labeler": gpus, "cpus": os.cpu_count()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="CPU, a few frames: checks the script, measures nothing")
    p.add_argument("--frames", type=int, default=2048)
    p.add_argument("--size", type=int, nargs=2, default=(1280, 720))
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    p.add_argument("--max-hands", type=int, default=2)
    p.add_argument("--precision", default="auto")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--stage", action="store_true", help="also the label stage through Ray (if Ray is there)")
    p.add_argument("--stage-frames", type=int, default=4096)
    p.add_argument("--images-per-item", type=int, default=64)
    p.add_argument("--skip-labeler", action="store_true", help="the stage only (the second call: label_device.sh)")
    a = p.parse_args()
    a.device = "cuda" if torch.cuda.is_available() and not a.tiny else "cpu"
    if a.tiny:
        a.frames, a.size, a.batch_sizes, a.warmup, a.stage_frames, a.images_per_item = 8, (320, 240), [2, 4], 1, 12, 4
    os.makedirs(a.out, exist_ok=True)
    from openmmlab_weights import write_checkpoints

    card = torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu"
    figures = {"card": card, "torch": torch.__version__, "labeler": []}
    print(f"device: {card}", flush=True)
    import tempfile

    work = tempfile.mkdtemp(prefix="label_device_")   # weights, images, the stage's output: not into --out
    weights = write_checkpoints(os.path.join(work, "weights"))
    frames = make_frames(a.frames, tuple(a.size))
    for b in [] if a.skip_labeler else a.batch_sizes:
        r = labeler_rate(weights, frames, b, a)
        figures["labeler"].append(r)
        print(f"labeler alone, batch {b}, {r['precision']}, {a.size[0]}x{a.size[1]}: {r['frames_per_s']} frames/s "
              f"({r['hands']} hands, {r['seconds']} s) on {card}", flush=True)
    if a.stage:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("label stage: skipped (no Ray here; bring .device-kit)", flush=True)
        else:
            r = stage_rate(weights, make_frames(a.stage_frames, tuple(a.size)), a, work)
            figures["stage"] = r
            print(f"label stage through Ray (split, {r['gpus_per_labeler']:g} GPU per labeler, {r['cpus']} CPUs): "
                  f"{r['frames_per_s']} frames/s ({r['frames']} frames, {r['hands']} hands, {r['seconds']} s)", flush=True)
    with open(os.path.join(a.out, "figures_stage.json" if a.skip_labeler else "figures.json"), "w") as f:
        json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
