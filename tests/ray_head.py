"""A Ray head of the test suite's own, beside any other Ray on the machine.

``ray.init()`` binds the dashboard agent to Ray's fixed default port (52365), so a second Ray on the machine
either fails to start or, worse, answers our ``ray job submit`` with its own agent. ``ray start --head``
takes every port as a flag: each is chosen free here. Every process of this head carries a marker in its
environment, and ``stop`` kills exactly those (``ray stop`` would stop every Ray on the machine).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
MARKER = "SIMHAND_TEST_RAY"
#: The ports ``ray start --head`` binds, each chosen free (worker ports come from Ray's range and are probed).
PORT_FLAGS = ("port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
              "runtime-env-agent-port", "metrics-export-port", "node-manager-port", "object-manager-port",
              "ray-client-server-port")


def free_port() -> int:
    """A TCP port free on this machine right now."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def process_environ(pid: int | str) -> list[bytes]:
    """A process's environment as ``NAME=value`` byte strings (empty when it is gone or not ours to read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


class LocalHead:
    """``ray start --head`` on free ports with a temp dir of its own; ``stop`` ends only its processes."""

    def __init__(self, num_cpus: int = 2, extra_args: tuple[str, ...] = (), env: dict | None = None):
        self.tag = f"{os.getpid()}-{time.time_ns()}"
        self.temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")     # short: Unix socket paths are limited
        self.ports = {flag: free_port() for flag in PORT_FLAGS}
        self.num_cpus, self.extra_args = num_cpus, extra_args
        self.env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
                        RAY_DATA_DISABLE_PROGRESS_BARS="1", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                        **(env or {}))
        self.env.pop("RAY_ADDRESS", None)
        self.env[MARKER] = self.tag        # inherited by every process of this head, job drivers included

    @property
    def address(self) -> str:
        """The GCS address ``ray.init(address=...)`` takes."""
        return f"127.0.0.1:{self.ports['port']}"

    @property
    def dashboard(self) -> str:
        """The dashboard URL ``ray job submit --address`` takes."""
        return f"http://127.0.0.1:{self.ports['dashboard-port']}"

    def start(self) -> LocalHead:
        cmd = [str(BIN / "ray"), "start", "--head", f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp_dir}",
               "--dashboard-host=127.0.0.1", "--include-dashboard=true",
               *(f"--{flag}={port}" for flag, port in self.ports.items()), *self.extra_args]
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180, start_new_session=True)
        if res.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
        return self

    def pids(self) -> list[int]:
        """Every live process of this head (found by the marker in its environment)."""
        return marked_pids(self.tag)

    def stop(self) -> None:
        stop_marked(self.tag)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def marked_pids(tag: str, marker: str = MARKER) -> list[int]:
    """The live processes whose environment holds ``marker=tag``."""
    needle = f"{marker}={tag}".encode()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and needle in process_environ(p)]


def stop_marked(tag: str, marker: str = MARKER) -> None:
    """SIGTERM, then SIGKILL, every process marked with ``tag``; returns once none is left (or after 7 s)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 2)):
        for pid in marked_pids(tag, marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while marked_pids(tag, marker) and time.time() < deadline:
            time.sleep(0.2)
