"""The label stage with the model labeler (openmmlab): the node's decode-only ceiling beside the stage's rate, and
the split pipeline (decode tasks -> model actors fed batches across items -> crop tasks) against the actor path
(each actor decodes, labels, crops and commits its own items) on the same inputs.

    .venv/bin/python benchmarks/label_gpu.py [--copies 4] [--every-n 15] [--repeats 1] [--json FILE]
    .venv/bin/python benchmarks/label_gpu.py --gpus-per-labeler 1 --cpus-per-labeler 1   # on a GPU node

1. decode only: every CPU decoding the inputs at once (one process per core, ``frames.decode_segment``, 1 in N):
   the kept frames/s the node's CPUs can feed any labeler at most;
2. the label stage (``run_label_stage``, local Ray of all CPUs) with the OpenMMLab labeler (RTMDet-nano +
   RTMPose-m from mmpose's configs, self-made weights: tests/openmmlab_weights.py, a detector that fires on every
   frame, 2 hands kept), ``--label-pipeline split`` and ``actors``, the fastest of ``--repeats`` rounds each;
   the rounds alternate which path runs first (the first run on a fresh Ray pays its workers' start-up).

On CPUs only, the split run gives its labeler actors ``--split-cpus-per-labeler`` (0.75; each still takes a core
of its own and crops in its own process) and its decode tasks ``--decode-cpus`` (0.5), so that on 2 cores two
model actors run beside the decode tasks, as the actor path's two actors do; with ``--gpus-per-labeler`` both
paths take the GPU(s), and the split run crops in CPU tasks. Last line:
``split_vs_actors=R`` (split frames/s over the actor path's).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

from harness import REPO, bench_parser, local_ray, write_result

from simhand_ray.config import FilterConfig, LabelConfig, LabelerConfig


def make_inputs(root: str, copies: int) -> list[str]:
    src = [os.path.join(REPO, "data/sample/videos/Megamind.avi"), os.path.join(REPO, "tests/data/videos/Megamind_bugy.avi")]
    d = os.path.join(root, "videos")
    os.makedirs(d)
    out = []
    for i in range(copies):
        for s in src:
            if os.path.exists(s):
                out.append(os.path.join(d, f"{i:02d}_{os.path.basename(s)}"))
                shutil.copy(s, out[-1])
    return out


def _decode_one(args) -> int:
    from simhand_ray.mining.frames import DecodeStats, Segment, decode_segment

    uri, every_n = args
    st = DecodeStats()
    for _ in decode_segment(uri, Segment(0, None, None), every_n, "all", st):
        pass
    return st.kept


def decode_ceiling(videos: list[str], every_n: int, procs: int) -> tuple[float, int]:
    """(kept frames/s, kept frames) with ``procs`` processes decoding the videos at once (pool started first)."""
    with ProcessPoolExecutor(procs) as pool:
        list(pool.map(_decode_one, [(videos[0], 10_000)] * procs))   # warm the workers (imports)
        t = time.perf_counter()
        kept = sum(pool.map(_decode_one, [(v, every_n) for v in videos]))
        return kept / (time.perf_counter() - t), kept


def label_rate(videos_dir: str, out: str, pipeline: str, a, weights: dict) -> dict:
    from simhand_ray.mining.label_stage import run_label_stage

    split = pipeline == "split"
    cpus = a.split_cpus_per_labeler if split and not a.gpus_per_labeler else a.cpus_per_labeler
    lab = LabelerConfig(backend="openmmlab", det_checkpoint=weights["det"], pose_checkpoint=weights["pose"],
                        max_hands=2, batch_size=a.batch_size, gpus_per_labeler=a.gpus_per_labeler,
                        cpus_per_labeler=cpus, precision=a.precision)
    cfg = LabelConfig(inputs=(videos_dir,), output=out, every_n=a.every_n, label_pipeline=pipeline,
                      decode_cpus=a.decode_cpus, num_workers=a.num_workers, labeler=lab,
                      filter=FilterConfig(min_det_score=0, min_keypoint_score=0, min_box_side=0, min_keypoints_inside=0))
    t = time.perf_counter()
    s = run_label_stage(cfg, progress=False)
    wall = time.perf_counter() - t
    return {"frames": s["frames_kept"], "hands": s["hands_kept"], "seconds": round(wall, 2),
            "frames_per_s": round(s["frames_kept"] / wall, 2)}


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--copies", type=int, default=4, help="copies of the two sample videos")
    p.add_argument("--every-n", type=int, default=15)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--gpus-per-labeler", type=float, default=0.0)
    p.add_argument("--cpus-per-labeler", type=float, default=1.0)
    p.add_argument("--split-cpus-per-labeler", type=float, default=0.75, help="split run on CPUs only")
    p.add_argument("--decode-cpus", type=float, default=0.5)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--precision", default="auto")
    p.add_argument("--paths", nargs="+", default=["split", "actors"])
    a = p.parse_args()
    from openmmlab_weights import write_checkpoints

    cpus = os.cpu_count() or 1
    root = tempfile.mkdtemp(prefix="label_gpu_")
    try:
        videos = make_inputs(root, a.copies)
        weights = write_checkpoints(os.path.join(root, "weights"))
        ceiling, kept = decode_ceiling(videos, a.every_n, cpus)
        print(f"decode only, {cpus} processes: {ceiling:.1f} kept frames/s ({kept} frames, 1 in {a.every_n})", flush=True)
        figures = {"cpus": cpus, "videos": len(videos), "every_n": a.every_n, "decode_ceiling_fps": round(ceiling, 2),
                   "gpus_per_labeler": a.gpus_per_labeler, "runs": {}}
        with local_ray(num_cpus=cpus):
            for r in range(a.repeats):
                for path in a.paths if r % 2 == 0 else a.paths[::-1]:   # alternate which runs on a cold Ray
                    res = label_rate(os.path.join(root, "videos"), os.path.join(root, f"out_{path}_{r}"), path, a, weights)
                    figures["runs"].setdefault(path, []).append(res)
                    print(f"round {r} {path}: {res['frames_per_s']:.2f} frames/s ({res['frames']} frames, "
                          f"{res['hands']} hands, {res['seconds']} s)", flush=True)
        best = {k: max(x["frames_per_s"] for x in v) for k, v in figures["runs"].items()}
        figures["best_fps"] = best
        print("\n| path | frames/s (best) | vs decode ceiling |\n| --- | --- | --- |")
        print(f"| decode only, {cpus} CPUs | {ceiling:.1f} | 1.00 |")
        for k, v in best.items():
            print(f"| label stage, {k} | {v:.2f} | {v / ceiling:.3f} |")
        ratio = best.get("split", 0) / best["actors"] if "actors" in best and best.get("actors") else float("nan")
        figures["split_vs_actors"] = ratio
        write_result(figures, a.json, ("split_vs_actors", ratio))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
