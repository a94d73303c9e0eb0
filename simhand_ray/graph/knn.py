"""Sharded K-nearest-hands search on Ray (SPEC §2): fan each query batch out to every shard, merge top-k.

The N descriptors are sorted by video and split into S contiguous id ranges; each range is indexed by
its own Ray actor (:class:`simhand_ray.graph.index.ShardIndex`). Query batches stream from the driver to
every shard (a few in flight, so memory is bounded by the batch size, never N x N); each shard answers
its top-(k + margin) from other videos, with exact float64 distances, and the driver keeps the k best
by (distance, id). With the exact (flat) index the result is the same for every S.

:func:`run_graph_stage` is the mine job's graph stage: ``output/hands`` -> ``output/graph``.
"""
from __future__ import annotations

import hashlib
import logging
import resource
import time
from collections import Counter, deque
from dataclasses import asdict
from functools import lru_cache
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simhand_ray import storage
from simhand_ray.config import GraphConfig, from_dict
from simhand_ray.graph.index import IndexParams, ShardIndex, sort_by_distance_then_id
from simhand_ray.mining.descriptors import fit_pca, hand_descriptors
from simhand_ray.schema import GRAPH, HANDS, keypoints_array

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class StageConfigMismatch(RuntimeError):
    """An output directory holds a stage result made with other settings or other input."""


# --- pure helpers ------------------------------------------------------------------------------------

def video_ranges(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For keys (N,) sorted so equal keys are adjacent: per row the [lo, hi) id range of its key's run."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], n]
    run = np.repeat(np.arange(len(starts)), ends - starts)
    return starts[run].astype(np.int64), ends[run].astype(np.int64)


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Split ids [0, n) into at most ``shards`` contiguous non-empty ranges of near-equal size."""
    s = max(1, min(shards, n))
    edges = np.linspace(0, n, s + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (ids (B, c_s), squared distances (B, c_s)) into the k best per row by (distance, id)."""
    ids = np.concatenate([p[0] for p in parts], axis=1)
    d2 = np.concatenate([p[1] for p in parts], axis=1)
    return sort_by_distance_then_id(ids, d2, k)


def index_params(cfg: GraphConfig) -> IndexParams:
    return IndexParams(
        kind=cfg.index, nlist=cfg.nlist, nprobe=cfg.nprobe, pq_m=cfg.pq_m, pq_nbits=cfg.pq_nbits,
        refine_factor=cfg.refine_factor, hnsw_m=cfg.hnsw_m, hnsw_ef_construction=cfg.hnsw_ef_construction,
        hnsw_ef_search=cfg.hnsw_ef_search, train_sample=cfg.train_sample, small_group=cfg.small_group,
        seed=cfg.seed)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    """CPU time (user + system, all threads) this process has used."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --- the Ray part --------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _shard_actor_class():
    import ray

    @ray.remote
    class ShardActor:
        """Holds one shard's index; answers query batches (see ShardIndex.search)."""

        def __init__(self, x: np.ndarray, offset: int, cfg: dict, threads: int, use_gpu: bool):
            import faiss

            cfg = from_dict(GraphConfig, cfg)
            faiss.omp_set_num_threads(int(threads))
            t0 = time.perf_counter()
            self.shard = ShardIndex(x, offset, index_params(cfg), use_gpu=use_gpu)
            self.build_s = time.perf_counter() - t0
            self.search_s = 0.0

        def search(self, q: np.ndarray, lo: np.ndarray, hi: np.ndarray, k: int):
            t0 = time.perf_counter()
            out = self.shard.search(q, lo, hi, k)
            self.search_s += time.perf_counter() - t0
            return out

        def stats(self) -> dict:
            return {"n": self.shard.n, "offset": self.shard.offset, "build_s": round(self.build_s, 3),
                    "search_s": round(self.search_s, 3), "cpu_s": round(cpu_seconds(), 2),
                    "peak_rss_mb": round(peak_rss_mb(), 1)}

    return ShardActor


class ShardedKnn:
    """S shard actors over x (N, d) float32 whose videos are the id ranges [lo[i], hi[i]).

    Use as a context manager (actors are killed on exit); :meth:`search_range` yields the k nearest
    other-video hands of queries [q0, q1) in batches, in order.
    """

    def __init__(self, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, cfg: GraphConfig, inflight: int = 2):
        import ray

        self.x, self.lo, self.hi, self.cfg = x, lo, hi, cfg
        self.k = cfg.k
        self.inflight = max(1, inflight)
        self.bounds = shard_bounds(len(x), cfg.shards)
        s = max(1, len(self.bounds))
        free = ray.available_resources().get("CPU", 0.0) or ray.cluster_resources().get("CPU", 1.0)
        # every shard must be alive at once (each batch goes to all of them): shrink the CPU request to fit
        cpus = min(cfg.cpus_per_shard, max(free, 1e-3) / s)
        if cpus < cfg.cpus_per_shard:
            log.info("%d shards x %.2f CPUs do not fit in %.1f free CPUs: %.2f CPUs each",
                     s, cfg.cpus_per_shard, free, cpus)
        threads = max(1, int(round(cfg.cpus_per_shard if cpus >= cfg.cpus_per_shard else cpus)))
        actor = _shard_actor_class()
        t0 = time.perf_counter()
        self.actors = []
        try:
            for a, b in self.bounds:
                ref = ray.put(np.ascontiguousarray(x[a:b]))
                self.actors.append(actor.options(num_cpus=cpus, num_gpus=cfg.gpus_per_shard).remote(
                    ref, a, asdict(cfg), threads, cfg.gpus_per_shard > 0))
            ray.get([h.stats.remote() for h in self.actors])  # waits for every index to be built
        except BaseException:
            self.close()
            raise
        self.build_s = time.perf_counter() - t0
        log.info("built %d %s shard indexes over %d descriptors in %.1fs", len(self.actors), cfg.index,
                 len(x), self.build_s)

    def __enter__(self) -> "ShardedKnn":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        import ray

        for h in self.actors:
            ray.kill(h)
        self.actors = []

    def worker_stats(self) -> list[dict]:
        import ray

        return ray.get([h.stats.remote() for h in self.actors])

    def search_range(self, q0: int, q1: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield (start, ids (B, k) int64, squared distances (B, k) float64) for query ids [q0, q1).

        Missing neighbours (fewer than k hands outside the query's video) are -1 / inf.
        """
        import ray

        kk = self.k + self.cfg.margin
        if not self.actors:
            for a in range(q0, q1, self.cfg.query_batch):
                b = min(q1, a + self.cfg.query_batch)
                yield a, np.full((b - a, self.k), -1, np.int64), np.full((b - a, self.k), np.inf)
            return
        pending: deque = deque()
        starts = iter(range(q0, q1, self.cfg.query_batch))
        done = False
        while pending or not done:
            while not done and len(pending) < self.inflight:
                a = next(starts, None)
                if a is None:
                    done = True
                    break
                b = min(q1, a + self.cfg.query_batch)
                q = ray.put(np.ascontiguousarray(self.x[a:b]))
                lo, hi = self.lo[a:b], self.hi[a:b]
                pending.append((a, [h.search.remote(q, lo, hi, kk) for h in self.actors]))
            if pending:
                a, futures = pending.popleft()
                ids, d2 = merge_topk(ray.get(futures), self.k)
                yield a, ids, d2


def knn_search(x: np.ndarray, video_keys: np.ndarray, cfg: GraphConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """All-vs-all K nearest other-video neighbours of x (N, d), rows sorted by ``video_keys`` (N,).

    Returns ids (N, k) int64 (-1 = none), L2 distances (N, k) float32 (inf = none), and timing stats.
    Holds the (N, k) result in memory: the stage streams it to Parquet instead.
    """
    lo, hi = video_ranges(video_keys)
    ids = np.full((len(x), cfg.k), -1, np.int64)
    d2 = np.full((len(x), cfg.k), np.inf)
    t0 = time.perf_counter()
    with ShardedKnn(x, lo, hi, cfg) as knn:
        t1 = time.perf_counter()
        for a, bi, bd in knn.search_range(0, len(x)):
            ids[a:a + len(bi)], d2[a:a + len(bi)] = bi, bd
        t2 = time.perf_counter()
        workers = knn.worker_stats()
    stats = {"build_s": t1 - t0, "query_s": t2 - t1, "total_s": t2 - t0, "workers": workers}
    return ids, np.sqrt(d2).astype(np.float32), stats


# --- the graph stage -------------------------------------------------------------------------------------

def _read_manifest(uri: str) -> dict | None:
    return storage.read_json(uri) if storage.exists(uri) else None


def check_manifest(uri: str, expected_hash: str, what: str) -> dict | None:
    """The manifest at uri if it was written with ``expected_hash``; None if absent; raise if different."""
    m = _read_manifest(uri)
    if m is not None and m.get("config_hash") != expected_hash:
        raise StageConfigMismatch(
            f"{what} at {uri.rsplit('/', 1)[0]} was made with other settings or input "
            f"(config hash {m.get('config_hash')} != {expected_hash}): delete it or use another --output")
    return m


def part_hash(uri: str) -> str | None:
    """The config hash stamped into a Parquet file's metadata by the stage that wrote it."""
    import json

    import pyarrow.parquet as pq

    fs, path = storage.resolve(uri)
    meta = pq.read_schema(path, filesystem=fs).metadata or {}
    raw = meta.get(b"config_hash")
    return json.loads(raw) if raw else None


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
    for f in storage.list_files(hands_uri, (".parquet",)):
        t = storage.read_parquet(f, columns=["hand_id", "uri"], schema=HANDS)
        t = t.filter(pc.is_in(t["hand_id"], value_set=shown))
        for i, uri in zip(t["hand_id"].to_pylist(), t["uri"].to_pylist()):
            where[i].append(f"{storage.basename(f)} (from {uri})")
    lines = "\n".join(f"  {i}: {'; '.join(w)}" for i, w in where.items())
    return (f"hand_id is not unique in {hands_uri}: {len(dup)} ids repeat, e.g.\n{lines}\n"
            "(the same hands written twice; relabel into a fresh --output)")


def load_sorted_hands(hands_uri: str) -> pa.Table:
    """hand_id, source, video_id, keypoints of every hand, sorted by (source, video_id, hand_id)."""
    t = storage.read_parquet(hands_uri, columns=["hand_id", "source", "video_id", "keypoints"], schema=HANDS)
    if len(t) and pc.count_distinct(t["hand_id"]).as_py() != len(t):
        raise ValueError(duplicate_ids_message(hands_uri, t["hand_id"]))
    return t.take(pc.sort_indices(t, [("source", "ascending"), ("video_id", "ascending"),
                                      ("hand_id", "ascending")]))


def run_graph_stage(cfg: GraphConfig) -> dict:
    """output/hands -> output/graph: the K nearest hands of every hand from other videos (SPEC §2).

    Writes ``graph/part-*.parquet`` (schema GRAPH, hands in (source, video, hand_id) order; hands without
    a descriptor get empty lists, in ``excluded.parquet``, reasons in ``excluded.json``), ``pca.npz`` when
    PCA is on, and ``manifest.json``. A re-run with the same settings and hands reuses finished parts.
    """
    t_start = time.perf_counter()
    hands_uri, graph_uri = storage.join(cfg.output, "hands"), storage.join(cfg.output, "graph")
    hands = load_sorted_hands(hands_uri)
    n = len(hands)
    hand_ids = hands["hand_id"].combine_chunks()
    kp = keypoints_array(hands["keypoints"]) if n else np.zeros((0, 21, 2), np.float32)
    fingerprint = _hands_fingerprint(hand_ids, kp)
    chash = storage.config_hash({"graph": cfg.graph_result_dict(), "hands": fingerprint})
    manifest_uri = storage.join(graph_uri, MANIFEST)
    m = check_manifest(manifest_uri, chash, "the graph")
    if m is not None and m.get("complete"):
        log.info("graph at %s is complete for these settings: reusing it", graph_uri)
        return {**m["summary"], "reused": True}
    storage.write_json_atomic(manifest_uri, {"stage": "graph", "config_hash": chash, "config": asdict(cfg),
                                             "hands_fingerprint": fingerprint, "complete": False})

    desc = hand_descriptors(kp, scale=cfg.scale)
    valid_rows = np.flatnonzero(desc.valid)
    x = desc.descriptors[valid_rows]
    if cfg.pca_dim and len(x):
        pca = fit_pca(x, cfg.pca_dim, cfg.pca_sample, cfg.seed)
        storage.write_bytes_atomic(storage.join(graph_uri, "pca.npz"), pca.to_bytes())
        x = pca.apply(x)
    keys = pc.binary_join_element_wise(hands["source"], hands["video_id"], "\x1f").to_numpy(zero_copy_only=False)
    lo, hi = video_ranges(keys[valid_rows])

    excluded = np.flatnonzero(~desc.valid)
    reasons = Counter(desc.reason[excluded].tolist())
    empty = np.zeros((len(excluded), 0))
    storage.write_parquet_atomic(graph_table(hand_ids, excluded, empty.astype(np.int64), empty),
                                 storage.join(graph_uri, "excluded.parquet"), {"config_hash": chash})
    storage.write_json_atomic(storage.join(graph_uri, "excluded.json"), {
        "hand_ids": hand_ids.take(pa.array(excluded)).to_pylist(), "reasons": desc.reason[excluded].tolist()})

    m_valid = len(valid_rows)
    parts = [(p, a, min(m_valid, a + cfg.rows_per_part)) for p, a in enumerate(range(0, m_valid, cfg.rows_per_part))]
    todo = []
    for p, a, b in parts:
        uri = storage.join(graph_uri, f"part-{p:05d}.parquet")
        if not (storage.exists(uri) and part_hash(uri) == chash):
            todo.append((p, a, b, uri))
    log.info("graph: %d hands, %d with a descriptor, %d excluded %s; %d of %d parts to compute",
             n, m_valid, len(excluded), dict(reasons), len(todo), len(parts))
    lengths = np.zeros(m_valid, np.int64)  # neighbours found per hand with a descriptor
    for p, a, b in parts:
        if all(t[0] != p for t in todo):
            part = storage.read_parquet(storage.join(graph_uri, f"part-{p:05d}.parquet"), columns=["neighbor_ids"])
            lengths[a:b] = pc.list_value_length(part["neighbor_ids"]).to_numpy(zero_copy_only=False)
    build_s = query_s = 0.0
    workers: list[dict] = []
    if todo:
        t0 = time.perf_counter()
        with ShardedKnn(x, lo, hi, cfg) as knn:
            build_s = time.perf_counter() - t0
            for p, a, b, uri in todo:
                ids = np.empty((b - a, cfg.k), np.int64)
                d2 = np.empty((b - a, cfg.k))
                for s, bi, bd in knn.search_range(a, b):
                    ids[s - a:s - a + len(bi)], d2[s - a:s - a + len(bi)] = bi, bd
                table = graph_table(hand_ids, valid_rows[a:b], np.where(ids >= 0, valid_rows[np.maximum(ids, 0)], -1),
                                    np.sqrt(d2))
                lengths[a:b] = (ids >= 0).sum(axis=1)
                storage.write_parquet_atomic(table, uri, {"config_hash": chash})
                log.info("graph part %d/%d written (%d hands)", p + 1, len(parts), b - a)
            workers = knn.worker_stats()
            query_s = time.perf_counter() - t0 - build_s

    summary = {
        "hands": n, "with_descriptor": m_valid, "excluded": len(excluded), "excluded_reasons": dict(reasons),
        "k": cfg.k, "index": cfg.index, "shards": len(shard_bounds(m_valid, cfg.shards)),
        "dim": int(x.shape[1]) if x.ndim == 2 else 0,
        "fewer_than_k": int((lengths < cfg.k).sum()), "no_neighbors": int((lengths == 0).sum()),
        "mean_neighbors": round(float(lengths.mean()), 3) if m_valid else 0.0,
        "parts": len(parts), "parts_computed": len(todo),
        "build_s": round(build_s, 2), "query_s": round(query_s, 2),
        "seconds": round(time.perf_counter() - t_start, 2), "workers": workers, "config_hash": chash,
    }
    if summary["fewer_than_k"]:
        log.warning("%d hands have fewer than k=%d neighbours from other videos (%d have none)",
                    summary["fewer_than_k"], cfg.k, summary["no_neighbors"])
    storage.write_json_atomic(manifest_uri, {"stage": "graph", "config_hash": chash, "config": asdict(cfg),
                                             "hands_fingerprint": fingerprint, "complete": True, "summary": summary})
    return summary
