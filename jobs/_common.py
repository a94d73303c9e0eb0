"""Shared by the job entry points: Ray start-up (local or an existing cluster) and logging."""
from __future__ import annotations

import logging
import os
import socket
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("SIMHAND_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to the cluster this job was submitted to (RAY_ADDRESS), else start a local Ray.

    AWS settings of this process are forwarded to every worker so s3:// URIs resolve the same there.
    """
    import ray

    from simhand_ray import storage

    env_vars = storage.aws_env()
    env_vars["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)
    kwargs = dict(ignore_reinit_error=True, logging_level="WARNING")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env={"env_vars": env_vars}, **kwargs)
    else:
        # Ray Train's controller asks the state API about its actors; in a process without RAY_ADDRESS
        # that API auto-detects the cluster and fails when a second Ray runs on this machine. Pin it
        # to this cluster's dashboard, on a port chosen here so it is known before Ray starts.
        port = free_port()
        env_vars["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_port=port,
                 runtime_env={"env_vars": env_vars}, **kwargs)
    alive = sum(1 for n in ray.nodes() if n["Alive"])
    logging.getLogger("simhand").info("Ray cluster now: %d node(s), %s (an autoscaling cluster adds nodes "
                                      "for requests that do not fit)", alive, format_resources(ray.cluster_resources()))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def format_resources(res: dict) -> str:
    """{CPU, GPU, memory, object store, custom} of ``ray.cluster_resources()``, without per-node entries."""
    gib = 2.0 ** 30
    out = {"CPU": res.get("CPU", 0), "GPU": res.get("GPU", 0), "memory": f"{res.get('memory', 0) / gib:.1f} GiB",
           "object_store": f"{res.get('object_store_memory', 0) / gib:.1f} GiB"}
    out.update({k: v for k, v in res.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")
                and not k.startswith(("node:", "accelerator_type:"))})
    return "{" + ", ".join(f"{k}: {v:g}" if isinstance(v, float) else f"{k}: {v}" for k, v in out.items()) + "}"
