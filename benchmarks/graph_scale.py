"""Benchmark: the sharded K-nearest-hands graph (SPEC §2) at 100k .. 2M hands on a local Ray.

Claim under test: top-10 neighbours from *other videos* for 2M hands, recall@10 >= 0.98 against exact
search, in under 5 minutes on 2 cores, with bounded memory per shard worker.

Data: synthetic pose-like hands. Each video has one base pose (one of a few prototype grips + noise:
per-finger flexion/abduction, a 3D view rotation, scale, position in the 224 px crop) and ~200 frames
that wander around it (angle jitter, keypoint noise), projected orthographically to 21x2 crop pixels.
Like real video, most of a hand's plain nearest neighbours are frames of its own video; the table shows
that fraction ("own@10") and what is left after excluding them.

Per N and index kind, through the same Ray path as the mine job (ShardedKnn): index build and query wall
time, peak RSS of each shard actor and of the driver, recall@10 on a query sample against exact search
(excluding the same video), hands with fewer than k neighbours, and neighbours from the query's own video
(must be 0). Exact (flat) search is quadratic: it is run only up to --exact-max and extrapolated as N^2.

    python benchmarks/graph_scale.py --sizes 100000 1000000 2000000
    python benchmarks/graph_scale.py --sizes 100000 --indexes flat ivf --shards 1 2
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simhand_ray.config import GraphConfig  # noqa: E402
from simhand_ray.graph.index import IndexParams, ShardIndex  # noqa: E402
from simhand_ray.graph.knn import ShardedKnn, cpu_seconds, peak_rss_mb, video_ranges  # noqa: E402
from simhand_ray.mining.descriptors import hand_descriptors  # noqa: E402

log = logging.getLogger("simhand.bench.graph")

# --- a vectorised pose-like 2D hand generator ----------------------------------------------------------
# Palm geometry in hand units (wrist at the origin, y distal, x radial): base joint of each digit and the
# lengths of its three following bones, thumb first.
_BASES = np.array([[0.25, 0.25], [0.30, 0.90], [0.05, 0.95], [-0.18, 0.88], [-0.38, 0.78]])
_BONES = np.array([[0.35, 0.30, 0.26], [0.45, 0.27, 0.20], [0.50, 0.30, 0.22], [0.47, 0.28, 0.20],
                   [0.37, 0.22, 0.18]])
_SPLAY = np.deg2rad([55.0, 8.0, 0.0, -8.0, -18.0])  # rest direction of each digit from the y axis
# Prototype grips: flexion (deg) of (base, middle, tip) joint per digit.
_GRIPS = np.deg2rad(np.array([
    [[0, 0, 0]] * 5,                                                        # open
    [[40, 40, 30]] + [[85, 95, 60]] * 4,                                    # fist
    [[40, 40, 30], [0, 5, 5], [85, 95, 60], [85, 95, 60], [85, 95, 60]],    # point
    [[30, 30, 20], [45, 60, 40], [10, 10, 5], [10, 10, 5], [10, 10, 5]],    # pinch
    [[20, 10, 10], [50, 60, 40], [50, 60, 40], [50, 60, 40], [50, 60, 40]], # cylinder grasp
    [[10, 0, 0], [0, 5, 5], [0, 5, 5], [85, 95, 60], [85, 95, 60]],         # peace
    [[25, 20, 15]] + [[30, 40, 25]] * 4,                                    # relaxed
    [[0, 0, 0], [85, 95, 60], [85, 95, 60], [85, 95, 60], [0, 0, 0]],       # shaka
], dtype=np.float64))


def _rotations(roll: np.ndarray, pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """(N,) angles -> (N, 3, 3) rotation matrices Rz(roll) Rx(pitch) Ry(yaw)."""
    c, s = np.cos, np.sin
    n = len(roll)
    rz = np.zeros((n, 3, 3)); rx = np.zeros((n, 3, 3)); ry = np.zeros((n, 3, 3))
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1], rz[:, 2, 2] = c(roll), -s(roll), s(roll), c(roll), 1
    rx[:, 1, 1], rx[:, 1, 2], rx[:, 2, 1], rx[:, 2, 2], rx[:, 0, 0] = c(pitch), -s(pitch), s(pitch), c(pitch), 1
    ry[:, 0, 0], ry[:, 0, 2], ry[:, 2, 0], ry[:, 2, 2], ry[:, 1, 1] = c(yaw), s(yaw), -s(yaw), c(yaw), 1
    return rz @ rx @ ry


def hand_keypoints(flex: np.ndarray, abd: np.ndarray, rot: np.ndarray, scale: np.ndarray,
                   centre: np.ndarray) -> np.ndarray:
    """flex (N, 5, 3), abd (N, 5) radians, rot (N, 3, 3), scale (N,) px, centre (N, 2) -> (N, 21, 2) px."""
    n = len(flex)
    joints = np.zeros((n, 21, 3))
    ang = _SPLAY[None] + abd                                      # in-plane direction of each digit
    u = np.stack([-np.sin(ang), np.cos(ang), np.zeros_like(ang)], -1)   # (N, 5, 3)
    normal = np.array([0.0, 0.0, 1.0])
    for f in range(5):
        p = np.concatenate([np.broadcast_to(_BASES[f], (n, 2)), np.zeros((n, 1))], -1)
        joints[:, 1 + 4 * f] = p
        phi = np.zeros(n)
        for b in range(3):
            phi = phi + flex[:, f, b]
            d = np.cos(phi)[:, None] * u[:, f] + np.sin(phi)[:, None] * normal
            p = p + _BONES[f, b] * d
            joints[:, 2 + 4 * f + b] = p
    view = np.einsum("nij,nkj->nki", rot, joints)
    return (view[..., :2] * scale[:, None, None] + centre[:, None]).astype(np.float32)


def synthetic_hands(n: int, per_video: int = 200, seed: int = 0, chunk: int = 200_000):
    """n pose-like hands in videos of ~per_video frames -> (keypoints (n, 21, 2) float32, video (n,) int64)."""
    rng = np.random.default_rng(seed)
    sizes = np.clip(rng.poisson(per_video, size=n // max(per_video // 2, 1) + 2), 1, None)
    video = np.repeat(np.arange(len(sizes)), sizes)[:n]
    nv = int(video[-1]) + 1
    grip = rng.integers(0, len(_GRIPS), nv)
    v_flex = np.clip(_GRIPS[grip] + rng.normal(0, np.deg2rad(15), (nv, 5, 3)), np.deg2rad(-10), np.deg2rad(110))
    v_abd = rng.normal(0, np.deg2rad(6), (nv, 5))
    v_angles = np.stack([rng.uniform(-np.pi / 2, np.pi / 2, nv), rng.normal(0, 0.5, nv), rng.normal(0, 0.6, nv)], 1)
    v_scale = rng.uniform(45, 80, nv)
    v_centre = rng.normal(112, 8, (nv, 2))
    out = np.empty((n, 21, 2), np.float32)
    for a in range(0, n, chunk):
        v = video[a:a + chunk]
        m = len(v)
        flex = v_flex[v] + rng.normal(0, np.deg2rad(8), (m, 5, 3))
        abd = v_abd[v] + rng.normal(0, np.deg2rad(3), (m, 5))
        ang = v_angles[v] + rng.normal(0, np.deg2rad(6), (m, 3))
        kp = hand_keypoints(flex, abd, _rotations(ang[:, 0], ang[:, 1], ang[:, 2]),
                            v_scale[v] * rng.uniform(0.95, 1.05, m), v_centre[v] + rng.normal(0, 3, (m, 2)))
        out[a:a + m] = kp + rng.normal(0, 1.0, kp.shape).astype(np.float32)
    return out, video.astype(np.int64)


# --- measurements ---------------------------------------------------------------------------------------

def exact_sample(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, rows: np.ndarray, k: int) -> dict:
    """Exact other-video top-k of the sample rows (single process), and the plain top-k's own-video share."""
    shard = ShardIndex(x, 0, IndexParams(kind="flat"))
    t0 = time.perf_counter()
    ids, _ = shard.search(x[rows], lo[rows], hi[rows], k)
    t_exact = time.perf_counter() - t0
    zero = np.zeros(len(rows), np.int64)
    plain, _ = shard.search(x[rows], zero, zero, k + 1)
    plain = plain[:, 1:]  # drop the hand itself
    own = ((plain >= lo[rows, None]) & (plain < hi[rows, None])).mean()
    return {"ids": ids, "own_at_k": float(own), "exact_sample_s": t_exact}


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows of |found ∩ truth| / |truth| (missing = -1 ignored)."""
    hits = [len(set(f[f >= 0]) & set(t[t >= 0])) / max(1, (t >= 0).sum()) for f, t in zip(found, truth)]
    return float(np.mean(hits))


def run_one(x, lo, hi, cfg: GraphConfig, sample_rows, truth) -> dict:
    """Build + query all N through ShardedKnn; keep the sample rows' results for recall."""
    k = cfg.k
    found = np.full((len(sample_rows), k), -1, np.int64)
    fewer = own = 0
    load0, cpu0 = os.getloadavg()[0], cpu_seconds()
    t0 = time.perf_counter()
    with ShardedKnn(x, lo, hi, cfg) as knn:
        t_build = time.perf_counter() - t0
        for a, ids, _ in knn.search_range(0, len(x)):
            ok = ids >= 0
            fewer += int((ok.sum(1) < k).sum())
            own += int((ok & (ids >= lo[a:a + len(ids), None]) & (ids < hi[a:a + len(ids), None])).sum())
            for r in np.flatnonzero((sample_rows >= a) & (sample_rows < a + len(ids))):
                found[r] = ids[sample_rows[r] - a]
        t_total = time.perf_counter() - t0
        workers = knn.worker_stats()
    return {
        "index": cfg.index, "shards": len(workers), "build_s": t_build, "query_s": t_total - t_build,
        "total_s": t_total, "recall@10": recall_at_k(found, truth), "fewer_than_k": fewer, "own_video": own,
        "worker_peak_mb": max(w["peak_rss_mb"] for w in workers), "driver_peak_mb": peak_rss_mb(),
        "workers_cpu_s": sum(w["cpu_s"] for w in workers), "driver_cpu_s": cpu_seconds() - cpu0,
        "loadavg": (load0 + os.getloadavg()[0]) / 2,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 2_000_000])
    p.add_argument("--indexes", nargs="+", default=["flat", "ivf", "ivfpq", "hnsw"])
    p.add_argument("--shards", type=int, nargs="+", default=[2], help="shard counts to run (each 1 actor)")
    p.add_argument("--exact-max", type=int, default=200_000, help="run flat only up to this N; extrapolate beyond")
    p.add_argument("--hnsw-max", type=int, default=1_000_000, help="run hnsw only up to this N (its build is slow)")
    p.add_argument("--per-video", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nlist", type=int, default=0, help="IVF lists per shard (0 = 4 sqrt(n_shard))")
    p.add_argument("--nprobe", type=int, default=8)
    p.add_argument("--sample", type=int, default=2000, help="queries for recall against exact search")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--query-batch", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="also write the rows to this JSON file")
    p.add_argument("--table", nargs="+", default=[], help="only print the table of rows from these JSON files")
    a = p.parse_args(argv)
    if a.table:
        rows = [r for path in a.table for r in json.load(open(path))]
        print_table(sorted(rows, key=lambda r: (r["n"], r["index"], r["shards"])), a.exact_max)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=a.num_cpus, logging_level="WARNING", include_dashboard=False)
    rows: list[dict] = []
    for n in a.sizes:
        t0 = time.perf_counter()
        kp, video = synthetic_hands(n, a.per_video, a.seed)
        desc = hand_descriptors(kp, "rms")
        del kp
        x = desc.descriptors
        assert desc.valid.all()
        lo, hi = video_ranges(video)
        t_gen = time.perf_counter() - t0
        sample = np.sort(np.random.default_rng(a.seed + 1).choice(n, size=min(a.sample, n), replace=False))
        ex = exact_sample(x, lo, hi, sample, a.k)
        log.info("N=%d: %d videos, generated in %.1fs; own-video share of plain top-%d: %.3f; exact sample %.1fs",
                 n, int(video[-1]) + 1, t_gen, a.k, ex["own_at_k"], ex["exact_sample_s"])
        for kind in a.indexes:
            if (kind == "flat" and n > a.exact_max) or (kind == "hnsw" and n > a.hnsw_max):
                continue
            for s in a.shards:
                cfg = GraphConfig(k=a.k, shards=s, index=kind, nlist=a.nlist, nprobe=a.nprobe,
                                  query_batch=a.query_batch, cpus_per_shard=a.num_cpus / s, seed=a.seed)
                r = run_one(x, lo, hi, cfg, sample, ex["ids"])
                r.update(n=n, own_at_k_plain=ex["own_at_k"], nlist=a.nlist, nprobe=a.nprobe)
                rows.append(r)
                log.info("%s", json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
                gc.collect()
        del x, desc, lo, hi, video
        gc.collect()
    ray.shutdown()
    print_table(rows, a.exact_max)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


def print_table(rows: list[dict], exact_max: int) -> None:
    hdr = (f"{'N':>9} {'index':>6} {'S':>2} {'build s':>8} {'query s':>8} {'total s':>8} {'cpu s':>8} "
           f"{'recall@10':>9} {'<k':>4} {'own':>4} {'own@10 plain':>12} {'worker MB':>9} {'driver MB':>9} "
           f"{'load':>5}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['n']:>9} {r['index']:>6} {r['shards']:>2} {r['build_s']:>8.1f} {r['query_s']:>8.1f} "
              f"{r['total_s']:>8.1f} {r['workers_cpu_s'] + r['driver_cpu_s']:>8.1f} {r['recall@10']:>9.4f} "
              f"{r['fewer_than_k']:>4} {r['own_video']:>4} {r['own_at_k_plain']:>12.3f} "
              f"{r['worker_peak_mb']:>9.0f} {r['driver_peak_mb']:>9.0f} {r['loadavg']:>5.1f}")
    print("cpu s: CPU seconds of the shard actors + the driver during the run (wall time on an idle machine is"
          " about cpu s / cores); load: mean 1-min load average during the run")
    flat = [r for r in rows if r["index"] == "flat"]
    if flat:
        top = max(r["n"] for r in flat)  # the cheapest layout measured at the largest exact N
        big = min((r for r in flat if r["n"] == top), key=lambda r: r["workers_cpu_s"] + r["driver_cpu_s"])
        for n in sorted({r["n"] for r in rows} - {r["n"] for r in flat}):
            f = (n / big["n"]) ** 2
            cpu = (big["workers_cpu_s"] + big["driver_cpu_s"]) * f
            print(f"{n:>9}   flat  exact, extrapolated as N^2 from N={big['n']} (S={big['shards']}): "
                  f"~{big['total_s'] * f / 60:.0f} min wall at that load, ~{cpu:.0f} CPU s "
                  f"(~{cpu / 2 / 60:.0f} min on 2 idle cores)")
    for kind, s in sorted({(r["index"], r["shards"]) for r in rows}):
        pts = sorted((r["n"], r["workers_cpu_s"] + r["driver_cpu_s"]) for r in rows
                     if r["index"] == kind and r["shards"] == s)
        if len(pts) >= 2 and pts[-1][0] > pts[0][0]:
            (n0, c0), (n1, c1) = pts[0], pts[-1]
            print(f"growth {kind} S={s}: CPU time ~ N^{np.log(c1 / c0) / np.log(n1 / n0):.2f} from N={n0} to N={n1}")


if __name__ == "__main__":
    raise SystemExit(main())
