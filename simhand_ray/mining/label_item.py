"""One work item, labeled and committed: decode its frames (in a prefetch thread, so decoding overlaps
labeling), label them in batches, filter and crop the hands, and write the item's files.

A work item is the unit of commit: its ``hands/``, ``rejects/`` and finally ``segments/`` files are each
written atomically, and the ``segments/`` file marks it done. A re-run redoes an item without its marker,
overwriting its partial files, so a killed job ends with the same hand_ids and no duplicates.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from simhand_ray import schema, storage
from simhand_ray.config import LabelConfig
from simhand_ray.mining.crops import crop_hand, encode_jpeg, reject_reason
from simhand_ray.mining.frames import DecodeStats, InputError, decode_segment, read_image
from simhand_ray.mining.inputs import InputFile
from simhand_ray.mining.labelers.base import FrameRef, Labeler
from simhand_ray.mining.work_items import WorkItem, chunk_metadata


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


def _batched(it: Iterator, n: int) -> Iterator[list]:
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _reject(f: InputFile, frames: tuple[int, int], reason: str, detail: str) -> dict:
    """A ``schema.REJECTS`` row for ``f`` (``frames``: the segment's range, or (-1, -1))."""
    return {"uri": f.uri, "source": f.source, "video_id": f.video_id, "segment_start": frames[0],
            "segment_end": frames[1], "reason": reason, "detail": detail}


def _frames_of(item: WorkItem, cfg: LabelConfig, dstats: DecodeStats,
               rejects: list) -> Iterator[tuple[FrameRef, InputFile, np.ndarray]]:
    """(where, which file, RGB frame) for the frames of a work item. What the item cannot give goes to
    ``rejects``: a planned reject, unreadable images, a video segment shorter than its header declares (once
    its frames are out)."""
    if item.kind == "reject":
        rejects.append(_reject(item.file, (-1, -1), item.reason, item.detail))
        return
    if item.kind == "video":
        f = item.file
        for idx, frame in decode_segment(f.uri, item.segment, cfg.every_n, cfg.decode_mode, dstats):
            yield FrameRef(f.uri, f.video_id, idx), f, frame
        if cut := _truncation(item, cfg, dstats.decoded):
            rejects.append(cut)
        return
    for f in item.images:
        try:
            frame = read_image(f.uri)
        except InputError as e:
            rejects.append(_reject(f, (-1, -1), e.reason, e.detail))
            continue
        dstats.decoded += 1
        dstats.kept += 1
        yield FrameRef(f.uri, f.video_id, 0), f, frame


def hands_rows(f: InputFile, frame_index: int, frame: np.ndarray, hands, cfg: LabelConfig,
               filtered: Counter) -> list[dict]:
    """Filter and crop the hands of one frame of ``f`` into ``schema.HANDS`` rows (hand_index over kept
    hands); the reasons of the hands filtered out are counted in ``filtered``."""
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
            "hand_id": schema.hand_id(f.source, f.video_id, frame_index, i, f.key),
            "uri": f.uri, "source": f.source, "video_id": f.video_id,
            "frame_index": frame_index, "hand_index": i, "image_width": w, "image_height": h,
            "box": [float(v) for v in hand.box], "crop_box": c.crop_box.tolist(),
            "handedness": hand.handedness, "handedness_score": float(hand.handedness_score),
            "det_score": float(hand.det_score), "keypoints": c.keypoints.reshape(-1).tolist(),
            "keypoint_scores": [float(s) for s in hand.keypoint_scores],
            "crop_jpeg": encode_jpeg(c.image, cfg.crop.jpeg_quality),
        })
    return rows


def _truncation(item: WorkItem, cfg: LabelConfig, decoded: int) -> dict | None:
    """The ``truncated`` reject of a video segment that decoded fewer frames than its header declares."""
    limits = [n for n in (item.end, item.declared) if n]
    expected = min(limits) - item.start if limits else None     # None: the video's length is unknown
    if cfg.decode_mode != "all" or expected is None or decoded >= expected:
        return None
    return _reject(item.file, item.frame_range, "truncated",
                   f"decoded {decoded} of {expected} frames the header declares "
                   f"in [{item.start}, {item.end}); the decoded frames were kept")


def process_work_item(item: WorkItem, cfg: LabelConfig, labeler: Labeler | None) -> dict:
    """Decode, label, filter, crop and commit one work item; returns its ``schema.SEGMENTS`` row + details."""
    t0 = time.time()
    rows, rejects, filtered, found = [], [], Counter(), 0
    dstats = DecodeStats()
    frames = prefetch(_frames_of(item, cfg, dstats, rejects), size=2 * cfg.labeler.batch_size)
    for batch in _batched(frames, cfg.labeler.batch_size):
        labels = labeler.label([b[2] for b in batch], [b[0] for b in batch])
        for (ref, f, frame), hands in zip(batch, labels):
            found += len(hands)
            rows.extend(hands_rows(f, ref.frame_index, frame, hands, cfg, filtered))
    return commit_item(item, cfg, rows, rejects, dstats, found, filtered, t0)


def commit_item(item: WorkItem, cfg: LabelConfig, rows: list[dict], rejects: list[dict], dstats: DecodeStats,
                found: int, filtered: Counter, t0: float) -> dict:
    """Write one work item's ``hands/`` and ``rejects/`` files, then its ``segments/`` marker (each atomically);
    returns its ``schema.SEGMENTS`` row + details (``filtered``, ``reject_reasons`` as JSON)."""
    out = storage.join(cfg.output)
    wid = item.work_id
    meta = chunk_metadata(item)
    storage.write_parquet_atomic(pa.Table.from_pylist(rows, schema.HANDS), storage.join(out, "hands", f"{wid}.parquet"), meta)
    if rejects:
        storage.write_parquet_atomic(pa.Table.from_pylist(rejects, schema.REJECTS),
                                     storage.join(out, "rejects", f"{wid}.parquet"))
    first = item.file or item.images[0]
    start, end = item.frame_range
    seg_row = {
        "work_id": wid, "uri": first.uri, "source": first.source, "video_id": first.video_id,
        "kind": item.kind, "segment_start": start, "segment_end": end,
        "frames_decoded": dstats.decoded, "frames_kept": dstats.kept, "hands_found": found,
        "hands_kept": len(rows), "rejects": len(rejects), "seconds": time.time() - t0,
    }
    storage.write_parquet_atomic(pa.Table.from_pylist([seg_row], schema.SEGMENTS),
                                 storage.join(out, "segments", f"{wid}.parquet"), meta)
    return dict(seg_row, filtered=json.dumps(dict(filtered)),
                reject_reasons=json.dumps(dict(Counter(r["reason"] for r in rejects))))
