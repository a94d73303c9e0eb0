"""The synth job: synthetic hand videos with ground-truth 3D pose, rendered in parallel as Ray tasks.

    python jobs/synth.py --videos 16 --frames-per-video 90 --output out/synth --seed 0 --freihand
    ray job submit --working-dir . -- python jobs/synth.py --videos 1000 --output s3://bucket/synth

Writes under --output:
    videos/synth_NNNNN.mp4 + videos/synth_NNNNN.labels.parquet   one person per video, sidecar labels
    freihand/                                                    with --freihand: FreiHAND-format crops,
                                                                 evaluation split = unseen persons
    montage.png                                                  sample frames with keypoints drawn
    _manifest.json                                               settings, hash, counts, timings (last run)
The same --seed (and settings) gives byte-identical label files. Label the videos with the ground truth:
    python jobs/mine.py --input out/synth/videos --labeler groundtruth --output out/mine
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict

import _common  # noqa: F401  (puts the repo on sys.path)
from _common import HelpFormatter, add_config_args, config_from_args, float_range, init_ray, int_range, setup_logging

import ray

from simhand_ray import storage
from simhand_ray.config import IMAGE_EXTENSIONS, SynthConfig, from_dict
from simhand_ray.stage import StageManifest, StageMismatch

log = logging.getLogger("simhand.synth")


@ray.remote(num_cpus=1)
def render_video(cfg_dict: dict, index: int, output_dir: str, photos: list[bytes], montage_frames: int,
                 freihand_every: int):
    """One video, start to finish, on one core (OpenCV kept to one thread so tasks do not oversubscribe)."""
    import cv2

    from simhand_ray.synthetic import background, video

    cv2.setNumThreads(1)
    return video.make_video(from_dict(SynthConfig, cfg_dict), index, output_dir, background.decode_images(photos),
                            montage_frames=montage_frames, freihand_every=freihand_every)


def background_files(uris: list[str]) -> list[str]:
    """Image files named directly or found under directories / prefixes, sorted (order fixes the seeds)."""
    out = []
    for uri in uris:
        out.extend([uri] if not storage.is_dir(uri) else storage.list_files(uri, IMAGE_EXTENSIONS))
    return sorted(out)


def write_montage(output: str, results, columns: int = 6) -> None:
    from simhand_ray.drawing import draw_hand
    from simhand_ray.synthetic import montage

    tiles = []
    for r in results:
        for image, rows in r.montage:
            for row in rows:
                image = draw_hand(image, row["keypoints_2d"], row["visibility"])
            tiles.append(image)
    storage.write_bytes_atomic(storage.join(output, "montage.png"), montage.encode_png(montage.montage(tiles, columns)))


def write_freihand(output: str, results, videos: int, eval_fraction: float) -> dict:
    from simhand_ray.synthetic import freihand_export as fh

    splits = {name: [] for name in fh.SPLITS}
    for i, r in enumerate(results):
        splits[fh.split_of(i, videos, eval_fraction)].extend(r.freihand)
    root = storage.join(output, "freihand")
    return {name: fh.write_split(root, name, samples) for name, samples in splits.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--output", required=True, help="output directory or s3:// prefix")
    add_config_args(p.add_argument_group("synthetic videos"), SynthConfig)
    p.add_argument("--backgrounds", action="append", default=[],
                   help="background photos: image files or directories / s3:// prefixes (repeatable); "
                        "without them backgrounds are procedural. Use photos without hands in them.")
    p.add_argument("--freihand", action="store_true", help="also export FreiHAND-format crops")
    p.add_argument("--freihand-every", type=int_range(1), default=10, help="a FreiHAND crop every N-th frame")
    p.add_argument("--eval-fraction", type=float_range(0, 1), default=0.2, help="fraction of videos (persons) for evaluation")
    p.add_argument("--montage-videos", type=int_range(0), default=12, help="videos sampled into montage.png")
    p.add_argument("--num-cpus", type=int_range(1), default=None, help="CPUs of a local Ray (ignored on a cluster)")
    return p


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    setup_logging()
    try:
        cfg = config_from_args(SynthConfig, a)
    except ValueError as e:
        p.error(str(e))
    storage.check_writable(a.output)
    for uri in a.backgrounds:
        storage.check_readable(uri)
    settings = {"config": asdict(cfg), "freihand": a.freihand, "freihand_every": a.freihand_every,
                "eval_fraction": a.eval_fraction, "backgrounds": sorted(a.backgrounds)}
    try:   # the same settings re-render the same bytes; other settings are refused, naming what differs
        manifest = StageManifest.open(a.output, "synth", settings)
    except StageMismatch as e:
        log.error("%s", e)
        return 2
    init_ray(a.num_cpus)

    t0 = time.time()
    photos = [storage.read_bytes(f) for f in background_files(a.backgrounds)]
    photos_ref = ray.put(photos)
    out_videos = storage.join(a.output, "videos")
    freihand_every = a.freihand_every if a.freihand else 0
    pending = {render_video.remote(asdict(cfg), i, out_videos, photos_ref, 3 if i < a.montage_videos else 0,
                                   freihand_every): i for i in range(cfg.videos)}
    results = [None] * cfg.videos
    from simhand_ray.progress import progress_bar

    with progress_bar(cfg.videos, "synth", "video") as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                results[pending.pop(ref)] = ray.get(ref)
                bar.update(1)
    write_montage(a.output, results[: a.montage_videos])
    freihand = write_freihand(a.output, results, cfg.videos, a.eval_fraction) if a.freihand else {}
    frames = sum(r.frames for r in results)
    cpu = sum(r.cpu_seconds for r in results)
    summary = {
        "videos": cfg.videos,
        "frames": frames, "hands": sum(r.hands for r in results), "codec": results[0].codec if results else None,
        "backgrounds": len(photos), "freihand": freihand, "eval_fraction": a.eval_fraction if a.freihand else None,
        "seconds": round(time.time() - t0, 3), "task_cpu_seconds": round(cpu, 3),
        "frames_per_cpu_second": round(frames / cpu, 2) if cpu else None,
    }
    manifest.finish(summary)
    log.info("wrote %d videos (%d frames, %d hands) to %s in %.1fs; %.1f frames per CPU-second", cfg.videos,
             frames, summary["hands"], a.output, summary["seconds"], summary["frames_per_cpu_second"] or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
