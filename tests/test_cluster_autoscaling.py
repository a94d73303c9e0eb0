"""The mine job's label stage on an autoscaling multi-node cluster, emulated on this machine.

Ray's fake multi-node provider (``provider: fake_multinode``) turns each "node" the autoscaler launches
into a separate raylet on this machine: the head has no CPUs, so every task and labeler actor needs a
worker node that the autoscaler launches on demand and removes when idle. The job is submitted with
``ray job submit`` as on a real cluster (its working dir in place, see ``FakeCluster.submit``).

Isolation from everything else running here: the head is started by ``ray start`` in a subprocess with
its own ``--temp-dir`` (its ``ray_current_cluster`` file stays there) and its own dashboard/client ports;
every process of this cluster carries a marker in its environment, and teardown kills exactly those
processes (``ray stop`` would stop every Ray on the machine). The provider hard-codes GCS port 6379, so
the tests skip when that port is taken. ``ray.cluster_utils.AutoscalingCluster`` is not used: its
start/shutdown run ``ray stop --force``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import REPO, free_port, hand_ids, real_data
from ray_head import marked_pids, process_environ, stop_marked
from simhand_ray.config import LabelConfig
from simhand_ray.mining.label_stage import done_work_ids

pytestmark = pytest.mark.cluster

GCS_PORT = 6379                  # the fake provider connects new nodes to <node ip>:6379
IDLE_TIMEOUT_MIN = 0.2           # workers idle this long are removed
MARKER = "SIMHAND_FAKE_CLUSTER"
BIN = Path(sys.executable).parent


def fake_cluster_config(max_workers: int = 3) -> dict:
    """Autoscaler config: a head without CPUs and one CPU worker type, launched on demand.

    3 workers: one per labeler actor, plus room for a replacement while the provider still counts a dead
    node (until the autoscaler's 30 s heartbeat timeout terminates it).
    """
    return {
        "cluster_name": "simhand-fake", "max_workers": max_workers, "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "auth": {}, "docker": {},
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu_worker": {"resources": {"CPU": 1}, "node_config": {}, "min_workers": 0,
                           "max_workers": max_workers},
        },
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # TIME_WAIT from an earlier run is fine
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


class FakeCluster:
    """A fake multi-node Ray cluster driven only through subprocesses and its dashboard's HTTP API."""

    def __init__(self):
        self.tag = f"{os.getpid()}-{time.time_ns()}"
        self.temp_dir = tempfile.mkdtemp(prefix="rf", dir="/tmp")   # short: Unix socket paths are limited
        self.dash_port = free_port()
        self.dashboard = f"http://127.0.0.1:{self.dash_port}"
        self.env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
                        RAY_DATA_DISABLE_PROGRESS_BARS="1", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        self.env.pop("RAY_ADDRESS", None)
        self.env[MARKER] = self.tag     # inherited by every process of this cluster, job drivers included

    def start(self) -> None:
        config = Path(self.temp_dir) / "autoscaler.yaml"
        config.write_text(yaml.safe_dump(fake_cluster_config()))
        env = dict(self.env, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
        cmd = [str(BIN / "ray"), "start", "--head", f"--port={GCS_PORT}", "--num-cpus=0",
               f"--temp-dir={self.temp_dir}", f"--autoscaling-config={config}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dash_port}",
               f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
               # a killed raylet is declared dead after ~5 s instead of ~15 s
               '--system-config={"health_check_period_ms": 1000, "health_check_failure_threshold": 5}']
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, start_new_session=True)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    def pids(self) -> list[int]:
        """Every live process of this cluster (found by the marker in its environment)."""
        return marked_pids(self.tag, MARKER)

    def stop(self) -> None:
        stop_marked(self.tag, MARKER)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def api(self, path: str) -> list[dict]:
        with urllib.request.urlopen(f"{self.dashboard}/api/v0/{path}", timeout=30) as r:
            return json.load(r)["data"]["result"]["result"]

    def worker_nodes(self) -> list[dict]:
        """Worker nodes ever registered (ALIVE and DEAD), with start/end times in ms."""
        return [n for n in self.api("nodes?limit=1000&detail=true") if not n["is_head_node"]]

    def raylet_pid(self, node_id: str) -> int:
        """The raylet process of a fake node: the provider starts it with the node id in its environment."""
        needle = f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node_id}".encode()
        for pid in self.pids():
            env = process_environ(pid)
            if needle in env and Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                return pid
        raise LookupError(f"no raylet for node {node_id}")

    def submit(self, args: list[str], log: Path) -> subprocess.Popen:
        """``ray job submit --working-dir local://<repo> -- python jobs/mine.py ...`` (waits for the job).

        ``local://``: the repo is used in place. The fake nodes share this machine's disk, and Ray unpacks
        an uploaded working_dir again for every node that joins (``overwrite=True``), deleting the files
        under workers already running there; on a real cluster each node unpacks it on its own disk.
        """
        cmd = [str(BIN / "ray"), "job", "submit", "--address", self.dashboard, "--working-dir", f"local://{REPO}",
               "--", "python", "jobs/mine.py", *args]
        with log.open("w") as out:
            return subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT)


def wait_job(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"job did not finish in {timeout:.0f} s:\n{log.read_text()[-4000:]}")
    text = log.read_text()
    assert proc.returncode == 0 and "succeeded" in text, text[-4000:]
    return text


def max_concurrent(nodes: list[dict], t0_ms: float) -> int:
    """Most worker nodes alive at once since ``t0_ms`` (from their start/end times)."""
    events = []
    for n in nodes:
        if n["start_time_ms"] >= t0_ms:
            events.append((n["start_time_ms"], 1))
            if n["end_time_ms"]:
                events.append((n["end_time_ms"], -1))
    best = cur = 0
    for _, d in sorted(events):
        cur += d
        best = max(best, cur)
    return best


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    for name in ("Megamind.avi", "Megamind_bugy.avi"):
        shutil.copy(real_data("videos", name), d / name)
    return d


# 9 work items (segments between keyframes >= 30 frames apart), every frame kept (~540): enough for 2 labeler
# actors to be busy for a while, so a node killed after the first commit dies with work in flight, and the
# surviving labeler is still busy when the replacement node comes up (~8 s after the kill here; with 1 frame
# in 3 it finished the job alone first, and no replacement was asked for).
EVERY_N, SEGMENT_FRAMES = 1, 30
LABEL_ARGS = ["--stage", "label", "--num-workers", "2", "--every-n", str(EVERY_N), "--segment-frames", str(SEGMENT_FRAMES)]
N_ITEMS = 4 + 5


@pytest.fixture(scope="module")
def single_node_hands(ray_cluster, two_videos, tmp_path_factory):
    """hand_ids of the same label stage on the single-node session cluster (in this process), computed once."""
    cache = {}

    def get() -> set[str]:
        if not cache:
            from simhand_ray.mining.label_stage import run_label_stage
            out = tmp_path_factory.mktemp("single_node") / "out"
            run_label_stage(LabelConfig(inputs=(str(two_videos),), output=str(out), every_n=EVERY_N,
                                        segment_frames=SEGMENT_FRAMES),
                            progress=False)
            cache["ids"] = hand_ids(out)
        return cache["ids"]
    return get


@pytest.fixture(scope="module")
def fake_cluster():
    if port_in_use(GCS_PORT):
        pytest.skip(f"port {GCS_PORT} is in use (another Ray head?): the fake multi-node provider needs it")
    cluster = FakeCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def alive_workers(cluster: FakeCluster) -> list[str]:
    return [n["node_id"] for n in cluster.worker_nodes() if n["state"] == "ALIVE"]


def test_label_stage_scales_out_on_demand_and_back_in(fake_cluster, single_node_hands, two_videos, tmp_path):
    out = tmp_path / "cluster"
    assert not alive_workers(fake_cluster), "worker nodes up before any work"
    t0 = time.time()
    log = tmp_path / "job.log"
    text = wait_job(fake_cluster.submit([*LABEL_ARGS, "--input", str(two_videos), "--output", str(out)], log),
                    log, timeout=300)
    t_end = time.time()

    # the job logs the cluster it found (the head only: no CPU) and the shapes it asks for
    assert "Ray cluster now: 1 node(s), {CPU: 0, GPU: 0" in text
    assert "label stage requests: planning tasks {CPU: 0.5}" in text
    assert "; actors pipeline, 2 labeler actors, each {CPU: 1.0, GPU: 0.0}" in text

    nodes = fake_cluster.worker_nodes()
    assert max_concurrent(nodes, t0 * 1000) >= 2, nodes   # a node per labeler actor, launched for this job
    first_up = min(n["start_time_ms"] for n in nodes if n["start_time_ms"] >= t0 * 1000) / 1000
    first_done = min(p.stat().st_mtime for p in (out / "segments").glob("*.parquet"))
    print(f"\nscale-up: first worker node up {first_up - t0:.1f} s after submit, first work item committed "
          f"{first_done - first_up:.1f} s after that; job {t_end - t0:.1f} s")
    assert len(list((out / "segments").glob("*.parquet"))) == N_ITEMS

    # same hands as on one node (computed while the idle workers time out)
    assert hand_ids(out) == single_node_hands()

    deadline = time.time() + 120
    while alive_workers(fake_cluster) and time.time() < deadline:
        time.sleep(1)
    assert not alive_workers(fake_cluster), f"workers still up {time.time() - t_end:.0f} s after the job"
    last_down = max(n["end_time_ms"] for n in fake_cluster.worker_nodes()) / 1000
    print(f"scale-down: last worker node removed {last_down - t_end:.1f} s after the job ended "
          f"(idle timeout {IDLE_TIMEOUT_MIN * 60:.0f} s)")


def test_label_stage_survives_a_worker_node_dying(fake_cluster, single_node_hands, two_videos, tmp_path):
    out = tmp_path / "cluster"
    log = tmp_path / "job.log"
    t0 = time.time()
    proc = fake_cluster.submit([*LABEL_ARGS, "--input", str(two_videos), "--output", str(out)], log)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:   # kill once the first work item has committed
        if done_work_ids(str(out)):   # (a node killed mid-write may leave a _tmp.* file: not an item)
            break
        time.sleep(0.2)
    assert proc.poll() is None, log.read_text()[-4000:]
    labelers, until = [], time.time() + 30   # the state API catches up with the GCS a moment later under load
    while not labelers and time.time() < until and proc.poll() is None:
        labelers = [a for a in fake_cluster.api("actors?limit=1000&detail=true")
                    if a["state"] == "ALIVE" and "MapWorker" in a["class_name"]]
        time.sleep(0 if labelers else 0.5)
    assert labelers, "no labeler actor alive"
    victim = labelers[0]["node_id"]
    done_at_kill = len(done_work_ids(str(out)))
    os.kill(fake_cluster.raylet_pid(victim), signal.SIGKILL)
    t_kill = time.time()
    wait_job(proc, log, timeout=300)
    t_end = time.time()

    nodes = {n["node_id"]: n for n in fake_cluster.worker_nodes()}
    assert nodes[victim]["state"] == "DEAD"
    replacements = [n["start_time_ms"] / 1000 for n in nodes.values() if n["start_time_ms"] / 1000 > t_kill]
    assert replacements, "no replacement node was launched"
    print(f"\nnode failure: raylet killed {t_kill - t0:.1f} s after submit with {done_at_kill}/{N_ITEMS} items "
          f"committed; replacement node up {min(replacements) - t_kill:.1f} s after the kill; job done "
          f"{t_end - t_kill:.1f} s after the kill")
    assert done_at_kill < N_ITEMS, "the kill came after the last item"
    assert len(done_work_ids(str(out))) == N_ITEMS
    assert hand_ids(out) == single_node_hands()
