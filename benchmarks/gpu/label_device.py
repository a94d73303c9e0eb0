"""The label GPU check, in one run on a single-GPU machine (no package registry: OpenMMLab comes in a wheel kit).

1. Frames: made there from the bundled sample images (resized to ``--size``, ``--frames`` of them).
2. The labeler alone (``OpenMMLabLabeler``: RTMDet-nano + RTMPose-m from mmpose's configs, self-made weights as
   the tests make them, a detector that fires on every frame, ``--max-hands`` hands each): frames/s on the GPU
   at each ``--batch-sizes`` (synchronised, after a warm-up), in ``--precision``.
3. If Ray is there and ``--stage`` is given: the label stage through Ray (split pipeline) over JPEGs of those
   frames (images: no PyAV needed), at each ``--stage-gpus`` (1 and 0.25 GPU per labeler), beside the decode
   ceiling: frames/s with every CPU decoding those JPEGs. The issue's target: the stage >= 0.8 x that ceiling.
   A labeler's own CPU prepares each frame for the models (~2.8 ms per 1280x720 frame with 2 hands, measured on
   the 2-core VM), so one labeler with one CPU tops out near 350 frames/s: fractional GPUs give it company.

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


def base_frames(size: tuple[int, int]) -> list[np.ndarray]:
    """The bundled sample images, RGB, resized to ``size``."""
    import cv2

    paths = sorted(glob.glob(os.path.join(REPO, "data", "sample", "images", "*.jpg")))
    return [cv2.cvtColor(cv2.resize(cv2.imread(p), size), cv2.COLOR_BGR2RGB) for p in paths] or \
        [np.full((size[1], size[0], 3), 128, np.uint8)]


def frame(base: list[np.ndarray], i: int) -> np.ndarray:
    """Frame ``i``: a sample image shifted sideways by 7 i pixels (so no two frames are the same)."""
    return np.ascontiguousarray(np.roll(base[i % len(base)], 7 * i, axis=1))


def make_frames(n: int, size: tuple[int, int]) -> list[np.ndarray]:
    base = base_frames(size)
    return [frame(base, i) for i in range(n)]


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


def write_images(n: int, size: tuple[int, int], out: str) -> str:
    """``n`` frames as JPEG files, written by a thread per CPU (the stage's input there: images need no PyAV)."""
    from concurrent.futures import ThreadPoolExecutor

    import cv2

    d = os.path.join(out, "images")
    os.makedirs(d, exist_ok=True)
    base = base_frames(size)

    def write(i: int) -> None:
        cv2.imwrite(os.path.join(d, f"f{i:05d}.jpg"), cv2.cvtColor(frame(base, i), cv2.COLOR_RGB2BGR))

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(write, range(n)))
    return d


def _read_all(paths: list[str]) -> int:
    from simhand_ray.mining.frames import read_image

    for p in paths:
        read_image(p)
    return len(paths)


def decode_ceiling(images: str) -> float:
    """Frames/s with every CPU decoding the stage's images (``frames.read_image``, as its decode tasks do): the
    most any labeler can be fed there."""
    from concurrent.futures import ProcessPoolExecutor

    paths = sorted(glob.glob(os.path.join(images, "*.jpg")))
    procs = os.cpu_count() or 1
    with ProcessPoolExecutor(procs) as pool:
        list(pool.map(_read_all, [paths[:1]] * procs))   # workers started and imported first
        t = time.perf_counter()
        n = sum(pool.map(_read_all, [paths[i::procs] for i in range(procs)]))
        return n / (time.perf_counter() - t)


def stage_rate(weights: dict, images: str, gpus: float, a, out: str) -> dict:
    """The label stage through a local Ray of all CPUs: split pipeline, labelers of ``gpus`` GPU each (0: CPU)."""
    import ray

    from simhand_ray.config import FilterConfig, LabelConfig, LabelerConfig
    from simhand_ray.mining.label_stage import run_label_stage

    lab = LabelerConfig(backend="openmmlab", det_checkpoint=weights["det"], pose_checkpoint=weights["pose"],
                        max_hands=a.max_hands, batch_size=a.batch_sizes[-1], gpus_per_labeler=gpus,
                        cpus_per_labeler=1.0 if gpus else 0.75, device=a.device, precision=a.precision)
    cfg = LabelConfig(inputs=(images,), output=os.path.join(out, f"stage_{gpus:g}"), label_pipeline="split",
                      decode_cpus=1.0 if gpus else 0.5, images_per_item=a.images_per_item, labeler=lab,
                      filter=FilterConfig(min_det_score=0, min_keypoint_score=0, min_box_side=0, min_keypoints_inside=0))
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
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
    p.add_argument("--stage-gpus", type=float, nargs="+", default=[1.0, 0.25],
                   help="--gpus-per-labeler of each stage run (0.25: four labelers share the GPU, four CPUs prepare)")
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
            images = write_images(a.stage_frames, tuple(a.size), work)
            ceiling = decode_ceiling(images)
            figures["decode_ceiling_fps"] = round(ceiling, 1)
            print(f"decode only, {os.cpu_count()} processes: {ceiling:.1f} frames/s ({a.size[0]}x{a.size[1]} JPEGs)",
                  flush=True)
            figures["stage"] = []
            for gpus in a.stage_gpus if a.device == "cuda" else [0.0]:
                r = stage_rate(weights, images, gpus, a, work)
                r["vs_decode_ceiling"] = round(r["frames_per_s"] / ceiling, 3)
                figures["stage"].append(r)
                print(f"label stage through Ray (split, {gpus:g} GPU per labeler, {r['cpus']} CPUs): "
                      f"{r['frames_per_s']} frames/s = {r['vs_decode_ceiling']} of the decode ceiling ({r['frames']} "
                      f"frames, {r['hands']} hands, {r['seconds']} s)", flush=True)
    with open(os.path.join(a.out, "figures_stage.json" if a.skip_labeler else "figures.json"), "w") as f:
        json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
