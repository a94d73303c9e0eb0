"""The graph stage (SPEC §2): ``output/hands`` -> ``output/graph``, the K nearest hands of every hand from
other videos, written part by part through the stage protocol (``simhand_ray.stage``) so a re-run resumes.

Two rules keep a hand from being its own positive:

- **the same video**: hands that share a ``video_id`` are never neighbours, whatever their ``source``. The
  video_id is the file's path below its input folder (or a manifest's ``video_id``), so the same clip under
  two input folders (two dumps, a re-upload) is one video; two data sets that both name a file
  ``0001.mp4`` lose each other's hands of that name as candidates, a few candidates and never a wrong pair.
- **the same picture**: a neighbour whose crop is a near-duplicate of the hand's own (``graph.duplicates``:
  64-bit perceptual hashes within ``index.near_duplicate_bits`` bits) is dropped after the search, so a
  copy under another name (a frame re-encoded or resized, a damaged copy of a video) is not a positive.

``graph/`` is one dataset of schema GRAPH with a row for every hand: ``part-*.parquet`` for the hands with
a descriptor, in (video_id, source, hand_id) order, and ``excluded.parquet`` (empty neighbour lists) for
those without one. Side files start with ``_`` so dataset readers skip them: ``_manifest.json``,
``_excluded.json`` (why each excluded hand has no descriptor) and ``_pca.npz`` (when PCA is on). The
summary counts what was kept out of the lists and why (``excluded_neighbors``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simhand_ray import storage
from simhand_ray.config import GraphConfig
from simhand_ray.graph.descriptors import Descriptors, fit_pca, hand_descriptors
from simhand_ray.graph.duplicates import CropHashes, crop_hashes
from simhand_ray.graph.knn import ShardedKnn, shard_bounds, video_ranges
from simhand_ray.schema import GRAPH, HANDS, keypoints_array
from simhand_ray.stage import StageManifest, StageRefused

log = logging.getLogger(__name__)

EXCLUDED = "excluded.parquet"
EXCLUDED_REASONS = "_excluded.json"
PCA = "_pca.npz"


#: Per-part counts of near-duplicates dropped, stamped into each part beside its config hash.
PART_COUNTS = "near_duplicates"


def _hands_fingerprint(hand_ids: pa.Array, keypoints: np.ndarray, crop_hash: np.ndarray, crop_ok: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update("\n".join(hand_ids.to_pylist()).encode())
    h.update(np.ascontiguousarray(keypoints, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(np.where(crop_ok, crop_hash, 0), dtype=np.uint64).tobytes())
    h.update(np.ascontiguousarray(crop_ok).tobytes())
    return h.hexdigest()[:16]


def _list_array(values: pa.Array, lengths: np.ndarray) -> pa.Array:
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def graph_table(hand_ids: pa.Array, rows: np.ndarray, ids: np.ndarray, dist: np.ndarray) -> pa.Table:
    """GRAPH rows for the hands ``rows`` (B,) (indices into hand_ids); ids (B, k) -1-padded; dist (B, k)."""
    ok = ids >= 0
    lengths = ok.sum(axis=1)
    neighbor = hand_ids.take(pa.array(ids[ok]))
    return pa.table({
        "hand_id": hand_ids.take(pa.array(rows)),
        "neighbor_ids": _list_array(neighbor, lengths),
        "distances": _list_array(pa.array(dist[ok].astype(np.float32)), lengths),
    }, schema=GRAPH)


def duplicate_ids_message(hands_uri: str, hand_ids, show: int = 5) -> str:
    """Which hand_ids repeat (up to ``show``), and for each the hands/ files and input files holding it."""
    counts = pc.value_counts(hand_ids)
    dup = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    shown = dup.slice(0, show)
    where: dict[str, list[str]] = {i: [] for i in shown.to_pylist()}
    for f in storage.list_parts(hands_uri):
        t = storage.read_parquet(f, columns=["hand_id", "uri"], schema=HANDS)
        t = t.filter(pc.is_in(t["hand_id"], value_set=shown))
        for i, uri in zip(t["hand_id"].to_pylist(), t["uri"].to_pylist()):
            where[i].append(f"{storage.basename(f)} (from {uri})")
    lines = "\n".join(f"  {i}: {'; '.join(w)}" for i, w in where.items())
    return (f"hand_id is not unique in {hands_uri}: {len(dup)} ids repeat, e.g.\n{lines}\n"
            "(the same hands written twice; relabel into a fresh --output)")


def _read_hands_file(uri: str) -> pa.Table:
    """One hands file's hand_id, source, video_id, keypoints, and its crops' perceptual hashes (the JPEGs are
    hashed here and let go, so the driver never holds every crop)."""
    t = storage.read_parquet(uri, columns=["hand_id", "source", "video_id", "keypoints", "crop_jpeg"], schema=HANDS)
    h = crop_hashes(t["crop_jpeg"].to_pylist())
    return t.drop_columns(["crop_jpeg"]).append_column("crop_hash", pa.array(h.hashes, pa.uint64())) \
        .append_column("crop_ok", pa.array(h.ok))


def load_sorted_hands(hands_uri: str, threads: int | None = None) -> pa.Table:
    """hand_id, source, video_id, keypoints, crop_hash, crop_ok of every hand, sorted by (video_id, source,
    hand_id) so each video_id (the unit the search excludes) is one run of rows. Crops are hashed once per
    hand as the files are read, ``threads`` files at a time (OpenCV decodes without the GIL)."""
    files = storage.list_parts(hands_uri)
    with ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1)) as pool:
        parts = list(pool.map(_read_hands_file, files))
    if parts:
        t = pa.concat_tables(parts)
    else:
        t = HANDS.empty_table().select(["hand_id", "source", "video_id", "keypoints"])
        t = t.append_column("crop_hash", pa.array([], pa.uint64())).append_column("crop_ok", pa.array([], pa.bool_()))
    if len(t) and pc.count_distinct(t["hand_id"]).as_py() != len(t):
        raise ValueError(duplicate_ids_message(hands_uri, t["hand_id"]))
    return t.take(pc.sort_indices(t, [("video_id", "ascending"), ("source", "ascending"),
                                      ("hand_id", "ascending")]))


def same_video_pairs(video_ids: np.ndarray, sources: np.ndarray) -> tuple[int, int]:
    """(ordered pairs of distinct hands that share a video_id, of those the pairs from different sources):
    the candidates the same-video rule keeps out of the search."""
    if len(video_ids) == 0:
        return 0, 0
    _, per_video = np.unique(video_ids, return_counts=True)
    _, per_both = np.unique(np.stack([video_ids, sources], 1).astype(str), axis=0, return_counts=True)
    same = int((per_video * (per_video - 1)).sum())
    return same, same - int((per_both * (per_both - 1)).sum())


def _part_counts(uri: str) -> dict:
    """The near-duplicate counts stamped into a graph part (empty for a part without them)."""
    import json

    with storage.open_parquet(uri) as pf:
        raw = (pf.schema_arrow.metadata or {}).get(PART_COUNTS.encode())
    return json.loads(raw) if raw else {}


def write_excluded(graph_uri: str, hand_ids: pa.Array, desc: Descriptors, metadata: dict) -> np.ndarray:
    """Write the rows of the hands without a descriptor (empty neighbour lists) and their reasons; returns
    their rows in ``hand_ids``."""
    excluded = np.flatnonzero(~desc.valid)
    empty = np.zeros((len(excluded), 0))
    storage.write_parquet_atomic(graph_table(hand_ids, excluded, empty.astype(np.int64), empty),
                                 storage.join(graph_uri, EXCLUDED), metadata)
    storage.write_json_atomic(storage.join(graph_uri, EXCLUDED_REASONS), {
        "hand_ids": hand_ids.take(pa.array(excluded)).to_pylist(), "reasons": desc.reason[excluded].tolist()})
    return excluded


#: Shard actors per CPU of the cluster at most: each takes a quarter CPU at least (more start hundreds of workers).
SHARDS_PER_CPU = 4


def check_feasible(cfg: GraphConfig) -> None:
    """``StageRefused`` naming the flag, before anything is written, for settings the cluster cannot run: more
    shards than its CPUs can hold at once. (A ``k`` above the number of hands is searched as that number: no
    hand has more neighbours, so the graph is the same and nothing of size ``k`` is allocated.)"""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0) if ray.is_initialized() else 0
    if cpus and cfg.index.shards > SHARDS_PER_CPU * cpus:
        raise StageRefused(f"--shards {cfg.index.shards} is more than the cluster's {cpus:g} CPUs can hold at once "
                         f"(at most {int(SHARDS_PER_CPU * cpus)}, a quarter CPU each): lower --shards")


def run_graph_stage(cfg: GraphConfig) -> dict:
    """output/hands -> output/graph (module docstring). Same settings and hands as a finished graph: reused;
    as an unfinished one: only the missing parts are computed; other settings: ``StageMismatch``."""
    t_start = time.perf_counter()
    idx = cfg.index
    hands_uri, graph_uri = storage.join(cfg.output, "hands"), storage.join(cfg.output, "graph")
    hands = load_sorted_hands(hands_uri)
    n = len(hands)
    check_feasible(cfg)
    hand_ids = hands["hand_id"].combine_chunks()
    kp = keypoints_array(hands["keypoints"]) if n else np.zeros((0, 21, 2), np.float32)
    crop_hash = hands["crop_hash"].to_numpy(zero_copy_only=False).astype(np.uint64)
    crop_ok = hands["crop_ok"].to_numpy(zero_copy_only=False).astype(bool)
    settings = {**cfg.graph_result_dict(), "hands": _hands_fingerprint(hand_ids, kp, crop_hash, crop_ok)}
    m = StageManifest.open(graph_uri, "graph", settings, info={"config": asdict(cfg)})
    if m.complete:
        log.info("graph at %s is complete for these settings: reusing it", graph_uri)
        return {**m.summary, "reused": True}

    desc = hand_descriptors(kp, scale=idx.scale)
    valid_rows = np.flatnonzero(desc.valid)
    x = desc.descriptors[valid_rows]
    if idx.pca_dim and len(x):
        pca = fit_pca(x, idx.pca_dim, idx.pca_sample, cfg.seed)
        storage.write_bytes_atomic(storage.join(graph_uri, PCA), pca.to_bytes())
        x = pca.apply(x)
    videos = hands["video_id"].to_numpy(zero_copy_only=False)
    lo, hi = video_ranges(videos[valid_rows])
    crops = CropHashes(crop_hash[valid_rows], crop_ok[valid_rows])
    same_video, same_video_across = same_video_pairs(videos[valid_rows],
                                                     hands["source"].to_numpy(zero_copy_only=False)[valid_rows])
    excluded = write_excluded(graph_uri, hand_ids, desc, m.part_metadata())
    reasons = Counter(desc.reason[excluded].tolist())

    m_valid = len(valid_rows)
    parts = {storage.join(graph_uri, f"part-{p:05d}.parquet"): (a, min(m_valid, a + idx.rows_per_part))
             for p, a in enumerate(range(0, m_valid, idx.rows_per_part))}
    todo = m.pending(parts)
    log.debug("graph: %d hands, %d with a descriptor, %d excluded %s; %d of %d parts to compute",
              n, m_valid, len(excluded), dict(reasons), len(todo), len(parts))
    lengths = np.zeros(m_valid, np.int64)  # neighbours found per hand with a descriptor
    dups = Counter()                       # near-duplicates dropped, over all parts
    for uri in set(parts) - set(todo):     # parts written before: their counts, for the summary
        a, b = parts[uri]
        done = storage.read_parquet(uri, columns=["neighbor_ids"])["neighbor_ids"]
        lengths[a:b] = pc.list_value_length(done).to_numpy(zero_copy_only=False)
        dups.update(_part_counts(uri))
    build_s = query_s = 0.0
    workers: list[dict] = []
    if todo:
        t0 = time.perf_counter()
        # no hand has more than m_valid - 1 neighbours: a larger k searches as that, with the same graph
        search = replace(cfg, index=replace(idx, k=max(1, min(idx.k, m_valid))))
        with ShardedKnn(x, lo, hi, search, crops=crops) as knn:
            build_s = time.perf_counter() - t0
            for i, uri in enumerate(todo):
                a, b = parts[uri]
                before = (knn.near_duplicates, knn.hands_with_near_duplicates)
                ids, d2 = knn.search_all(a, b)
                table = graph_table(hand_ids, valid_rows[a:b], np.where(ids >= 0, valid_rows[np.maximum(ids, 0)], -1),
                                    np.sqrt(d2))
                lengths[a:b] = (ids >= 0).sum(axis=1)
                counts = {"dropped": knn.near_duplicates - before[0], "hands": knn.hands_with_near_duplicates - before[1]}
                dups.update(counts)
                storage.write_parquet_atomic(table, uri, {**m.part_metadata(), PART_COUNTS: counts})
                log.debug("graph part %s written (%d hands; %d/%d)", storage.basename(uri), b - a, i + 1, len(todo))
            workers = knn.worker_stats()
            query_s = time.perf_counter() - t0 - build_s

    excluded_neighbors = {"same_video": same_video, "same_video_across_sources": same_video_across,
                          "near_duplicate_crop": int(dups["dropped"])}
    log.info("graph: %d hands (%d without a descriptor%s), %d of %d parts computed; kept out of the neighbour "
             "lists: %d of the same video, %d near-duplicate crops", n, len(excluded),
             f": {dict(reasons)}" if reasons else "", len(todo), len(parts),
             same_video + same_video_across, dups["dropped"])
    summary = {
        "hands": n, "with_descriptor": m_valid, "excluded": len(excluded), "excluded_reasons": dict(reasons),
        "excluded_neighbors": excluded_neighbors, "hands_with_near_duplicates": int(dups["hands"]),
        "near_duplicate_bits": idx.near_duplicate_bits, "without_crop_hash": int((~crop_ok[valid_rows]).sum()),
        "k": idx.k, "index": idx.kind, "shards": len(shard_bounds(m_valid, idx.shards)),
        "dim": int(x.shape[1]) if x.ndim == 2 else 0,
        "fewer_than_k": int((lengths < idx.k).sum()), "no_neighbors": int((lengths == 0).sum()),
        "mean_neighbors": round(float(lengths.mean()), 3) if m_valid else 0.0,
        "parts": len(parts), "parts_computed": len(todo),
        "build_s": round(build_s, 2), "query_s": round(query_s, 2),
        "seconds": round(time.perf_counter() - t_start, 2), "workers": workers, "config_hash": m.config_hash,
    }
    if summary["fewer_than_k"]:
        log.warning("%d hands have fewer than k=%d neighbours from other videos (%d have none)",
                    summary["fewer_than_k"], idx.k, summary["no_neighbors"])
    m.finish(summary)
    return summary
