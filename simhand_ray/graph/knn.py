"""Sharded K-nearest-hands search on Ray (SPEC §2): fan each query batch out to every shard, merge top-k.

The N descriptors are sorted by video and split into S contiguous id ranges; each range is indexed by
its own Ray actor (:class:`simhand_ray.graph.index.ShardIndex`). Query batches stream from the driver to
every shard (a few in flight, so memory is bounded by the batch size, never N x N); each shard answers
its top-(k + margin) from other videos, with exact float64 distances, and the driver merges them by
(distance, id) into the top-(k + margin). Given the hands' crop hashes, the driver then drops each query's
near-duplicate crops (``graph.duplicates``: the same picture re-encoded, resized or damaged) and keeps the
first k of the rest; a row left with fewer than k while its candidate list was full is searched again with
4x the candidates, so it gets k non-duplicate neighbours whenever k exist. With the exact (flat) index the
result is the same for every S and every margin.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import asdict
from functools import lru_cache
from typing import Iterator

import numpy as np

from simhand_ray.config import GraphConfig, IndexConfig, from_dict
from simhand_ray.graph.duplicates import CropHashes, drop_near_duplicates
from simhand_ray.graph.index import ShardIndex, sort_by_distance_then_id
from simhand_ray.process_usage import cpu_seconds, peak_rss_mb

log = logging.getLogger(__name__)


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


# --- the Ray part --------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _shard_actor_class():
    import ray

    @ray.remote
    class ShardActor:
        """Holds one shard's index; answers query batches (see ShardIndex.search)."""

        def __init__(self, x: np.ndarray, offset: int, index: dict, seed: int, threads: int, use_gpu: bool):
            import faiss

            faiss.omp_set_num_threads(int(threads))
            t0 = time.perf_counter()
            self.shard = ShardIndex(x, offset, from_dict(IndexConfig, index), seed, use_gpu=use_gpu)
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
    other-video hands of queries [q0, q1) in batches, in order. With ``crops`` (the N hands' crop hashes)
    near-duplicate crops are dropped (``cfg.index.near_duplicate_bits``); ``near_duplicates`` counts the
    candidates dropped that would have been in a list, ``hands_with_near_duplicates`` the rows they were in.
    """

    def __init__(self, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, cfg: GraphConfig, inflight: int = 2,
                 crops: CropHashes | None = None):
        import ray

        self.x, self.lo, self.hi = x, lo, hi
        self.k, self.margin = cfg.index.k, cfg.index.margin
        self.crops = crops if crops is not None and cfg.index.near_duplicate_bits >= 0 else None
        self.max_bits = cfg.index.near_duplicate_bits
        self.near_duplicates = 0
        self.hands_with_near_duplicates = 0
        self.query_batch = cfg.resources.query_batch
        self.inflight = max(1, inflight)
        self.bounds = shard_bounds(len(x), cfg.index.shards)
        s = max(1, len(self.bounds))
        free = ray.available_resources().get("CPU", 0.0) or ray.cluster_resources().get("CPU", 1.0)
        # every shard must be alive at once (each batch goes to all of them): shrink the CPU request to fit
        want, gpus = cfg.resources.cpus_per_shard, cfg.resources.gpus_per_shard
        cpus = min(want, max(free, 1e-3) / s)
        if cpus < want:
            log.info("%d shards x %.2f CPUs do not fit in %.1f free CPUs: %.2f CPUs each", s, want, free, cpus)
        threads = max(1, int(round(want if cpus >= want else cpus)))
        actor = _shard_actor_class()
        t0 = time.perf_counter()
        self.actors = []
        try:
            for a, b in self.bounds:
                ref = ray.put(np.ascontiguousarray(x[a:b]))
                self.actors.append(actor.options(num_cpus=cpus, num_gpus=gpus).remote(
                    ref, a, asdict(cfg.index), cfg.seed, threads, gpus > 0))
            ray.get([h.stats.remote() for h in self.actors])  # waits for every index to be built
        except BaseException:
            self.close()
            raise
        self.build_s = time.perf_counter() - t0
        log.debug("built %d %s shard indexes over %d descriptors in %.1fs", len(self.actors), cfg.index.kind,
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

        kk = self.k + self.margin
        if not self.actors:
            for a in range(q0, q1, self.query_batch):
                b = min(q1, a + self.query_batch)
                yield a, np.full((b - a, self.k), -1, np.int64), np.full((b - a, self.k), np.inf)
            return
        pending: deque = deque()
        starts = iter(range(q0, q1, self.query_batch))
        done = False
        while pending or not done:
            while not done and len(pending) < self.inflight:
                a = next(starts, None)
                if a is None:
                    done = True
                    break
                b = min(q1, a + self.query_batch)
                q = ray.put(np.ascontiguousarray(self.x[a:b]))
                lo, hi = self.lo[a:b], self.hi[a:b]
                pending.append((a, [h.search.remote(q, lo, hi, kk) for h in self.actors]))
            if pending:
                a, futures = pending.popleft()
                ids, d2 = merge_topk(ray.get(futures), kk if self.crops is not None else self.k)
                if self.crops is not None:
                    ids, d2 = self._without_near_duplicates(a, ids, d2, kk)
                yield a, ids, d2

    def _without_near_duplicates(self, a: int, ids: np.ndarray, d2: np.ndarray, kk: int):
        """Drop the near-duplicate crops of queries a, a+1, ... from their merged top-kk candidates and keep k;
        rows left short with a full list are searched again with 4x the candidates until k remain or every
        hand outside their video has been seen."""
        import ray

        h = self.crops
        rows = np.arange(a, a + len(ids))
        f = drop_near_duplicates(ids, d2, h.hashes[rows], h.ok[rows], h.hashes, h.ok, self.max_bits, self.k)
        out_ids, out_d2, dropped = f.ids, f.d2, f.dropped.copy()
        short, c = np.flatnonzero(f.short), kk
        while len(short) and c < len(self.x):
            c = min(4 * c, len(self.x))
            q_rows = rows[short]
            q = ray.put(np.ascontiguousarray(self.x[q_rows]))
            lo, hi = self.lo[q_rows], self.hi[q_rows]
            more_ids, more_d2 = merge_topk(ray.get([s.search.remote(q, lo, hi, c) for s in self.actors]), c)
            g = drop_near_duplicates(more_ids, more_d2, h.hashes[q_rows], h.ok[q_rows], h.hashes, h.ok,
                                     self.max_bits, self.k)
            out_ids[short], out_d2[short], dropped[short] = g.ids, g.d2, g.dropped
            short = short[g.short]
        self.near_duplicates += int(dropped.sum())
        self.hands_with_near_duplicates += int((dropped > 0).sum())
        return out_ids, out_d2

    def search_all(self, q0: int, q1: int) -> tuple[np.ndarray, np.ndarray]:
        """ids (q1 - q0, k) int64 and squared distances (q1 - q0, k) float64 of queries [q0, q1), in one array."""
        ids = np.empty((q1 - q0, self.k), np.int64)
        d2 = np.empty((q1 - q0, self.k))
        for a, bi, bd in self.search_range(q0, q1):
            ids[a - q0:a - q0 + len(bi)], d2[a - q0:a - q0 + len(bi)] = bi, bd
        return ids, d2


def knn_search(x: np.ndarray, video_keys: np.ndarray, cfg: GraphConfig,
               crops: CropHashes | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """All-vs-all K nearest other-video neighbours of x (N, d), rows sorted by ``video_keys`` (N,), without
    near-duplicate crops when ``crops`` (the rows' crop hashes) is given.

    Returns ids (N, k) int64 (-1 = none), L2 distances (N, k) float32 (inf = none), and stats.
    Holds the (N, k) result in memory: the stage writes it part by part instead.
    """
    lo, hi = video_ranges(video_keys)
    t0 = time.perf_counter()
    with ShardedKnn(x, lo, hi, cfg, crops=crops) as knn:
        t1 = time.perf_counter()
        ids, d2 = knn.search_all(0, len(x))
        t2 = time.perf_counter()
        workers = knn.worker_stats()
    stats = {"build_s": t1 - t0, "query_s": t2 - t1, "total_s": t2 - t0, "workers": workers,
             "near_duplicates": knn.near_duplicates, "hands_with_near_duplicates": knn.hands_with_near_duplicates}
    return ids, np.sqrt(d2).astype(np.float32), stats
