"""The suite's Ray runs beside any other Ray on this machine: a second Ray started with Ray's own default
ports (dashboard 8265, dashboard agent 52365, ...) starts while the suite's head runs, and a job submitted to
the suite's head runs on it, not on the other."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import ray

from ray_head import MARKER, marked_pids, stop_marked

RAY_DEFAULT_PORTS = (8265, 52365)          # dashboard, dashboard agent: what ray.init() binds by default


def listeners(port: int) -> set[int]:
    """The pids listening on a TCP port (of those whose file descriptors this user may read), from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:     # 0A: LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{pid}/fd")):
                pids.add(int(pid))
        except OSError:
            continue
    return pids

SECOND_RAY = """
import ray, sys, time
ray.init(num_cpus=1, include_dashboard=True, logging_level="ERROR")   # every port at Ray's default
print("GCS", ray.get_runtime_context().gcs_address, flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_second_ray_on_default_ports_beside_the_suites(ray_cluster):
    from conftest import SESSION_HEAD

    ours = set(marked_pids(SESSION_HEAD["tag"]))
    for port in RAY_DEFAULT_PORTS:
        held = listeners(port)
        assert not held & ours, f"the suite's Ray holds Ray's default port {port}"
        if held:
            pytest.skip(f"another process here holds Ray's default port {port}")
    tag = f"beside-{os.getpid()}-{time.time_ns()}"
    env = dict(os.environ, **{MARKER: tag})
    env.pop("RAY_ADDRESS", None)
    other = subprocess.Popen([sys.executable, "-c", SECOND_RAY], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        line = other.stdout.readline()       # the second Ray is up (or its start-up error)
        assert line.startswith("GCS "), line + other.stdout.read(4000) if other.poll() is not None else line
        other_gcs = line.split()[1]
        gcs = ray.get_runtime_context().gcs_address
        assert other_gcs.split(":")[-1] != gcs.split(":")[-1]
        probe = "import ray; ray.init(); print('ON', ray.get_runtime_context().gcs_address)"
        res = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ray"), "job", "submit", "--address",
                              ray_cluster, "--", sys.executable, "-c", probe],
                             capture_output=True, text=True, timeout=300, env={k: v for k, v in os.environ.items()
                                                                                if k != "RAY_ADDRESS"})
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        ran_on = [w for line in res.stdout.splitlines() if line.startswith("ON ") for w in line.split()[1:]]
        assert ran_on and ran_on[0].split(":")[-1] == gcs.split(":")[-1], res.stdout[-3000:]
    finally:
        stop_marked(tag)
