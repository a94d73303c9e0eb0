"""The label stage on Ray Data: input files -> work items -> labeled right-hand crops in Parquet shards.

Data flow:
  1. driver: expand ``--input`` into files (listing only), then open the output's ``_manifest.json`` (stage
     "label"): fresh, the same settings (a resume: done work items are skipped), or refused (``StageMismatch``);
  2. plan the work items (``work_items``): probe each video and split it at keyframes into segments; group
     the images not yet labeled into chunks; unreadable inputs become reject items. Gathered on the driver
     (the rows are tiny), which frees every CPU for step 3 and gives the progress bar its total;
  3. ``actors`` pipeline (mediapipe, groundtruth): labeler actors (``map_batches``, one work item per call)
     decode, label and commit each item (``label_item``); ``split`` pipeline (openmmlab): decode tasks -> model
     actors fed batches gathered across items -> crop tasks -> the driver commits each item (``label_split``).
     Before either starts, the labelers' resources are checked against the cluster (``ensure_labelers_fit``):
     a local Ray that cannot hold them fails at once, a joined cluster after ``resource_wait_s``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import asdict

from simhand_ray import storage
from simhand_ray.config import LabelConfig, from_dict
from simhand_ray.mining.affinity import claim_labeler_cores
from simhand_ray.mining.inputs import expand_inputs
from simhand_ray.mining.label_item import process_work_item
from simhand_ray.mining.labelers import build_labeler
from simhand_ray.mining.work_items import WorkItem, image_progress, pin_partial_videos, plan_all_videos, plan_images
from simhand_ray.progress import progress_bar
from simhand_ray.stage import StageManifest

log = logging.getLogger(__name__)

STAGE = "label"
#: The id scheme (schema.HANDS hand_id, work item names), part of the output's settings: an output written
#: under another scheme is refused rather than given the same hands under second ids.
ID_SCHEME = 2


class LabelWorker:
    """A Ray Data actor: builds the labeler once (model load) and processes one work item per call."""

    def __init__(self, cfg_dict: dict):
        self.cfg = from_dict(LabelConfig, cfg_dict)
        lab = self.cfg.labeler
        self.cores = claim_labeler_cores(lab.cpus_per_labeler, lab.pin_cores, "labeler")
        self.labeler = build_labeler(lab)   # after pinning: the model's threads inherit the cores

    def __call__(self, batch: dict) -> dict:
        if self.cores:   # the thread that runs this call, and those it starts, stay on the claimed cores
            os.sched_setaffinity(0, self.cores)
        results = [process_work_item(WorkItem.from_json(p), self.cfg, self.labeler) for p in batch["payload"]]
        return {k: [r[k] for r in results] for k in results[0]}


# --- the stage -------------------------------------------------------------------------------------------
def open_output(cfg: LabelConfig) -> StageManifest:
    """Open the output's stage manifest with the settings that shape the label output (``StageMismatch``, a
    ValueError, if it holds one made with others). Call it only once the inputs and the output check out."""
    return StageManifest.open(cfg.output, STAGE, {"config": cfg.result_dict(), "id_scheme": ID_SCHEME})


def done_work_ids(output: str) -> set[str]:
    """The work items committed in ``output``: those with a ``segments/`` marker."""
    return {storage.basename(u)[:-len(".parquet")] for u in storage.list_parts(storage.join(output, "segments"))}


def pipeline_of(cfg: LabelConfig) -> str:
    """``actors`` (one actor per work item: decode, label, crop, commit) or ``split`` (label_split: decoding and
    crops in CPU tasks, the model in actors). ``auto``: split for the model labeler (openmmlab) on GPUs, whose
    model wants batches gathered across items and more decoding than its actor's cores give; actors for
    mediapipe and groundtruth, and for openmmlab on CPUs only (the model is all the work there: both paths
    measure the same on the 2-core machine, benchmarks/label_gpu.py split_vs_actors=0.988)."""
    if cfg.label_pipeline != "auto":
        return cfg.label_pipeline
    return "split" if cfg.labeler.backend == "openmmlab" and cfg.labeler.gpus_per_labeler > 0 else "actors"


def labeler_concurrency(cfg: LabelConfig, pipeline: str = "actors") -> int:
    """How many labeler actors: as asked, else as many as the cluster's GPUs (or CPUs) hold; the split pipeline
    on CPUs leaves ``decode_cpus`` for its decode and crop tasks."""
    import ray

    if cfg.num_workers:
        return cfg.num_workers
    res = ray.cluster_resources()
    lab = cfg.labeler
    if lab.gpus_per_labeler > 0:
        return max(1, int(res.get("GPU", 0) / lab.gpus_per_labeler + 1e-9))
    cpus = res.get("CPU", 1) - (cfg.decode_cpus if pipeline == "split" else 0)
    return max(1, int(cpus / max(lab.cpus_per_labeler, 1e-3) + 1e-9))


def labeler_resources(lab) -> dict:
    """A labeler actor's ``num_cpus`` / ``num_gpus`` for ``map_batches``. With a GPU and the default one CPU,
    ``num_cpus`` is left to Ray Data, which reserves that one CPU for GPU map work itself, and does not then
    warn that asking for both is experimental."""
    if not lab.gpus_per_labeler:
        return {"num_cpus": lab.cpus_per_labeler}
    return {"num_gpus": lab.gpus_per_labeler, **({} if lab.cpus_per_labeler == 1 else {"num_cpus": lab.cpus_per_labeler})}


class ClusterTooSmallError(RuntimeError):
    """The cluster cannot run the labelers asked for (naming the flag to change)."""


def _local_ray() -> bool:
    """True when this process started the Ray it uses (nothing can join it with more resources)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return bool(getattr(node, "head", False))


def shortfall(cfg: LabelConfig, n: int, pipeline: str, nodes: list[dict]) -> str | None:
    """Why ``n`` labeler actors (+ the split pipeline's decode CPUs) cannot run on ``nodes``, or None."""
    lab = cfg.labeler
    gpu, cpu = lab.gpus_per_labeler, lab.cpus_per_labeler
    fits = [nd for nd in nodes if nd.get("GPU", 0) + 1e-9 >= gpu and nd.get("CPU", 0) + 1e-9 >= cpu]
    total_gpu = sum(nd.get("GPU", 0) for nd in nodes)
    total_cpu = sum(nd.get("CPU", 0) for nd in nodes)
    if not fits:
        if gpu > 0:
            most = max((nd.get("GPU", 0) for nd in nodes), default=0)
            return (f"--gpus-per-labeler {gpu:g} (with --cpus-per-labeler {cpu:g}) fits no node of the cluster "
                    f"({len(nodes)} node(s), {total_gpu:g} GPUs, at most {most:g} on one node): lower "
                    "--gpus-per-labeler, set it to 0 to label on CPUs, or add GPU nodes")
        return (f"--cpus-per-labeler {cpu:g} fits no node of the cluster ({len(nodes)} node(s), at most "
                f"{max((nd.get('CPU', 0) for nd in nodes), default=0):g} CPUs on one): lower --cpus-per-labeler")
    if gpu > 0 and n * gpu > total_gpu + 1e-9:
        return (f"{n} labeler actors x --gpus-per-labeler {gpu:g} need {n * gpu:g} GPUs; the cluster has "
                f"{total_gpu:g}: lower --num-workers or --gpus-per-labeler")
    extra = cfg.decode_cpus if pipeline == "split" else 0.0
    if n * cpu + extra > total_cpu + 1e-9:
        what = f" + --decode-cpus {extra:g} for the decode and crop tasks" if extra else ""
        return (f"{n} labeler actors x --cpus-per-labeler {cpu:g}{what} need {n * cpu + extra:g} CPUs; the "
                f"cluster has {total_cpu:g}: lower --num-workers or --cpus-per-labeler"
                + (" or --decode-cpus" if extra else ""))
    return None


def ensure_labelers_fit(cfg: LabelConfig, n: int, pipeline: str, wait_s: float) -> None:
    """Return once the cluster can hold the labelers; ``ClusterTooSmallError`` naming the flag at once
    (``wait_s`` 0: a local Ray) or after asking the autoscaler and waiting ``wait_s`` seconds."""
    import ray

    def nodes():
        return [nd["Resources"] for nd in ray.nodes() if nd.get("Alive")]

    why = shortfall(cfg, n, pipeline, nodes())
    if why is None:
        return
    if wait_s <= 0:
        raise ClusterTooSmallError(why)
    from ray.autoscaler.sdk import request_resources

    lab = cfg.labeler
    bundle = {"CPU": lab.cpus_per_labeler, **({"GPU": lab.gpus_per_labeler} if lab.gpus_per_labeler else {})}
    extra = [{"CPU": cfg.decode_cpus}] if pipeline == "split" else []
    request_resources(bundles=[bundle] * n + extra)
    log.info("label: the cluster is too small yet (%s); asked the autoscaler, waiting up to %.0f s "
             "(--labeler-resource-wait)", why, wait_s)
    deadline = time.monotonic() + wait_s
    try:
        while why is not None and time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
            why = shortfall(cfg, n, pipeline, nodes())
    finally:
        request_resources(bundles=[])
    if why is not None:
        raise ClusterTooSmallError(f"after waiting {wait_s:.0f} s (--labeler-resource-wait): {why}")


def run_label_stage(cfg: LabelConfig, progress: bool = True) -> dict:
    """Run the label stage end to end; returns (and logs) the summary."""
    import ray

    t0 = time.time()
    storage.check_writable(cfg.output)   # a missing bucket / bad credentials fail here, before any work
    files = expand_inputs(cfg.inputs, cfg.source)   # a missing input or bad manifest fails here
    manifest = open_output(cfg)          # only now: a refused run leaves no stamp behind
    if manifest.existed:                 # a resume, or more inputs into a finished output
        manifest.update(status="running")
    videos = [f for f in files if f.kind == "video"]
    images = [f for f in files if f.kind == "image"]

    cfg_dict = asdict(cfg)
    done = done_work_ids(cfg.output)
    done_images, started = image_progress(cfg.output, done)
    planned = (pin_partial_videos(plan_all_videos(videos, cfg), done, cfg.output)
               + plan_images(images, cfg.images_per_item, done_images, started))
    items = [{"work_id": it.work_id, "payload": it.to_json()} for it in planned]
    todo = [it for it in items if it["work_id"] not in done]
    skipped = len(items) - len(todo) + sum(w.startswith("img-") for w in done)   # done image chunks aren't replanned
    what = (f"label: {len(videos)} videos, {len(images)} images from {len(cfg.inputs)} inputs -> {cfg.output}: "
            f"{len(todo) + skipped} work items, {skipped} done before")
    if not todo:
        log.info("%s, none to run", what)

    totals: Counter = Counter()
    filtered: Counter = Counter()
    reasons: Counter = Counter()
    if todo:
        lab = cfg.labeler
        pipeline = pipeline_of(cfg)
        n = labeler_concurrency(cfg, pipeline)
        if pipeline == "actors":
            n = min(n, len(todo))
        ensure_labelers_fit(cfg, n, pipeline, 0.0 if _local_ray() else cfg.resource_wait_s)
        log.info("%s; %s pipeline, %d labeler actors, each {CPU: %s, GPU: %s}%s%s", what, pipeline, n,
                 lab.cpus_per_labeler, lab.gpus_per_labeler,
                 ", on cores of its own" if lab.pin_cores and lab.cpus_per_labeler >= 1 else "",
                 f"; decode and crop tasks {{CPU: {cfg.decode_cpus}}}" if pipeline == "split" else "")
        if pipeline == "split":
            from simhand_ray.mining.label_split import run_split
            results = run_split(todo, cfg, n)
        else:
            results = ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
                LabelWorker, fn_constructor_kwargs={"cfg_dict": cfg_dict}, batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=n), **labeler_resources(lab)).iter_rows()  # Ray Data retries an item whose actor died
        bar = progress_bar(len(todo), "label", "item", progress)
        for row in results:
            for k in ("frames_decoded", "frames_kept", "hands_found", "hands_kept", "rejects"):
                totals[k] += int(row[k])
            filtered.update(json.loads(row["filtered"]))
            reasons.update(json.loads(row["reject_reasons"]))
            bar.update(1)
            bar.set_postfix(frames=totals["frames_kept"], hands=totals["hands_kept"], refresh=False)
        bar.close()
    wall = time.time() - t0
    summary = {
        "output": cfg.output, "videos": len(videos), "images": len(images), "work_items": len(todo) + skipped,
        "work_items_skipped_done": skipped, "work_items_run": len(todo),
        "frames_decoded": totals["frames_decoded"], "frames_kept": totals["frames_kept"],
        "hands_found": totals["hands_found"], "hands_kept": totals["hands_kept"],
        "hands_filtered": dict(filtered), "rejects": dict(reasons), "seconds": round(wall, 2),
        "kept_frames_per_second": round(totals["frames_kept"] / wall, 2) if wall > 0 else math.nan,
        "hands_dir": storage.join(cfg.output, "hands"), "rejects_dir": storage.join(cfg.output, "rejects"),
    }
    manifest.finish(summary)
    log.info("label: %d hands kept of %d found in %d frames (%d work items run, %d done before, %d rejects) "
             "in %.1f s", summary["hands_kept"], summary["hands_found"], summary["frames_kept"], len(todo), skipped,
             sum(reasons.values()), wall)
    return summary
