"""Shared by the job entry points: Ray start-up (local or an existing cluster) and logging."""
from __future__ import annotations

import logging
import os
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
    kwargs = dict(runtime_env={"env_vars": env_vars}, ignore_reinit_error=True, logging_level="WARNING")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
    logging.getLogger("simhand").info("Ray cluster resources: %s", ray.cluster_resources())
