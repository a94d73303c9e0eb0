"""The label stage on Ray Data: input files -> work items -> labeled right-hand crops in Parquet shards.

Data flow:
  1. driver: expand ``--input`` into files (listing only);
  2. probe each video and split it at keyframes into segments (Ray tasks; up to ``INLINE_PLAN_MAX_VIDEOS``
     videos in driver threads instead, as a task's worker start costs more than probing them); images not
     yet labeled are grouped into chunks (an image joins one chunk for good, see ``plan_images``);
     unreadable inputs become reject items. Gathered on the driver (the rows are tiny), which frees every
     CPU for step 3 and gives the progress bar its total;
  3. labeler actors (``map_batches``, one work item per call): decode the segment (1 frame in N, in a
     prefetch thread so decoding overlaps labeling), label, filter, crop, and commit the item.

A work item is the unit of commit: its ``hands/``, ``rejects/`` and finally ``segments/`` files are each
written atomically, and the ``segments/`` file marks it done. A re-run skips done items and redoes the
rest, overwriting their partial files, so a killed job ends with the same hand_ids and no duplicates.
Work items are named after the files' identities (``InputFile.key``), never after the routes or the set of
inputs, so adding, removing or reordering inputs between runs leaves every labeled hand as it was.
"""
from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simhand_ray import schema, storage
from simhand_ray.config import LabelConfig, from_dict
from simhand_ray.mining.affinity import claim_cores
from simhand_ray.mining.crops import crop_hand, encode_jpeg, reject_reason
from simhand_ray.mining.frames import DecodeStats, InputError, Segment, decode_segment, plan_segments, probe_video, read_image
from simhand_ray.mining.inputs import InputFile, digest, expand_inputs
from simhand_ray.mining.labelers import build_labeler
from simhand_ray.mining.labelers.base import FrameRef, Labeler

log = logging.getLogger(__name__)

MANIFEST = "label_manifest.json"
PLAN_TASK_CPUS = 0.5        # a planning task probes + splits videos: mostly I/O
VIDEOS_PER_PLAN_TASK = 16
INLINE_PLAN_MAX_VIDEOS = 256  # fewer are probed in driver threads (~2 ms a local file; a task's start ~1 s)
INLINE_PLAN_THREADS = 8
#: The id scheme (schema.HANDS hand_id, work item names), hashed into the settings stamp: an output
#: written under another scheme is refused rather than given the same hands under second ids.
ID_SCHEME = 2


# --- step 2: work items -------------------------------------------------------------------------------
def plan_video(f: InputFile, cfg: LabelConfig) -> list[dict]:
    """One video -> its segments as work items, or one reject item if it cannot be opened."""
    base = {"uri": f.uri, "source": f.source, "video_id": f.video_id, "key": f.key}
    key = f.key
    try:
        info = probe_video(f.uri, scan=False)
        long = (cfg.max_frames_per_video or info.declared_frames) > cfg.segment_frames
        if long:  # only long videos pay for the demux scan that finds keyframes to split at
            info = probe_video(f.uri, scan=True)
    except InputError as e:
        return [dict(base, work_id=f"{key}-reject", kind="reject", reason=e.reason, detail=e.detail)]
    out = []
    for seg in plan_segments(info, cfg.segment_frames, cfg.max_frames_per_video):
        out.append(dict(base, work_id=f"{key}-{seg.start:010d}", kind="video", start=seg.start, end=seg.end,
                        seek_ts=seg.seek_ts, declared=info.declared_frames))
    return out


def plan_images(files: list[InputFile], per_item: int, done: set[str] = frozenset(),
                started: dict[str, list[dict]] | None = None) -> list[dict]:
    """Images -> chunks as work items. A chunk started before (``started``: work_id -> its images, found
    by ``image_progress``) is redone with the same images, so its partial files are overwritten; images
    in ``done`` (their keys) or in a started chunk are left out; the rest form new chunks of ``per_item``
    in URI order, named after their images' keys."""
    started = started or {}
    out = [{"work_id": wid, "kind": "images", "images": imgs} for wid, imgs in sorted(started.items())]
    taken = set(done) | {m["key"] for imgs in started.values() for m in imgs}
    new = [f for f in files if f.key not in taken]
    for i in range(0, len(new), per_item):
        chunk = new[i:i + per_item]
        out.append({"work_id": "img-" + digest("\x1f".join(f.key for f in chunk)), "kind": "images",
                    "images": [asdict(f) for f in chunk]})
    return out


def _chunk_images(uri: str) -> list[dict]:
    """The images of a chunk, recorded in its hands/ or segments/ file's metadata."""
    fs, path = storage.resolve(uri)
    meta = pq.read_schema(path, filesystem=fs).metadata or {}
    return json.loads(meta.get(b"images", b"[]"))


def image_progress(output: str, done: set[str]) -> tuple[set[str], dict[str, list[dict]]]:
    """(keys of the images in committed chunks, work_id -> images of each chunk started but not
    committed: its hands/ file is written, its segments/ marker is not)."""
    def files(sub: str, ids) -> list[str]:
        return [storage.join(output, sub, f"{w}.parquet") for w in sorted(ids)]

    hands = {storage.basename(u)[:-len(".parquet")] for u in storage.list_files(storage.join(output, "hands"), (".parquet",))}
    committed = [w for w in done if w.startswith("img-")]
    started = [w for w in hands - done if w.startswith("img-")]
    with ThreadPoolExecutor(INLINE_PLAN_THREADS) as pool:   # footers only; many small reads on S3
        done_imgs = list(pool.map(_chunk_images, files("segments", committed)))
        started_imgs = list(pool.map(_chunk_images, files("hands", started)))
    return ({m["key"] for imgs in done_imgs for m in imgs}, dict(zip(sorted(started), started_imgs)))


def pin_partial_videos(items: list[dict], done: set[str], output: str) -> list[dict]:
    """A video with some segments done keeps the source and video_id it was labeled under, though this
    run reaches it by another route (another input naming the same file)."""
    done_keys = {w.rsplit("-", 1)[0] for w in done if not w.startswith("img-")}
    pinned: dict[str, dict] = {}
    out = []
    for it in items:
        if it["kind"] == "video" and it["work_id"] not in done and it["key"] in done_keys:
            if it["key"] not in pinned:
                marker = next(w for w in sorted(done) if w.startswith(it["key"] + "-"))
                row = storage.read_parquet(storage.join(output, "segments", f"{marker}.parquet")).to_pylist()[0]
                pinned[it["key"]] = {k: row[k] for k in ("uri", "source", "video_id")}
            it = dict(it, **pinned[it["key"]])
        out.append(it)
    return out


def plan_videos(files: list[dict], cfg_dict: dict) -> list[dict]:
    """A chunk of videos -> their work items (runs as a Ray task: probing opens every file)."""
    cfg = from_dict(LabelConfig, cfg_dict)
    return [item for f in files for item in plan_video(InputFile(**f), cfg)]


def plan_all_videos(videos: list[InputFile], cfg: LabelConfig) -> list[dict]:
    """Every video's work items: in driver threads for a few videos, else in parallel Ray tasks."""
    import ray

    t0 = time.time()
    if len(videos) <= INLINE_PLAN_MAX_VIDEOS:
        with ThreadPoolExecutor(INLINE_PLAN_THREADS) as pool:   # probing is I/O: opening, demuxing
            parts = list(pool.map(lambda f: plan_video(f, cfg), videos))
        where = "driver threads"
    else:
        plan = ray.remote(num_cpus=PLAN_TASK_CPUS)(plan_videos)
        per = VIDEOS_PER_PLAN_TASK
        chunks = [[asdict(f) for f in videos[i:i + per]] for i in range(0, len(videos), per)]
        log.info("label: %d planning tasks, each {CPU: %s}", len(chunks), PLAN_TASK_CPUS)
        parts = ray.get([plan.remote(c, asdict(cfg)) for c in chunks])
        where = f"{len(chunks)} Ray tasks"
    if videos:
        log.info("label: planned %d videos in %.1f s (%s)", len(videos), time.time() - t0, where)
    return [it for part in parts for it in part]


# --- step 3: one work item -----------------------------------------------------------------------------
def prefetch(items: Iterable, size: int = 8) -> Iterator:
    """Run an iterator in a background thread, ``size`` items ahead (PyAV decodes without the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=size)
    done = object()

    def fill():
        try:
            for x in items:
                q.put(x)
        except BaseException as e:  # handed to the consumer, re-raised there
            q.put(e)
        q.put(done)

    threading.Thread(target=fill, daemon=True).start()
    while (x := q.get()) is not done:
        if isinstance(x, BaseException):
            raise x
        yield x


def _frames_of(item: dict, cfg: LabelConfig, dstats: DecodeStats, rejects: list) -> Iterator[tuple[FrameRef, dict, np.ndarray]]:
    """(where, identity, RGB frame) for the frames of a work item; unreadable images go to ``rejects``."""
    if item["kind"] == "video":
        seg = Segment(item["start"], item["end"], item["seek_ts"])
        ident = {"uri": item["uri"], "source": item["source"], "video_id": item["video_id"], "key": item["key"]}
        for idx, frame in decode_segment(item["uri"], seg, cfg.every_n, cfg.decode_mode, dstats):
            yield FrameRef(item["uri"], item["video_id"], idx), dict(ident, frame_index=idx), frame
    else:
        for f in item["images"]:
            try:
                frame = read_image(f["uri"])
            except InputError as e:
                rejects.append(_reject(f, -1, -1, e.reason, e.detail))
                continue
            dstats.decoded += 1
            dstats.kept += 1
            yield FrameRef(f["uri"], f["video_id"], 0), dict(uri=f["uri"], source=f["source"], video_id=f["video_id"],
                                                               key=f["key"], frame_index=0), frame


def _reject(f: dict, start: int, end: int, reason: str, detail: str) -> dict:
    return {"uri": f["uri"], "source": f["source"], "video_id": f["video_id"], "segment_start": start,
            "segment_end": end, "reason": reason, "detail": detail}


def _batched(it: Iterator, n: int) -> Iterator[list]:
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def hands_rows(ident: dict, frame: np.ndarray, hands, cfg: LabelConfig, filtered: Counter) -> list[dict]:
    """Filter and crop the hands of one frame into ``schema.HANDS`` rows (hand_index over kept hands);
    ``ident``: the frame's uri, source, video_id, frame_index and its file's key."""
    h, w = frame.shape[:2]
    kept = []
    for hand in sorted(hands, key=lambda d: (-d.det_score, float(d.box[0]))):
        why = reject_reason(hand, w, h, cfg.filter)
        if why:
            filtered[why] += 1
        else:
            kept.append(hand)
    rows = []
    for i, hand in enumerate(kept):
        c = crop_hand(frame, hand, cfg.crop)
        rows.append({
            "hand_id": schema.hand_id(ident["source"], ident["video_id"], ident["frame_index"], i, ident["key"]),
            "uri": ident["uri"], "source": ident["source"], "video_id": ident["video_id"],
            "frame_index": ident["frame_index"], "hand_index": i, "image_width": w, "image_height": h,
            "box": [float(v) for v in hand.box], "crop_box": c.crop_box.tolist(),
            "handedness": hand.handedness, "handedness_score": float(hand.handedness_score),
            "det_score": float(hand.det_score), "keypoints": c.keypoints.reshape(-1).tolist(),
            "keypoint_scores": [float(s) for s in hand.keypoint_scores],
            "crop_jpeg": encode_jpeg(c.image, cfg.crop.jpeg_quality),
        })
    return rows


def process_work_item(item: dict, cfg: LabelConfig, labeler: Labeler | None) -> dict:
    """Decode, label, filter, crop and commit one work item; returns its ``schema.SEGMENTS`` row + details."""
    t0 = time.time()
    out = storage.join(cfg.output)
    rows, rejects, filtered, found = [], [], Counter(), 0
    dstats = DecodeStats()
    if item["kind"] == "reject":
        rejects.append(_reject(item, -1, -1, item["reason"], item["detail"]))
    else:
        frames = prefetch(_frames_of(item, cfg, dstats, rejects), size=2 * cfg.labeler.batch_size)
        for batch in _batched(frames, cfg.labeler.batch_size):
            labels = labeler.label([b[2] for b in batch], [b[0] for b in batch])
            for (_, ident, frame), hands in zip(batch, labels):
                found += len(hands)
                rows.extend(hands_rows(ident, frame, hands, cfg, filtered))
        if item["kind"] == "video":
            expected = min(item["end"], item["declared"] or item["end"]) - item["start"]
            if cfg.decode_mode == "all" and expected < 2**61 and dstats.decoded < expected:
                rejects.append(_reject(item, item["start"], item["end"], "truncated",
                                       f"decoded {dstats.decoded} of {expected} frames the header declares "
                                       f"in [{item['start']}, {item['end']}); the decoded frames were kept"))
    wid = item["work_id"]
    meta = {"images": item["images"]} if item["kind"] == "images" else None   # see image_progress
    storage.write_parquet_atomic(pa.Table.from_pylist(rows, schema.HANDS), storage.join(out, "hands", f"{wid}.parquet"), meta)
    if rejects:
        storage.write_parquet_atomic(pa.Table.from_pylist(rejects, schema.REJECTS),
                                     storage.join(out, "rejects", f"{wid}.parquet"))
    first = item if item["kind"] != "images" else item["images"][0]
    seg_row = {
        "work_id": wid, "uri": first["uri"], "source": first["source"], "video_id": first["video_id"],
        "kind": item["kind"], "segment_start": item.get("start", -1),
        "segment_end": item.get("end", -1) if item.get("end", -1) < 2**61 else -1,
        "frames_decoded": dstats.decoded, "frames_kept": dstats.kept, "hands_found": found,
        "hands_kept": len(rows), "rejects": len(rejects), "seconds": time.time() - t0,
    }
    storage.write_parquet_atomic(pa.Table.from_pylist([seg_row], schema.SEGMENTS),
                                 storage.join(out, "segments", f"{wid}.parquet"), meta)
    return dict(seg_row, filtered=json.dumps(dict(filtered)),
                reject_reasons=json.dumps(dict(Counter(r["reason"] for r in rejects))))


class LabelWorker:
    """A Ray Data actor: builds the labeler once (model load) and processes one work item per call."""

    def __init__(self, cfg_dict: dict):
        self.cfg = from_dict(LabelConfig, cfg_dict)
        lab = self.cfg.labeler
        self.cores = claim_cores(lab.cpus_per_labeler) if lab.pin_cores and lab.cpus_per_labeler >= 1 else None
        log.info("labeler pid %d pinned to cores %s", os.getpid(), sorted(self.cores) if self.cores else "none")
        self.labeler = build_labeler(lab)   # after pinning: the model's threads inherit the cores

    def __call__(self, batch: dict) -> dict:
        if self.cores:   # the thread that runs this call, and those it starts, stay on the claimed cores
            os.sched_setaffinity(0, self.cores)
        results = [process_work_item(json.loads(p), self.cfg, self.labeler) for p in batch["payload"]]
        return {k: [r[k] for r in results] for k in results[0]}


# --- the stage -------------------------------------------------------------------------------------------
def check_manifest(cfg: LabelConfig) -> None:
    """Stamp the output with the settings' hash, or refuse it if it holds a label output written with other
    settings. The stamp is created only if absent (atomic), so of two jobs started together with different
    settings one is refused. Call it only once the inputs and the output check out."""
    uri = storage.join(cfg.output, MANIFEST)
    settings = {"config": cfg.result_dict(), "id_scheme": ID_SCHEME}
    stamp = {"config_hash": storage.config_hash(settings), **settings}
    if storage.create_if_absent(uri, json.dumps(stamp, indent=2, sort_keys=True).encode()):
        return
    old = storage.read_json(uri)
    if old.get("config_hash") != stamp["config_hash"]:
        raise ValueError(f"{cfg.output} holds a label output written with other settings or another id scheme "
                         f"(hash {old.get('config_hash')} != {stamp['config_hash']}); use another --output")


def done_work_ids(output: str) -> set[str]:
    return {storage.basename(u)[:-len(".parquet")] for u in storage.list_files(storage.join(output, "segments"), (".parquet",))}


def labeler_concurrency(cfg: LabelConfig) -> int:
    """How many labeler actors: as asked, else as many as the cluster's GPUs (or CPUs) hold."""
    import ray

    if cfg.num_workers:
        return cfg.num_workers
    res = ray.cluster_resources()
    lab = cfg.labeler
    if lab.gpus_per_labeler > 0:
        return max(1, int(res.get("GPU", 0) // lab.gpus_per_labeler))
    return max(1, int(res.get("CPU", 1) // max(lab.cpus_per_labeler, 1e-3)))


def run_label_stage(cfg: LabelConfig, progress: bool = True) -> dict:
    """Run the label stage end to end; returns (and logs) the summary."""
    import ray
    from tqdm import tqdm

    t0 = time.time()
    storage.check_writable(cfg.output)   # a missing bucket / bad credentials fail here, before any work
    files = expand_inputs(cfg.inputs, cfg.source)   # a missing input or bad manifest fails here
    check_manifest(cfg)                  # only now: a refused run leaves no stamp behind
    videos = [f for f in files if f.kind == "video"]
    images = [f for f in files if f.kind == "image"]
    log.info("label: %d videos, %d images from %d inputs -> %s", len(videos), len(images), len(cfg.inputs), cfg.output)

    cfg_dict = asdict(cfg)
    done = done_work_ids(cfg.output)
    done_images, started = image_progress(cfg.output, done)
    planned = (pin_partial_videos(plan_all_videos(videos, cfg), done, cfg.output)
               + plan_images(images, cfg.images_per_item, done_images, started))
    items = [{"work_id": it["work_id"], "payload": json.dumps(it)} for it in planned]
    todo = [it for it in items if it["work_id"] not in done]
    skipped = len(items) - len(todo) + sum(w.startswith("img-") for w in done)   # done image chunks aren't replanned
    log.info("label: %d work items, %d already done, %d to run", len(todo) + skipped, skipped, len(todo))

    totals: Counter = Counter()
    filtered: Counter = Counter()
    reasons: Counter = Counter()
    if todo:
        lab = cfg.labeler
        n = min(labeler_concurrency(cfg), len(todo))
        log.info("label: %d labeler actors, each {CPU: %s, GPU: %s}%s", n, lab.cpus_per_labeler, lab.gpus_per_labeler,
                 ", on cores of its own" if lab.pin_cores and lab.cpus_per_labeler >= 1 else "")
        ds = ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(
            LabelWorker, fn_constructor_kwargs={"cfg_dict": cfg_dict}, batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=n), num_cpus=lab.cpus_per_labeler,
            num_gpus=lab.gpus_per_labeler or None)  # Ray Data retries an item whose actor died
        bar = tqdm(total=len(todo), unit="item", desc="label", disable=not progress, mininterval=2)
        for row in ds.iter_rows():
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
    manifest = storage.read_json(storage.join(cfg.output, MANIFEST))
    manifest["last_run"] = summary
    storage.write_json_atomic(storage.join(cfg.output, MANIFEST), manifest)
    log.info("label summary:\n%s", json.dumps(summary, indent=2))
    return summary
