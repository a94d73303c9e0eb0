"""Label-stage throughput: Ray Data with 1 and 2 labeler actors vs a plain Python loop over the same work
items (same decode + label + crop + write code), and keyframe-only vs decode-all decoding.

    .venv/bin/python benchmarks/label_throughput.py [--copies 32] [--every-n 5] [--repeats 2] [--json FILE]

Targets (issue 3): Ray Data >= 0.9x the plain loop on 1 worker, >= 1.7x on 2. Ratios are measured side by
side in one run; on a 2-core machine the 2-worker run has no core left for the driver, so it is the
harder case. Ray pays a few seconds once per run (a worker process per actor, imports, model load): the
default 64 videos (~2 min per path) measure the per-frame rate a long job sees; with --copies 8 those fixed
seconds are a fifth of the run and the ratios drop (0.83x / 1.20x measured here). "plain x2 procs" runs
two plain loops in parallel, each pinned to its own core: the most two cores give on this machine, so
Ray Data x2 is also reported against it. Labeler actors take cores of their own (--pin-cores, the
default); "Ray x2 unpinned" is the same run without, to show what that buys. This machine is a shared
VM: even the ceiling moved between 1.73x and 1.95x from run to run, so --repeats runs every path in
rounds and reports the fastest of each. "once started" is the rate after each path's first work item
is committed (start-up excluded): what a long job sees; the targets are on the end-to-end figures.
The second table splits the machine's CPU time during each Ray run by process (from /proc): labeler
actors, driver, Ray Data's helper actors, Ray's own daemons, anything else; and gives the labelers' CPU
per frame beside the plain paths' (the same code: a gap there is in the labelers, e.g. their start-up).
Last line: ``ray_2_vs_plain=R``.
"""
from __future__ import annotations

import glob
import os
import resource
import shutil
import tempfile
import threading
import time
from collections import Counter

import pyarrow.parquet as pq
from harness import REPO, bench_parser, local_ray, write_result

from simhand_ray.config import LabelConfig, LabelerConfig
from simhand_ray.mining.frames import DecodeStats, Segment, decode_segment, probe_video
PATHS = {"plain_loop": "plain loop", "plain_2_processes": "plain x2 procs", "ray_1_workers": "Ray Data x1",
         "ray_2_workers": "Ray Data x2", "ray_2_workers_unpinned": "Ray x2 unpinned"}


def make_inputs(root: str, copies: int) -> str:
    src = [os.path.join(REPO, "data/sample/videos/Megamind.avi")]
    bugy = os.path.join(REPO, "tests", "data", "videos", "Megamind_bugy.avi")
    if os.path.exists(bugy):
        src.append(bugy)
    d = os.path.join(root, "videos")
    os.makedirs(d)
    for i in range(copies):
        for s in src:
            shutil.copy(s, os.path.join(d, f"{i:02d}_{os.path.basename(s)}"))
    return d


RAY_DATA_HELPERS = ("_StatsActor", "_AutoscalingCoordinatorActor", "ActorLocationTracker")


def _process_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (what it is, CPU seconds so far) for every process on the machine."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(d + "/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(d + "/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:          # gone meanwhile
            continue
        pid = int(d[6:])
        if pid == os.getpid():
            kind = "driver"
        elif "LabelWorker" in cmd:
            kind = "labelers"
        elif any(h in cmd for h in RAY_DATA_HELPERS):
            kind = "Ray Data helpers"
        elif "ray::" in cmd or "/ray/" in cmd:
            kind = "Ray daemons"
        else:
            kind = "other"
        out[pid] = (kind, (int(fields[11]) + int(fields[12])) / tick)
    return out


class CpuMeter:
    """CPU seconds by kind of process while a run lasts, sampled every ``interval`` s from /proc (a labeler
    actor exits with the run, so its last sample stands for it: its final ``interval`` can go uncounted)."""

    def __init__(self, interval: float = 2.0):
        self.interval, self.before, self.last = interval, _process_cpu(), {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _update(self) -> None:
        for pid, (kind, cpu) in _process_cpu().items():
            known = self.last.get(pid, self.before.get(pid, (kind, 0.0)))[0]
            # an exiting process's cmdline reads empty: it stays what it was (a labeler, say)
            self.last[pid] = (known if kind == "other" else kind, cpu)

    def _sample(self) -> None:
        while True:
            self._update()
            if self._stop.wait(self.interval):
                return

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._update()
        used: Counter = Counter()
        for pid, (kind, cpu) in self.last.items():   # only what each process used during the run
            used[kind] += cpu - self.before.get(pid, (kind, 0.0))[1]
        return {k: round(v, 2) for k, v in used.items()}


def plain_loop(cfg: LabelConfig) -> dict:
    """The same work items, processed one after another in this process, no Ray, on one core: a Ray
    labeler actor holds one CPU (Ray sets OMP_NUM_THREADS=1 there), so the loop gets one core too, or
    OpenCV's and FFmpeg's own threads would give it a second one and the comparison would be 1 vs 2 cores."""
    from simhand_ray.mining.inputs import expand_inputs
    from simhand_ray.mining.label_item import process_work_item
    from simhand_ray.mining.labelers import build_labeler
    from simhand_ray.mining.work_items import plan_video

    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        t0, c0 = time.time(), time.process_time()
        labeler = build_labeler(cfg.labeler)
        frames = 0
        for f in expand_inputs(cfg.inputs):
            for item in plan_video(f, cfg):
                frames += process_work_item(item, cfg, labeler)["frames_kept"]
        seconds = time.time() - t0
        cpu = time.process_time() - c0
        getattr(labeler, "close", lambda: None)()   # mediapipe cannot close itself at interpreter exit
        return {"frames": frames, "seconds": seconds, "cpu": {"labelers": round(cpu, 2)}}
    finally:
        os.sched_setaffinity(0, cores)


def _plain_worker(core: int, items: list, cfg_dict: dict, results) -> None:
    from simhand_ray.config import from_dict
    from simhand_ray.mining.label_item import process_work_item
    from simhand_ray.mining.labelers import build_labeler

    os.sched_setaffinity(0, {core})
    cfg = from_dict(LabelConfig, cfg_dict)
    labeler = build_labeler(cfg.labeler)
    results.put(sum(process_work_item(item, cfg, labeler)["frames_kept"] for item in items))
    getattr(labeler, "close", lambda: None)()


def plain_processes(cfg: LabelConfig, n: int) -> dict:
    """The ceiling for n workers on this machine: n plain processes, each pinned to its own core, each
    with every n-th work item; no Ray. What n cores deliver here bounds any n-worker system."""
    import multiprocessing as mp
    from dataclasses import asdict

    from simhand_ray.mining.inputs import expand_inputs
    from simhand_ray.mining.work_items import plan_video

    cores = sorted(os.sched_getaffinity(0))
    t0, c0 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    items = [item for f in expand_inputs(cfg.inputs) for item in plan_video(f, cfg)]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_plain_worker, args=(cores[i % len(cores)], items[i::n], asdict(cfg), results))
             for i in range(n)]
    for proc in procs:
        proc.start()
    frames = sum(results.get() for _ in procs)
    for proc in procs:
        proc.join()
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)   # the workers' CPU, once they are joined
    cpu = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
    return {"frames": frames, "seconds": time.time() - t0, "cpu": {"labelers": round(cpu, 2)}}


def ray_stage(cfg: LabelConfig) -> dict:
    from simhand_ray.mining.label_stage import run_label_stage

    meter = CpuMeter()
    s = run_label_stage(cfg, progress=False)
    return {"frames": s["frames_kept"], "seconds": s["seconds"], "cpu": meter.stop()}


def decode_modes(videos: str, every_n: int) -> dict:
    """Seconds per kept frame: decode all + keep 1 in N, vs keyframes only."""
    out = {}
    paths = sorted(os.path.join(videos, v) for v in os.listdir(videos))
    for mode in ("all", "keyframes"):
        stats, t0 = DecodeStats(), time.time()
        for p in paths:
            info = probe_video(p, scan=False)
            for _ in decode_segment(p, Segment(0, info.declared_frames or None, None), every_n, mode, stats):
                pass
        dt = time.time() - t0
        out[mode] = {"kept": stats.kept, "decoded": stats.decoded, "ms_per_kept_frame": 1e3 * dt / max(stats.kept, 1)}
    out["keyframes_speedup_per_kept_frame"] = out["all"]["ms_per_kept_frame"] / out["keyframes"]["ms_per_kept_frame"]
    return out


def steady_frames_per_s(output: str) -> float:
    """Kept frames per second once the first work item is done (start-up excluded): each item's commit
    marker in segments/ carries its frame count, and its file time says when it was committed."""
    seg = os.path.join(output, "segments")
    done = sorted((os.path.getmtime(os.path.join(seg, f)), pq.read_table(os.path.join(seg, f))["frames_kept"][0].as_py())
                  for f in os.listdir(seg) if f.endswith(".parquet"))
    return sum(n for _, n in done[1:]) / max(done[-1][0] - done[0][0], 1e-9)


def print_cpu(res: dict) -> None:
    """Where the machine's CPU time went in each path that measured it, as shares of cpus x seconds."""
    kinds = ("labelers", "driver", "Ray Data helpers", "Ray daemons", "other")
    print(f"\nCPU during each run, % of {res['cpus']} cores x its seconds; labelers' CPU per frame")
    print(f"{'path':<16}" + "".join(f"{k:>{len(k) + 3}}" for k in kinds) + f"{'ms/frame':>10}")
    for k, label in PATHS.items():
        cpu = res[k].get("cpu")
        if cpu:
            total = res["cpus"] * res[k]["seconds"]
            print(f"{label:<16}" + "".join(f"{100 * cpu.get(c, 0) / total:>{len(c) + 2}.1f}%" for c in kinds)
                  + f"{1e3 * cpu['labelers'] / res[k]['frames']:>10.1f}")


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--copies", type=int, default=32, help="copies of each sample video")
    p.add_argument("--every-n", type=int, default=5)
    p.add_argument("--segment-frames", type=int, default=100)
    p.add_argument("--repeats", type=int, default=1, help="rounds of every path; the fastest of each is reported")
    a = p.parse_args()

    tmp = tempfile.mkdtemp(prefix="label-bench-")
    videos = make_inputs(tmp, a.copies)
    base = dict(inputs=(videos,), every_n=a.every_n, segment_frames=a.segment_frames)
    res = {"cpus": os.cpu_count(), "videos": len(os.listdir(videos)), "every_n": a.every_n}
    runs = {
        "plain_loop": lambda out: plain_loop(LabelConfig(output=out, **base)),
        "plain_2_processes": lambda out: plain_processes(LabelConfig(output=out, **base), 2),
        "ray_1_workers": lambda out: ray_stage(LabelConfig(output=out, num_workers=1, **base)),
        "ray_2_workers": lambda out: ray_stage(LabelConfig(output=out, num_workers=2, **base)),
        "ray_2_workers_unpinned": lambda out: ray_stage(
            LabelConfig(output=out, num_workers=2, labeler=LabelerConfig(pin_cores=False), **base)),
    }
    with local_ray(os.cpu_count()):
        for r in range(a.repeats):       # rounds of every path, so a noisy minute hits all of them alike
            for k, run in runs.items():
                got = run(os.path.join(tmp, f"{k}-{r}"))
                got["steady_frames_per_s"] = steady_frames_per_s(os.path.join(tmp, f"{k}-{r}"))
                print(f"round {r}: {PATHS[k]} {got['seconds']:.1f} s", flush=True)
                res.setdefault(k + "_all_seconds", []).append(round(got["seconds"], 2))
                if k not in res or got["seconds"] < res[k]["seconds"]:   # the fastest: noise only slows
                    res[k] = got
    for k in PATHS:
        res[k]["frames_per_s"] = res[k]["frames"] / res[k]["seconds"]
    for n in (1, 2):
        res[f"ray_{n}_vs_plain"] = res[f"ray_{n}_workers"]["frames_per_s"] / res["plain_loop"]["frames_per_s"]
    res["ray_2_vs_plain_2_processes"] = res["ray_2_workers"]["frames_per_s"] / res["plain_2_processes"]["frames_per_s"]
    res["decode"] = decode_modes(videos, 30)
    shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nlabel stage, {res['videos']} videos, 1 frame in {a.every_n}, {res['cpus']} CPUs")
    print(f"{'path':<16}{'frames':>8}{'seconds':>10}{'frames/s':>10}{'vs plain':>10}   once started: frames/s, vs plain")
    for k, label in PATHS.items():
        r, p = res[k], res["plain_loop"]
        ratio, steady = r["frames_per_s"] / p["frames_per_s"], r["steady_frames_per_s"] / p["steady_frames_per_s"]
        print(f"{label:<16}{r['frames']:>8}{r['seconds']:>10.1f}{r['frames_per_s']:>10.2f}{ratio:>9.2f}x"
              f"{r['steady_frames_per_s']:>19.2f}{steady:>9.2f}x")
    print(f"Ray Data x2 / two plain processes (the 2-core ceiling here): {res['ray_2_vs_plain_2_processes']:.2f}")
    print_cpu(res)
    d = res["decode"]
    print(f"\ndecode, 1 frame in 30: all = {d['all']['ms_per_kept_frame']:.2f} ms/kept frame ({d['all']['kept']} kept), "
          f"keyframes = {d['keyframes']['ms_per_kept_frame']:.2f} ms/kept frame ({d['keyframes']['kept']} kept): "
          f"{d['keyframes_speedup_per_kept_frame']:.1f}x")
    write_result(res, a.json, ("ray_2_vs_plain", res["ray_2_vs_plain"]))


if __name__ == "__main__":
    main()
