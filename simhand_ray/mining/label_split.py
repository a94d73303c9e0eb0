"""The split label pipeline for model labelers (openmmlab): decoding and crops on CPU, the model in actors.

One Ray Data pipeline of three operators, then the commit on the driver:

  1. ``decode_items`` (CPU tasks, ``decode_cpus`` each, one work item per task): decodes the item's frames (1 in N)
     and emits them as rows (``frame`` rows: the raw RGB bytes, their shape, the file and frame index; ``seq``
     numbers them in decode order), then one ``end`` row with the item's decode counts, its rejects (unreadable
     images, a truncated video) and ``seq`` = how many frame rows came before it;
  2. ``ModelLabelWorker`` (actors, ``{CPU: cpus_per_labeler, GPU: gpus_per_labeler}``): batches of
     ``batch_size`` rows gathered across work items go through the detector + pose model at once; ``end`` rows
     pass through;
  3. ``crop_frames`` (CPU tasks): the quality filter, crops and JPEG encoding of each frame's hands (the same
     ``label_item.hands_rows`` as the actor path) -> small rows without the frame. A labeler on CPUs crops in
     its own process instead: there a crop is ~1% of a frame's model time, and crop tasks a few seconds apart
     each started a fresh Ray worker (Ray ends idle workers beyond one per CPU after a second), ~1.5 CPU-s
     per start: the split pipeline on 2 cores ran 15% slower per frame than the actor path with them;
  4. the driver (``ItemAssembler``) gathers each item's rows by ``work_id`` in any order, and once all its
     frames and its ``end`` row are in, commits the item (``label_item.commit_item``, in a writer thread): its
     ``hands/`` and ``rejects/`` files, then its ``segments/`` marker.

The work item stays the unit of commit: an item whose marker is missing is redone whole by a re-run, so a
killed job ends with the same hand_ids and no duplicates. Rows are ordered by ``seq`` before writing, so an
item's files are the ones the actor path writes from the same labels.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from typing import Iterator

import numpy as np

from simhand_ray.config import LabelConfig, from_dict
from simhand_ray.mining.affinity import claim_labeler_cores
from simhand_ray.mining.frames import DecodeStats
from simhand_ray.mining.inputs import InputFile
from simhand_ray.mining.label_item import _frames_of, commit_item, hands_rows
from simhand_ray.mining.labelers.base import FrameRef
from simhand_ray.mining.work_items import WorkItem

log = logging.getLogger(__name__)

COLUMNS = ("work_id", "kind", "seq", "frame_index", "file", "height", "width", "frame", "hands", "end")
WRITER_THREADS = 4


def _row(work_id: str, kind: str, seq: int, frame_index: int = -1, file: str = "", frame: np.ndarray | None = None,
         end: str = "") -> dict:
    h, w = frame.shape[:2] if frame is not None else (0, 0)
    return {"work_id": work_id, "kind": kind, "seq": seq, "frame_index": frame_index, "file": file, "height": h,
            "width": w, "frame": frame.tobytes() if frame is not None else b"", "hands": b"", "end": end}


def _columns(rows: list[dict]) -> dict:
    return {k: [r[k] for r in rows] for k in COLUMNS}


def decode_items(batch: dict, cfg_dict: dict, rows_per_batch: int = 16) -> Iterator[dict]:
    """Ray Data task: the work items of ``batch["payload"]`` -> their frame rows, ``rows_per_batch`` at a time,
    and one ``end`` row each (decode counts, rejects, the item itself)."""
    cfg = from_dict(LabelConfig, cfg_dict)
    for payload in batch["payload"]:
        item = WorkItem.from_json(payload)
        t0 = time.time()
        dstats, rejects, rows, seq = DecodeStats(), [], [], 0
        files: dict[str, str] = {}
        for ref, f, frame in _frames_of(item, cfg, dstats, rejects):
            fj = files.setdefault(f.key, json.dumps(asdict(f)))
            rows.append(_row(item.work_id, "frame", seq, ref.frame_index, fj, np.ascontiguousarray(frame)))
            seq += 1
            if len(rows) >= rows_per_batch:
                yield _columns(rows)
                rows = []
        end = {"item": payload, "decoded": dstats.decoded, "kept": dstats.kept, "rejects": rejects, "t0": t0}
        rows.append(_row(item.work_id, "end", seq, end=json.dumps(end)))
        yield _columns(rows)


def _frame(batch: dict, i: int) -> np.ndarray:
    return np.frombuffer(batch["frame"][i], np.uint8).reshape(int(batch["height"][i]), int(batch["width"][i]), 3)


class ModelLabelWorker:
    """Ray Data actor: the model labeler, built once; labels the frame rows of each batch in one call."""

    def __init__(self, cfg_dict: dict):
        from simhand_ray.mining.labelers import build_labeler

        self.cfg = from_dict(LabelConfig, cfg_dict)
        lab = self.cfg.labeler
        self.on_cpus = not lab.gpus_per_labeler
        # On CPUs the model is the node's work: a core of its own (when one is free) even for a fraction of a
        # CPU asked (the decode tasks take the rest), as many model threads as whole CPUs asked (at least one).
        cores = math.ceil(lab.cpus_per_labeler) if self.on_cpus else lab.cpus_per_labeler
        self.cores = claim_labeler_cores(cores, lab.pin_cores, "model labeler")
        if self.on_cpus:
            import torch
            torch.set_num_threads(max(1, int(lab.cpus_per_labeler)))
        self.labeler = build_labeler(lab)

    def __call__(self, batch: dict) -> dict:
        if self.cores:
            os.sched_setaffinity(0, self.cores)
        idx = [i for i, k in enumerate(batch["kind"]) if k == "frame"]
        hands = [b""] * len(batch["kind"])
        if idx:
            refs = [FrameRef("", "", int(batch["frame_index"][i])) for i in idx]
            if self.cfg.labeler.backend == "groundtruth":   # looks hands up by file: give it the real refs
                files = [InputFile(**json.loads(batch["file"][i])) for i in idx]
                refs = [FrameRef(f.uri, f.video_id, r.frame_index) for f, r in zip(files, refs)]
            labels = self.labeler.label([_frame(batch, i) for i in idx], refs)
            for i, h in zip(idx, labels):
                hands[i] = pickle.dumps(h, protocol=pickle.HIGHEST_PROTOCOL)
        out = {k: list(batch[k]) for k in COLUMNS if k != "hands"}
        out["hands"] = hands
        return crop_rows(out, self.cfg) if self.on_cpus else out


def crop_frames(batch: dict, cfg_dict: dict) -> dict:
    """Ray Data task: ``crop_rows`` of a batch of labeled frame rows."""
    return crop_rows(batch, from_dict(LabelConfig, cfg_dict))


def crop_rows(batch: dict, cfg: LabelConfig) -> dict:
    """Each frame row's hands filtered, cropped and JPEG-encoded into ``schema.HANDS`` rows (pickled in
    ``rows``); the frame itself is dropped. ``end`` rows pass through."""
    out = {k: [] for k in ("work_id", "kind", "seq", "rows", "found", "filtered", "end")}
    for i, kind in enumerate(batch["kind"]):
        rows, found, filtered = [], 0, Counter()
        if kind == "frame":
            f = InputFile(**json.loads(batch["file"][i]))
            hands = pickle.loads(batch["hands"][i])
            found = len(hands)
            rows = hands_rows(f, int(batch["frame_index"][i]), _frame(batch, i), hands, cfg, filtered)
        out["work_id"].append(batch["work_id"][i])
        out["kind"].append(kind)
        out["seq"].append(int(batch["seq"][i]))
        out["rows"].append(pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL))
        out["found"].append(found)
        out["filtered"].append(json.dumps(dict(filtered)))
        out["end"].append(batch["end"][i])
    return out


class ItemAssembler:
    """The driver's side: gathers each work item's rows (any order, duplicates ignored) and commits the item in a
    writer thread once its ``end`` row and all the frame rows it counts are in."""

    def __init__(self, cfg: LabelConfig, threads: int = WRITER_THREADS):
        self.cfg = cfg
        self.pending: dict[str, dict] = {}
        self.pool = ThreadPoolExecutor(threads)

    def add(self, row: dict) -> Future | None:
        """One row of ``crop_frames``' output; the commit's future when it completes its item."""
        wid = row["work_id"]
        st = self.pending.setdefault(wid, {"frames": {}, "end": None})
        if row["kind"] == "end":
            st["end"] = json.loads(row["end"])
            st["n"] = int(row["seq"])
        else:
            st["frames"][int(row["seq"])] = (pickle.loads(row["rows"]), int(row["found"]),
                                             Counter(json.loads(row["filtered"])))
        if st["end"] is None or len(st["frames"]) < st["n"]:
            return None
        del self.pending[wid]
        return self.pool.submit(self._commit, st)

    def _commit(self, st: dict) -> dict:
        end = st["end"]
        rows, found, filtered = [], 0, Counter()
        for seq in sorted(st["frames"]):
            r, n, f = st["frames"][seq]
            rows.extend(r)
            found += n
            filtered.update(f)
        dstats = DecodeStats(decoded=end["decoded"], kept=end["kept"])
        return commit_item(WorkItem.from_json(end["item"]), self.cfg, rows, end["rejects"], dstats, found, filtered,
                           end["t0"])

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def split_dataset(todo: list[dict], cfg: LabelConfig, n_labelers: int):
    """The Ray Data pipeline (lazy) of decode tasks -> ``n_labelers`` model actors -> crop tasks."""
    import ray

    from simhand_ray.mining.label_stage import labeler_resources

    lab = cfg.labeler
    cfg_dict = asdict(cfg)
    rows_per_batch = max(1, min(lab.batch_size, 64))
    ds = ray.data.from_items(todo, override_num_blocks=len(todo))
    ds = ds.map_batches(decode_items, fn_kwargs={"cfg_dict": cfg_dict, "rows_per_batch": rows_per_batch},
                        batch_size=1, num_cpus=cfg.decode_cpus)
    ds = ds.map_batches(ModelLabelWorker, fn_constructor_kwargs={"cfg_dict": cfg_dict}, batch_size=lab.batch_size,
                        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n_labelers),
                        **labeler_resources(lab))
    if not lab.gpus_per_labeler:   # labelers on CPUs crop in their own process (module docstring, 3.)
        return ds
    return ds.map_batches(crop_frames, fn_kwargs={"cfg_dict": cfg_dict}, batch_size=rows_per_batch,
                          batch_format="numpy", num_cpus=cfg.decode_cpus)


def run_split(todo: list[dict], cfg: LabelConfig, n_labelers: int) -> Iterator[dict]:
    """Run the split pipeline over the work items ``todo``; yields each item's commit result as it lands."""
    asm = ItemAssembler(cfg)
    futures: list[Future] = []
    try:
        for row in split_dataset(todo, cfg, n_labelers).iter_rows():
            if (fut := asm.add(row)) is not None:
                futures.append(fut)
            while futures and futures[0].done():
                yield futures.pop(0).result()
        for fut in futures:
            yield fut.result()
        if asm.pending:   # cannot happen unless rows were lost: never commit a partial item
            raise RuntimeError(f"label: {len(asm.pending)} work items ended incomplete: {sorted(asm.pending)[:5]}")
    finally:
        asm.close()
