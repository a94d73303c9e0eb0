"""The comparison's ``gpu`` preset on a GPU machine: every pre-training method, fine-tuned and probed, timed.

That machine has no PyAV, faiss or MediaPipe, so the comparison's data is made beforehand on a CPU machine
from a finished mine output whose videos have sidecar labels (``make compare`` makes one):

    python benchmarks/gpu/compare_device.py --prepare .device-compare --mine out/compare-cpu/mine

which copies the mine output's manifests, hands and graph and the comparison's data stage (``OUTPUT/data``:
splits, pairs, probe hands with their 3D truth, the FreiHAND export) into ``.device-compare`` (a few MB).
On the GPU machine, with that folder and the Ray kit in the tree:

    bash benchmarks/gpu/compare_device.sh                 # jobs/compare.py --preset gpu; figures -> $OUT/compare
    python benchmarks/gpu/compare_device.py --tiny --out /tmp/cd      # the same on CPU at toy size (a check)

The job runs in a temporary folder; only ``figures.json`` (written before the job and again after it, with
the error when it fails or times out), the report, the plot and the job's log come back in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

#: What of a mine output the comparison reads once its data stage is done: the stage records.
MINE_FILES = ("_manifest.json", "graph/_manifest.json")


def prepare(folder: str, mine: str, preset: str) -> None:
    """``folder``/mine (the mine output's stage records) and ``folder``/data (the comparison's data stage)."""
    from dataclasses import replace

    from simhand_ray.compare.data import prepare_data
    from simhand_ray.config import COMPARE_PRESETS

    import ray

    ray.init(ignore_reinit_error=True, logging_level="WARNING")     # the cluster of RAY_ADDRESS, else a local one
    shutil.rmtree(folder, ignore_errors=True)
    for rel in MINE_FILES:
        os.makedirs(os.path.dirname(os.path.join(folder, "mine", rel)), exist_ok=True)
        shutil.copy(os.path.join(mine, rel), os.path.join(folder, "mine", rel))
    cfg = replace(COMPARE_PRESETS[preset], mine=mine, output=folder)
    summary = prepare_data(cfg, os.path.join(folder, "data"))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
    print(f"prepared {folder}: {summary['counts']}; {size / 2 ** 20:.1f} MiB")


def write_figures(out: str, fig: dict) -> None:
    tmp = os.path.join(out, "figures.json.tmp")
    with open(tmp, "w") as f:
        json.dump(fig, f, indent=2)
    os.replace(tmp, os.path.join(out, "figures.json"))


def card() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    except Exception as e:  # noqa: BLE001  (the figures say why)
        return f"unknown ({type(e).__name__})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="where the figures, report and log go (what comes back)")
    p.add_argument("--data", default=os.path.join(REPO, ".device-compare"), help="the folder --prepare made")
    p.add_argument("--prepare", metavar="FOLDER", help="on a CPU machine: make FOLDER from --mine")
    p.add_argument("--mine", help="with --prepare: a finished mine output whose videos have sidecar labels")
    p.add_argument("--tiny", action="store_true", help="the tiny preset on CPU: checks the script, measures nothing")
    p.add_argument("--timeout", type=float, default=540, help="seconds the job may take")
    a, extra = p.parse_known_args(argv)     # the rest goes to jobs/compare.py (e.g. --method, --seeds)
    preset = "tiny" if a.tiny else "gpu"
    if a.prepare:
        if not a.mine:
            p.error("--prepare needs --mine")
        prepare(a.prepare, a.mine, preset)
        return 0
    if not a.out:
        p.error("--out is required")
    os.makedirs(a.out, exist_ok=True)
    fig = {"card": card(), "cpus": os.cpu_count(), "preset": preset, "extra_args": extra, "status": "started"}
    write_figures(a.out, fig)
    if not os.path.exists(os.path.join(a.data, "data", "_manifest.json")):
        fig.update(status="failed", error=f"no prepared data in {a.data}: run --prepare on a CPU machine first")
        write_figures(a.out, fig)
        print(fig["error"], file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="compare_device_")
    try:
        shutil.copytree(os.path.join(a.data, "mine"), os.path.join(work, "mine"))
        shutil.copytree(os.path.join(a.data, "data"), os.path.join(work, "compare", "data"))
        cmd = [sys.executable, os.path.join(REPO, "jobs", "compare.py"), "--mine", os.path.join(work, "mine"),
               "--output", os.path.join(work, "compare"), "--preset", preset, *extra]
        t = time.perf_counter()
        log_path = os.path.join(a.out, "compare.log")
        try:
            with open(log_path, "w") as log:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=a.timeout).returncode
            fig.update(status="complete" if rc == 0 else "failed", rc=rc)
        except subprocess.TimeoutExpired:
            fig.update(status="timed out", error=f"the job ran past --timeout {a.timeout:g} s")
        fig["wall_s"] = round(time.perf_counter() - t, 1)
        for name in ("report.md", "results.json", "compare.png"):
            src = os.path.join(work, "compare", name)
            if os.path.exists(src):
                shutil.copy(src, os.path.join(a.out, name))
        results = os.path.join(work, "compare", "results.json")
        if os.path.exists(results):
            with open(results) as f:
                res = json.load(f)
            fig.update(records=res["records"], machine=res["machine"], job_seconds=res["seconds"])
        elif fig["status"] != "complete":
            with open(log_path) as f:
                fig.setdefault("error", f.read()[-2000:])
        write_figures(a.out, fig)
        print(f"[{fig['card']}] compare --preset {preset}: {fig['status']} in {fig['wall_s']:.0f} s; "
              f"figures in {a.out}/figures.json", flush=True)
        return 0 if fig["status"] == "complete" else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
