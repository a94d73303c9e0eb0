"""The graph stage (SPEC §2): ``output/hands`` -> ``output/graph``, the K nearest hands of every hand from
other videos, written part by part through the stage protocol (``simhand_ray.stage``) so a re-run resumes.

``graph/`` is one dataset of schema GRAPH with a row for every hand: ``part-*.parquet`` for the hands with
a descriptor, in (source, video, hand_id) order, and ``excluded.parquet`` (empty neighbour lists) for those
without one. Side files start with ``_`` so dataset readers skip them: ``_manifest.json``,
``_excluded.json`` (why each excluded hand has no descriptor) and ``_pca.npz`` (when PCA is on).
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simhand_ray import storage
from simhand_ray.config import GraphConfig
from simhand_ray.graph.descriptors import Descriptors, fit_pca, hand_descriptors
from simhand_ray.graph.knn import ShardedKnn, shard_bounds, video_ranges
from simhand_ray.schema import GRAPH, HANDS, keypoints_array
from simhand_ray.stage import StageManifest

log = logging.getLogger(__name__)

EXCLUDED = "excluded.parquet"
EXCLUDED_REASONS = "_excluded.json"
PCA = "_pca.npz"


def _hands_fingerprint(hand_ids: pa.Array, keypoints: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update("\n".join(hand_ids.to_pylist()).encode())
    h.update(np.ascontiguousarray(keypoints, dtype=np.float32).tobytes())
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


def load_sorted_hands(hands_uri: str) -> pa.Table:
    """hand_id, source, video_id, keypoints of every hand, sorted by (source, video_id, hand_id)."""
    columns = ["hand_id", "source", "video_id", "keypoints"]
    parts = [storage.read_parquet(f, columns=columns, schema=HANDS) for f in storage.list_parts(hands_uri)]
    t = pa.concat_tables(parts) if parts else HANDS.empty_table().select(columns)
    if len(t) and pc.count_distinct(t["hand_id"]).as_py() != len(t):
        raise ValueError(duplicate_ids_message(hands_uri, t["hand_id"]))
    return t.take(pc.sort_indices(t, [("source", "ascending"), ("video_id", "ascending"),
                                      ("hand_id", "ascending")]))


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


def run_graph_stage(cfg: GraphConfig) -> dict:
    """output/hands -> output/graph (module docstring). Same settings and hands as a finished graph: reused;
    as an unfinished one: only the missing parts are computed; other settings: ``StageMismatch``."""
    t_start = time.perf_counter()
    idx = cfg.index
    hands_uri, graph_uri = storage.join(cfg.output, "hands"), storage.join(cfg.output, "graph")
    hands = load_sorted_hands(hands_uri)
    n = len(hands)
    hand_ids = hands["hand_id"].combine_chunks()
    kp = keypoints_array(hands["keypoints"]) if n else np.zeros((0, 21, 2), np.float32)
    settings = {**cfg.graph_result_dict(), "hands": _hands_fingerprint(hand_ids, kp)}
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
    keys = pc.binary_join_element_wise(hands["source"], hands["video_id"], "\x1f").to_numpy(zero_copy_only=False)
    lo, hi = video_ranges(keys[valid_rows])
    excluded = write_excluded(graph_uri, hand_ids, desc, m.part_metadata())
    reasons = Counter(desc.reason[excluded].tolist())

    m_valid = len(valid_rows)
    parts = {storage.join(graph_uri, f"part-{p:05d}.parquet"): (a, min(m_valid, a + idx.rows_per_part))
             for p, a in enumerate(range(0, m_valid, idx.rows_per_part))}
    todo = m.pending(parts)
    log.info("graph: %d hands, %d with a descriptor, %d excluded %s; %d of %d parts to compute",
             n, m_valid, len(excluded), dict(reasons), len(todo), len(parts))
    lengths = np.zeros(m_valid, np.int64)  # neighbours found per hand with a descriptor
    for uri in set(parts) - set(todo):     # parts written before: their neighbour counts, for the summary
        a, b = parts[uri]
        done = storage.read_parquet(uri, columns=["neighbor_ids"])["neighbor_ids"]
        lengths[a:b] = pc.list_value_length(done).to_numpy(zero_copy_only=False)
    build_s = query_s = 0.0
    workers: list[dict] = []
    if todo:
        t0 = time.perf_counter()
        with ShardedKnn(x, lo, hi, cfg) as knn:
            build_s = time.perf_counter() - t0
            for i, uri in enumerate(todo):
                a, b = parts[uri]
                ids, d2 = knn.search_all(a, b)
                table = graph_table(hand_ids, valid_rows[a:b], np.where(ids >= 0, valid_rows[np.maximum(ids, 0)], -1),
                                    np.sqrt(d2))
                lengths[a:b] = (ids >= 0).sum(axis=1)
                storage.write_parquet_atomic(table, uri, m.part_metadata())
                log.info("graph part %s written (%d hands; %d/%d)", storage.basename(uri), b - a, i + 1, len(todo))
            workers = knn.worker_stats()
            query_s = time.perf_counter() - t0 - build_s

    summary = {
        "hands": n, "with_descriptor": m_valid, "excluded": len(excluded), "excluded_reasons": dict(reasons),
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
