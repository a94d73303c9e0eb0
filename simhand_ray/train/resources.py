"""Does the cluster have room for the pretrain job? Workers (CPU, GPU) plus at least one CPU for the stream.

Checked on the driver before anything is written or started, so a configuration the cluster cannot run fails
in seconds with the flag to change, instead of Ray Train or Ray Data waiting forever for resources (2 workers
x 1 CPU on a 2-CPU machine left the augmentation tasks no CPU: 0 rows after 16 minutes). On a cluster that
autoscales, the job asks for the missing nodes and waits up to ``--resource-wait`` seconds before failing.
"""
from __future__ import annotations

import logging
import math
import os
import platform
import time

from simhand_ray.config import PretrainConfig

log = logging.getLogger(__name__)

DATA_TASK_CPUS = 1.0     # one augmentation task of the stream (Ray Data's default for map_batches)
POLL_S = 5.0


class ClusterTooSmallError(RuntimeError):
    """The cluster cannot hold the training workers and the data stream (the message names the flags)."""


def worker_bundle(cfg: PretrainConfig) -> dict[str, float]:
    """The resources of one training worker (Ray Train's ``resources_per_worker``)."""
    return {"CPU": cfg.run.cpus_per_worker, **({"GPU": cfg.run.gpus_per_worker} if cfg.run.use_gpu else {})}


def place_workers(cfg: PretrainConfig, nodes: list[dict]) -> tuple[int, list[float]]:
    """Pack the workers onto ``nodes`` ({"CPU", "GPU"} totals each), fullest GPU nodes first.

    Returns (workers placed, CPUs left per node). A worker needs ``cpus_per_worker`` CPUs and, with
    ``use_gpu``, ``gpus_per_worker`` of a GPU, all on one node.
    """
    left = [float(n.get("CPU", 0)) for n in nodes]
    gpus = [float(n.get("GPU", 0)) for n in nodes]
    placed = 0
    for i in sorted(range(len(nodes)), key=lambda i: (-gpus[i], -left[i])):
        by_cpu = math.floor(left[i] / cfg.run.cpus_per_worker + 1e-9) if cfg.run.cpus_per_worker > 0 else cfg.run.num_workers
        by_gpu = math.floor(gpus[i] / cfg.run.gpus_per_worker + 1e-9) if cfg.run.use_gpu else cfg.run.num_workers
        take = max(0, min(cfg.run.num_workers - placed, by_cpu, by_gpu))
        left[i] -= take * cfg.run.cpus_per_worker
        placed += take
    return placed, left


def shortfall(cfg: PretrainConfig, nodes: list[dict]) -> str | None:
    """Why ``cfg`` does not fit on ``nodes`` (a message naming the flags to change), or None when it fits."""
    cpus = sum(float(n.get("CPU", 0)) for n in nodes)
    gpus = sum(float(n.get("GPU", 0)) for n in nodes)
    placed, left = place_workers(cfg, nodes)
    ask = (f"{cfg.run.num_workers} training worker(s) x ({cfg.run.cpus_per_worker:g} CPU"
           f"{f' + {cfg.run.gpus_per_worker:g} GPU' if cfg.run.use_gpu else ''}) (--num-workers {cfg.run.num_workers}, "
           f"--cpus-per-worker {cfg.run.cpus_per_worker:g}{', --use-gpu' if cfg.run.use_gpu else ''})")
    if placed < cfg.run.num_workers:
        need = cfg.run.num_workers * cfg.run.gpus_per_worker
        if cfg.run.use_gpu and gpus < need - 1e-9:
            return (f"{ask} need {need:g} GPU(s); the cluster has {gpus:g}: lower --num-workers or "
                    "--gpus-per-worker, drop --use-gpu, or add GPU nodes")
        return (f"{ask} do not fit on the cluster's nodes ({len(nodes)} node(s), {cpus:g} CPUs, {gpus:g} GPUs): "
                "lower --num-workers or --cpus-per-worker, or add nodes")
    if max(left, default=0.0) < DATA_TASK_CPUS - 1e-9:
        spare = (cpus - DATA_TASK_CPUS) / cfg.run.num_workers
        hint = (f"--cpus-per-worker {math.floor(spare * 4) / 4:g} or less (a worker only trains; the stream "
                "augments) or " if spare >= 0.25 else "")
        return (f"{ask} leave no node with a whole CPU for the pairs stream's augmentation tasks "
                f"({cpus:g} CPUs in the cluster, {sum(left):g} left over): set {hint}fewer --num-workers, "
                "or add CPU nodes")
    return None


def alive_nodes() -> list[dict]:
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def ensure_fits(cfg: PretrainConfig, wait_s: float) -> None:
    """Return once the cluster can run ``cfg``; raise ``ClusterTooSmallError`` at once (``wait_s`` 0, e.g. a
    local Ray) or after asking an autoscaling cluster for the resources and waiting ``wait_s`` seconds."""
    why = shortfall(cfg, alive_nodes())
    if why is None:
        return
    if wait_s <= 0:
        raise ClusterTooSmallError(why)
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[worker_bundle(cfg)] * cfg.run.num_workers + [{"CPU": DATA_TASK_CPUS}])
    log.info("the cluster is too small yet (%s); asked the autoscaler for the nodes, waiting up to %.0f s "
             "(--resource-wait)", why, wait_s)
    deadline = time.monotonic() + wait_s
    try:
        while why is not None and time.monotonic() < deadline:
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
            why = shortfall(cfg, alive_nodes())
    finally:
        request_resources(bundles=[])   # Ray Train's own requests keep the nodes it uses
    if why is not None:
        raise ClusterTooSmallError(f"after waiting {wait_s:.0f} s (--resource-wait): {why}")


def describe_cluster() -> str:
    """The cluster in words, for reports and model cards: CPUs, GPUs and their kind, the driver's CPU model."""
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    kinds = sorted(k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:"))
    model = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    gpu = f", {gpus} GPU{'s' if gpus != 1 else ''} {' '.join(kinds)}".rstrip() if gpus else ", no GPU"
    return f"{int(res.get('CPU', 0))} CPUs ({model or platform.machine()}){gpu}, {len(ray.nodes())} node(s)"
