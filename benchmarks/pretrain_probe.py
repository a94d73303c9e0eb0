"""Pre-training methods compared by the pose-retrieval probe, end to end through the real jobs.

    .venv/bin/python benchmarks/pretrain_probe.py                       # the bundled sample data
    .venv/bin/python benchmarks/pretrain_probe.py --input out/synth/videos --labeler groundtruth \
        --holdout-last-videos 4 --out out/probe_synth

Steps (each a job in its own local Ray, as a user would run them; every step resumes):
  1. mine.py --stage label over the inputs;
  2. split the hands into train / held-out: whole videos (``--holdout-videos``) or, per video, the frames
     in the last ``--holdout-tail`` of its time line (single images stay in train);
  3. mine.py --stage graph, --stage pairs on the train hands;
  4. pretrain.py once per method and seed, all with the same steps, batch and image size;
  5. evaluate.py --probe retrieval on the held-out hands: random init, every trunk, pose oracle, chance.
Prints the table (mean pose distance to the retrieved hand of another video; lower is better) and
writes OUT/pretrain_probe.json, OUT/pretrain_probe.md and OUT/report.md (jobs/evaluate.py --report).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from harness import REPO, bench_parser, write_result

from simhand_ray import schema, storage
from simhand_ray.stage import StageManifest

PY = sys.executable
METHODS = ("simclr", "peclr", "simhand-w")


def job(args: list[str], log_path: str) -> float:
    """Run one job script to completion (its output to ``log_path``); seconds taken. Raises on failure."""
    t0 = time.time()
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(args)}\n")
        log.flush()
        rc = subprocess.call([PY, *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")})
    if rc:
        raise SystemExit(f"{args[0]} failed (exit {rc}); see {log_path}")
    return time.time() - t0


def holdout_mask(hands: pa.Table, videos: set[str], last_videos: int, tail: float) -> np.ndarray:
    """True for held-out hands: those of ``videos`` and of the ``last_videos`` last video ids (sorted), or,
    with neither, the hands of each video whose frame lies in the last ``tail`` of that video's kept
    frames. Videos with one frame (images) stay in train."""
    vid = np.asarray(hands.column("video_id").to_pylist(), dtype=object).astype(str)
    if last_videos:
        videos = videos | set(sorted(set(vid))[-last_videos:])
    if videos:
        return np.isin(vid, sorted(videos))
    frame = hands.column("frame_index").to_numpy()
    out = np.zeros(len(vid), bool)
    for v in np.unique(vid):
        rows = vid == v
        frames = np.unique(frame[rows])
        if len(frames) < 2:
            continue
        cut = frames[int(np.floor(len(frames) * (1 - tail)))]
        out |= rows & (frame >= cut)
    return out


def split_hands(mine: str, out: str, videos: set[str], last_videos: int, tail: float) -> dict:
    """OUT/train/hands and OUT/heldout/hands from the label stage's hands (each written atomically)."""
    hands = storage.read_parquet(storage.join(mine, "hands"), schema=schema.HANDS)
    mask = holdout_mask(hands, videos, last_videos, tail)
    counts = {}
    for name, m in (("train", ~mask), ("heldout", mask)):
        part = hands.filter(pa.array(m))
        storage.write_parquet_atomic(part, storage.join(out, name, "hands", "part-00000.parquet"))
        counts[name] = {"hands": part.num_rows, "videos": len(pc.unique(part.column("video_id")))}
    return counts


def format_markdown(res: dict) -> str:
    a = res["args"]
    lines = [f"# Pose-retrieval probe: {', '.join(a['methods'])} vs random init",
             "", f"inputs: {', '.join(a['input'])}; 1 frame in {a['every_n']}; labeler {a['labeler']}",
             f"hands: train {res['split']['train']['hands']} ({res['split']['train']['videos']} videos), held out "
             f"{res['split']['heldout']['hands']} ({res['split']['heldout']['videos']} videos); pairs: {res['pairs']}",
             f"pre-training: {a['arch']}, {a['steps']} steps of {a['batch_size']} pairs, {a['image_size']} px, "
             f"seeds {a['seeds']}, 1 CPU worker",
             "", "| trunk | seed | mean | median | p90 | queries | final loss | train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        loss = f"{r['final_loss']:.3f}" if r.get("final_loss") is not None else ""
        secs = f"{r['train_seconds']:.0f}" if r.get("train_seconds") else ""
        lines.append(f"| {r['method']} | {r.get('seed', '')} | {r['mean']:.4f} | {r['median']:.4f} | "
                     f"{r['p90']:.4f} | {r['queries']} | {loss} | {secs} |")
    by_method = {}
    for r in res["rows"]:
        if "seed" in r:
            by_method.setdefault(r["method"].rsplit(" s", 1)[0], []).append(r["mean"])
    if any(len(v) > 1 for v in by_method.values()):
        lines += ["", "| method | seeds | mean over seeds | std over seeds |", "|---|---:|---:|---:|"]
        lines += [f"| {m} | {len(v)} | {np.mean(v):.4f} | {np.std(v):.4f} |" for m, v in by_method.items()]
    lines += ["", "Mean joint distance between the canonical 2D poses (wrist-relative, RMS-normalised) of each "
              "held-out query and the hand its embedding retrieves from another video; lower is better. "
              "Pose oracle = best possible, chance = a random hand of another video."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--input", action="append", default=None,
                   help="mine inputs (default: data/sample and tests/data/videos, the repo's sample data)")
    p.add_argument("--every-n", type=int, default=2)
    p.add_argument("--labeler", default="mediapipe")
    p.add_argument("--groundtruth-labels", default="")
    p.add_argument("--holdout-videos", default="", help="comma-separated video ids held out from pre-training")
    p.add_argument("--holdout-last-videos", type=int, default=0,
                   help="hold out the last K video ids (jobs/synth.py puts its evaluation persons last)")
    p.add_argument("--holdout-tail", type=float, default=0.3,
                   help="without held-out videos: the last fraction of each video's frames is held out")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--out", default=os.path.join(REPO, "out", "pretrain_probe"))
    a = p.parse_args()
    a.input = a.input or [os.path.join(REPO, "data", "sample"), os.path.join(REPO, "tests", "data", "videos")]
    os.makedirs(a.out, exist_ok=True)
    log = os.path.join(a.out, "jobs.log")
    cpus = ["--num-cpus", str(a.num_cpus)]
    t0 = time.time()

    mine = os.path.join(a.out, "mine")
    label = ["jobs/mine.py", "--stage", "label", "--output", mine, "--every-n", str(a.every_n), "--labeler", a.labeler]
    label += [x for i in a.input for x in ("--input", i)]
    label += ["--groundtruth-labels", a.groundtruth_labels] if a.groundtruth_labels else []
    print(f"[1/5] label -> {mine}", flush=True)
    job(label + cpus, log)

    videos = {v for v in a.holdout_videos.split(",") if v}
    split = split_hands(mine, a.out, videos, a.holdout_last_videos, a.holdout_tail)
    print(f"[2/5] split: {split}", flush=True)

    train = os.path.join(a.out, "train")
    print(f"[3/5] graph + pairs -> {train}", flush=True)
    for stage in ("graph", "pairs"):
        job(["jobs/mine.py", "--stage", stage, "--output", train] + cpus, log)
    pairs = storage.read_parquet(os.path.join(train, "pairs"), columns=["anchor_id"]).num_rows

    trunks, runs = [], {}
    for m in a.methods:
        for seed in a.seeds:
            run = os.path.join(a.out, "pretrain", f"{m}-s{seed}")
            manifest = StageManifest.read(run, "pretrain")
            done = manifest is not None and manifest.complete
            print(f"[4/5] pretrain {m} seed {seed} -> {run}{' (done: reused)' if done else ''}", flush=True)
            secs = None
            if not done:
                secs = job(["jobs/pretrain.py", "--pairs", os.path.join(train, "pairs"), "--output", run,
                            "--method", m, "--num-workers", "1", "--batch-size", str(a.batch_size),
                            "--max-steps", str(a.steps), "--arch", a.arch, "--image-size", str(a.image_size),
                            "--seed", str(seed), "--resume"] + cpus, log)
            summary = StageManifest.read(run, "pretrain").summary or {}
            runs[f"{m} s{seed}"] = {"seed": seed, "final_loss": summary.get("final_loss"), "train_seconds": secs}
            trunks += ["--trunk", f"{m} s{seed}={os.path.join(run, 'trunk.pt')}"]

    probe = os.path.join(a.out, "probe")
    print(f"[5/5] probe -> {probe}", flush=True)
    job(["jobs/evaluate.py", "--probe", "retrieval", "--hands", os.path.join(a.out, "heldout", "hands"),
         "--arch", a.arch, "--input-size", str(a.image_size), "--max-hands", "0", "--output", probe]
        + trunks + cpus, log)
    table = json.load(open(os.path.join(probe, "probe_retrieval.json")))
    rows = [{**r, **runs.get(r["method"], {})} for r in table["rows"]]
    res = {"args": vars(a), "split": split, "pairs": pairs, "rows": rows, "seconds": time.time() - t0,
           "probe_plot": os.path.join(probe, "probe_retrieval.png")}
    for path in (os.path.join(a.out, "pretrain_probe.json"), a.json):
        write_result(res, path)
    md = format_markdown(res)
    with open(os.path.join(a.out, "pretrain_probe.md"), "w") as f:
        f.write(md)
    job(["jobs/evaluate.py", "--report", a.out], log)      # report.md: the probe, its plot, the loss curves
    print("\n" + md + f"\nwritten: {a.out}/pretrain_probe.md, {a.out}/report.md, {res['probe_plot']} "
          f"({res['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
