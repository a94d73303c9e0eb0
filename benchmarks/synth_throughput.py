"""Synthetic-video throughput: frames rendered per second on one core, rendering vs encoding.

One process, OpenCV on one thread (as each Ray task of the synth job runs), the default 480x360 frames.
Reports CPU time (process time, robust to other load on the machine) and wall time per frame for
supersampling 1 and 2, split into rendering (pose, rasterise, shade, composite, camera, labels) and
H.264 encoding. The synth job's manifest reports the same figure for a whole run (frames_per_cpu_second).

    .venv/bin/python benchmarks/synth_throughput.py [--videos 4 --frames-per-video 60] [--json FILE]

Last line: ``frames_per_cpu_second=F`` at supersampling 2 (the synth job's default).
"""
from __future__ import annotations

import json
import os
import time

import cv2
from harness import REPO, bench_parser, write_result

from simhand_ray.config import SynthConfig
from simhand_ray.synthetic import background
from simhand_ray.synthetic import video as V

HAND_FREE = [os.path.join(REPO, "data", "sample", "images", n) for n in ("building.jpg", "fruits.jpg")]


def measure(cfg: SynthConfig, photos) -> dict:
    pool = V.pose_pool(cfg)
    codec = V.choose_codec(cfg.codec)
    render_cpu = encode_cpu = 0.0
    frames = 0
    w0 = time.perf_counter()
    for i in range(cfg.videos):
        c = time.process_time()
        plan = V.plan_video(cfg, i, pool, photos)
        render_cpu += time.process_time() - c
        enc = V.VideoEncoder(cfg.width, cfg.height, cfg.fps, codec, cfg.crf)
        it = V.render_frames(cfg, plan, "x.mp4")
        while True:
            c = time.process_time()
            fr = next(it, None)
            render_cpu += time.process_time() - c
            if fr is None:
                break
            c = time.process_time()
            enc.add(fr.image)
            encode_cpu += time.process_time() - c
            frames += 1
        c = time.process_time()
        enc.finish()
        encode_cpu += time.process_time() - c
    wall = time.perf_counter() - w0
    cpu = render_cpu + encode_cpu
    return {"supersample": cfg.supersample, "frames": frames, "codec": codec,
            "frames_per_cpu_second": round(frames / cpu, 1), "frames_per_wall_second": round(frames / wall, 1),
            "render_ms_per_frame": round(1000 * render_cpu / frames, 1),
            "encode_ms_per_frame": round(1000 * encode_cpu / frames, 1)}


def main(argv=None) -> int:
    p = bench_parser(__doc__)
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--frames-per-video", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    cv2.setNumThreads(1)
    photos = background.decode_images([open(f, "rb").read() for f in HAND_FREE if os.path.exists(f)])
    rows = [measure(SynthConfig(videos=a.videos, frames_per_video=a.frames_per_video, seed=a.seed,
                                supersample=s), photos) for s in (1, 2)]
    figures = {"cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "runs": rows}
    print(json.dumps(figures, indent=2))
    write_result(figures, a.json, ("frames_per_cpu_second", rows[-1]["frames_per_cpu_second"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
