"""One shard's faiss index and its search that never returns the query's own video (SPEC §2).

A shard holds the descriptors with global ids ``[offset, offset + n)``. Hands are sorted by video before
ids are given out, so the hands of a query's video are one id range ``[lo, hi)`` and "not from my video"
is ``IDSelectorNot(IDSelectorRange)``. Two search paths, both exact with respect to the exclusion:

- a query whose video has ``g <= small_group`` hands in this shard: one batched plain search for
  ``k + g`` candidates, then its own video's ids are dropped (at most g of them), leaving >= k;
- a query from a larger video: searched per video with the range selector, so a video of thousands of
  hands costs no larger k.

Every candidate's distance is then recomputed exactly in float64 from the stored vectors and candidates
are ordered by (distance, id): results do not depend on BLAS blocking, on the shard layout or on an
approximate index's compressed codes (an IVF-PQ index is re-ranked from ``refine_factor`` x more
candidates).
"""
from __future__ import annotations

import logging
import math

import faiss
import numpy as np

from simhand_ray.config import GRAPH_INDEX_KINDS, IndexConfig

log = logging.getLogger(__name__)

#: The largest k faiss GPU indexes accept.
GPU_MAX_K = 2048


def auto_nlist(n: int, nlist: int = 0) -> int:
    """Number of IVF lists for n vectors: the given one, else 4 sqrt(n); at most n // 39 (>= 1)."""
    want = nlist if nlist > 0 else int(round(4 * math.sqrt(max(n, 1))))
    return int(max(1, min(want, n // 39 if n >= 39 else 1)))


def auto_pq_m(d: int, pq_m: int = 0) -> int:
    """Sub-quantizers for d dims: the given one (must divide d), else the divisor with d/m closest to 3."""
    if pq_m > 0:
        if d % pq_m:
            raise ValueError(f"pq_m={pq_m} must divide the descriptor dimension {d}")
        return pq_m
    divisors = [m for m in range(1, d + 1) if d % m == 0 and d // m >= 2] or [d]
    return min(divisors, key=lambda m: (abs(d / m - 3), -m))


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def build_index(x: np.ndarray, params: IndexConfig, seed: int = 0) -> faiss.Index:
    """A CPU faiss index over x (n, d) float32 with ids 0..n-1 (trained on a ``seed``ed sample when the kind
    needs it)."""
    if params.kind not in GRAPH_INDEX_KINDS:
        raise ValueError(f"unknown index kind {params.kind!r}: one of {GRAPH_INDEX_KINDS}")
    n, d = x.shape
    rng = np.random.default_rng(seed)
    if params.kind == "flat":
        index = faiss.IndexFlatL2(d)
    elif params.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, params.hnsw_m)
        index.hnsw.efConstruction = params.hnsw_ef_construction
    else:
        nlist = auto_nlist(n, params.nlist)
        quantizer = faiss.IndexFlatL2(d)
        if params.kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nlist)
        else:
            # 2^nbits centroids per sub-quantizer want >= 39 training vectors each
            nbits = int(min(params.pq_nbits, max(1, math.floor(math.log2(max(n // 39, 2))))))
            index = faiss.IndexIVFPQ(quantizer, d, nlist, auto_pq_m(d, params.pq_m), nbits)
            index.pq.cp.seed = seed
        index.cp.seed = seed
        ntrain = min(n, params.train_sample if params.train_sample > 0 else 39 * nlist)
        if params.kind == "ivfpq":
            ntrain = min(n, max(ntrain, 39 * (1 << nbits)))
        rows = np.sort(rng.choice(n, size=ntrain, replace=False)) if ntrain < n else slice(None)
        index.train(np.ascontiguousarray(x[rows]))
    if n:
        index.add(np.ascontiguousarray(x))
    return index


def exact_sq_distances(x: np.ndarray, q: np.ndarray, ids: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Squared L2 distances in float64 between q[i] (B, d) and x[ids[i, j]] (ids (B, c), -1 = none -> inf)."""
    out = np.full(ids.shape, np.inf, dtype=np.float64)
    for i in range(0, ids.shape[0], chunk):
        part = ids[i:i + chunk]
        ok = part >= 0
        diff = x[np.where(ok, part, 0)].astype(np.float64) - q[i:i + chunk, None, :].astype(np.float64)
        out[i:i + chunk] = np.where(ok, np.einsum("bcd,bcd->bc", diff, diff), np.inf)
    return out


def sort_by_distance_then_id(ids: np.ndarray, d2: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Order each row by (distance, id), missing (-1, inf) last, and keep k columns (padding with -1/inf)."""
    key_ids = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    order = np.lexsort((key_ids, d2), axis=-1)[:, :k]
    ids, d2 = np.take_along_axis(ids, order, 1), np.take_along_axis(d2, order, 1)
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        d2 = np.pad(d2, ((0, 0), (0, pad)), constant_values=np.inf)
    return ids, d2


class ShardIndex:
    """One shard: descriptors x (n, d) float32 with global ids offset + [0, n), and their faiss index."""

    def __init__(self, x: np.ndarray, offset: int, params: IndexConfig, seed: int = 0, use_gpu: bool = False):
        self.x = x
        self.offset = int(offset)
        self.params = params
        self.index = build_index(x, params, seed)
        self.gpu_index = None
        if use_gpu and params.kind != "hnsw" and gpu_available():
            self._gpu_res = faiss.StandardGpuResources()
            self.gpu_index = faiss.index_cpu_to_gpu(self._gpu_res, 0, self.index)
            if params.kind in ("ivf", "ivfpq"):
                faiss.GpuParameterSpace().set_index_parameter(self.gpu_index, "nprobe", params.nprobe)
            log.info("shard at %d: %s index on GPU", offset, params.kind)

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def search(self, q: np.ndarray, lo: np.ndarray, hi: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest of this shard to each query, excluding global ids in [lo[i], hi[i]).

        q: (B, d) float32; lo, hi: (B,) int64 global id ranges of each query's video.
        Returns global ids (B, k) int64 and exact squared distances (B, k) float64, ordered by
        (distance, id), padded with -1 / inf when the shard has fewer than k others.
        """
        b = q.shape[0]
        lo_l = np.clip(np.asarray(lo, dtype=np.int64) - self.offset, 0, self.n)
        hi_l = np.clip(np.asarray(hi, dtype=np.int64) - self.offset, 0, self.n)
        g = hi_l - lo_l
        kf = k * (self.params.refine_factor if self.params.kind == "ivfpq" else 1)
        if self.n == 0 or b == 0:
            return np.full((b, k), -1, np.int64), np.full((b, k), np.inf)
        small = g <= self.params.small_group_limit
        if self.gpu_index is not None:
            small &= (kf + g) <= GPU_MAX_K
        cands = np.full((b, kf), -1, dtype=np.int64)
        # rows whose videos have similar sizes here share one plain search for kf + (largest g) candidates
        bucket = np.ceil(np.log2(np.maximum(g, 1)) / 2)
        for bk in np.unique(bucket[small]):
            rows = np.flatnonzero(small & (bucket == bk))
            cands[rows] = self._candidates(q[rows], lo_l[rows], hi_l[rows], kf, selector=False)
        if (~small).any():
            big = np.flatnonzero(~small)
            uniq, inverse = np.unique(np.stack([lo_l[big], hi_l[big]], 1), axis=0, return_inverse=True)
            for u in range(len(uniq)):
                rows = big[inverse.reshape(-1) == u]
                cands[rows] = self._candidates(q[rows], lo_l[rows], hi_l[rows], kf, selector=True)
        d2 = exact_sq_distances(self.x, q, cands)
        ids, d2 = sort_by_distance_then_id(cands, d2, k)
        return np.where(ids >= 0, ids + self.offset, -1), d2

    def _candidates(self, q: np.ndarray, lo: np.ndarray, hi: np.ndarray, kf: int, selector: bool) -> np.ndarray:
        """faiss candidates (m, kf) local ids, -1 padded, none in [lo[i], hi[i]) (local).

        ``selector=False``: one plain search for kf + max(g) candidates, own video dropped after. ``True``: all
        rows share one range, excluded inside faiss. An approximate index spends part of its effort on
        the excluded video (its hands sit in the same IVF lists / HNSW neighbourhood), so the effort grows
        with g, and rows that still come back short are searched again with 4x the effort.
        """
        g = hi - lo
        want = np.minimum(kf, self.n - g)
        out = np.full((len(q), kf), -1, dtype=np.int64)
        rows, boost = np.arange(len(q)), 1
        while len(rows):
            gm = int(g[rows].max())
            if selector:
                kk = min(kf, self.n - gm)
                if kk <= 0:
                    break
                sel = faiss.IDSelectorNot(faiss.IDSelectorRange(int(lo[rows[0]]), int(hi[rows[0]])))
                ids = self._faiss_search(q[rows], kk, gm, boost, sel)
            else:
                kk = min(self.n, kf + gm)
                ids = self._faiss_search(q[rows], kk, gm, boost)
                ids = np.where((ids >= lo[rows, None]) & (ids < hi[rows, None]), -1, ids)
                # stable: keep faiss's order among the kept candidates, dropped ones last
                ids = np.take_along_axis(ids, np.argsort(ids < 0, axis=1, kind="stable")[:, :kf], 1)
            out[rows, :ids.shape[1]] = ids
            short = (ids >= 0).sum(axis=1) < want[rows]
            if self.params.exact or not short.any() or self._saturated(gm, boost):
                break
            rows, boost = rows[short], boost * 4
        return out

    def _effort(self, g: int, boost: int) -> tuple[int, int]:
        """(nprobe, efSearch) for a query whose video has g hands here: the configured effort, plus
        enough lists / candidates to hold those g, times ``boost``."""
        nprobe = self.params.nprobe
        if self.params.kind in ("ivf", "ivfpq"):
            nlist = int(self.index.nlist)
            nprobe = min(nlist, (nprobe + math.ceil(g * nlist / max(self.n, 1))) * boost)
        return nprobe, (self.params.hnsw_ef_search + g) * boost

    def _saturated(self, g: int, boost: int) -> bool:
        nprobe, ef = self._effort(g, boost)
        if self.params.kind in ("ivf", "ivfpq"):
            return nprobe >= int(self.index.nlist)
        return ef >= max(self.n, 1) or boost >= 1024

    def _faiss_search(self, q: np.ndarray, k: int, g: int, boost: int, sel=None) -> np.ndarray:
        """Local ids (m, k) from faiss with the effort for g (see _effort); -1 where nothing was found."""
        q = np.ascontiguousarray(q)
        if self.gpu_index is not None and sel is None and boost == 1:
            return self.gpu_index.search(q, k)[1]
        nprobe, ef = self._effort(g, boost)
        kw = {} if sel is None else {"sel": sel}
        if self.params.kind in ("ivf", "ivfpq"):
            sp = faiss.SearchParametersIVF(nprobe=nprobe, **kw)
        elif self.params.kind == "hnsw":
            sp = faiss.SearchParametersHNSW(efSearch=max(ef, k), **kw)
        else:
            sp = faiss.SearchParameters(**kw) if kw else None
        return self.index.search(q, k, params=sp)[1]
