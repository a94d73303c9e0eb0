"""Benchmark: the sharded K-nearest-hands graph (SPEC §2) at 100k .. 2M hands on a local Ray.

Claim under test: top-10 neighbours from *other videos* for 2M hands, recall@10 >= 0.98 against exact
search, in under 5 minutes on 2 cores, with bounded memory per shard worker.

Data: hands of the library's kinematic hand model (simhand_ray.synthetic.hand_model). Each video is one
person's hand around one natural pose and view, and ~200 frames that wander around it (joint angles, view,
scale, position, keypoint noise), projected orthographically to 21x2 crop pixels. Like real video, most of
a hand's plain nearest neighbours are frames of its own video; the table shows that fraction ("own@10")
and what is left after excluding them.

Per N and index kind, through the same Ray path as the mine job (ShardedKnn): index build and query wall
time, peak RSS of each shard actor and of the driver, recall@10 on a query sample against exact search
(excluding the same video), hands with fewer than k neighbours, and neighbours from the query's own video
(must be 0). Recall is ``simhand_ray.graph.recall.recall_at_k``, the figure the tests hold to a floor.
Exact (flat) search is quadratic: it is run only up to --exact-max and extrapolated as N^2.

    python benchmarks/graph_scale.py --sizes 100000 1000000 2000000
    python benchmarks/graph_scale.py --sizes 100000 --indexes flat ivf --shards 1 2
"""
from __future__ import annotations

import gc
import json
import logging
import os
import time

import numpy as np
from harness import bench_parser, local_ray, write_result
from scipy.spatial.transform import Rotation

from simhand_ray.config import GraphConfig, GraphResources, IndexConfig
from simhand_ray.graph.descriptors import hand_descriptors
from simhand_ray.graph.index import ShardIndex
from simhand_ray.graph.knn import ShardedKnn, video_ranges
from simhand_ray.graph.recall import recall_at_k
from simhand_ray.process_usage import cpu_seconds, peak_rss_mb
from simhand_ray.synthetic import hand_model as hm

log = logging.getLogger("simhand.bench.graph")


def synthetic_hands(n: int, per_video: int = 200, seed: int = 0, articulations: int = 16, chunk: int = 200_000):
    """n hands from the library's hand model in videos of ~per_video frames -> (keypoints (n, 21, 2) float32
    crop pixels, video (n,) int64).

    A video is one person's hand (``hand_model.sample_shape``) around one natural pose (``sample_pose``)
    seen from one view (``sample_view``); each frame takes one of ``articulations`` nearby poses (8 degrees
    per joint, so forward kinematics runs per video, not per frame), turns the view a few degrees, moves and
    scales a little, and is projected orthographically into a 224 px crop with 1 px of keypoint noise.
    """
    rng = np.random.default_rng(seed)
    sizes = np.clip(rng.poisson(per_video, size=n // max(per_video // 2, 1) + 2), 1, None)
    video = np.repeat(np.arange(len(sizes)), sizes)[:n]
    nv = int(video[-1]) + 1
    joints = np.empty((nv, articulations, 21, 3))
    px_per_m = np.empty(nv)
    for v in range(nv):
        shape, pose = hm.sample_shape(rng), hm.sample_pose(rng)
        px_per_m[v] = rng.uniform(45, 80) / shape.scale
        for a in range(articulations):
            jitter = np.deg2rad(rng.normal(0, 8.0, hm.POSE_DIM))
            joints[v, a] = hm.forward_kinematics(hm.clip_pose(pose + jitter), shape)[0]
    views = np.stack([hm.sample_view(rng) for _ in range(nv)])
    centre = rng.normal(112, 8, (nv, 2))
    out = np.empty((n, 21, 2), np.float32)
    for a in range(0, n, chunk):
        v = video[a:a + chunk]
        m = len(v)
        angles = views[v] + rng.normal(0, np.deg2rad(6), (m, 3))      # roll, pitch, yaw as hm.view_rotation
        rot = Rotation.from_euler("ZXY", angles).as_matrix() @ hm.PALM_TO_CAMERA
        cam = np.einsum("nij,nkj->nki", rot, joints[v, rng.integers(0, articulations, m)])
        scale = px_per_m[v] * rng.uniform(0.95, 1.05, m)
        kp = cam[..., :2] * scale[:, None, None] + (centre[v] + rng.normal(0, 3, (m, 2)))[:, None]
        out[a:a + m] = kp + rng.normal(0, 1.0, kp.shape)
    return out, video.astype(np.int64)


# --- measurements ---------------------------------------------------------------------------------------

def exact_sample(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, rows: np.ndarray, k: int) -> dict:
    """Exact other-video top-k of the sample rows (single process), and the plain top-k's own-video share."""
    shard = ShardIndex(x, 0, IndexConfig(kind="flat"))
    t0 = time.perf_counter()
    ids, _ = shard.search(x[rows], lo[rows], hi[rows], k)
    t_exact = time.perf_counter() - t0
    zero = np.zeros(len(rows), np.int64)
    plain, _ = shard.search(x[rows], zero, zero, k + 1)
    plain = plain[:, 1:]  # drop the hand itself
    own = ((plain >= lo[rows, None]) & (plain < hi[rows, None])).mean()
    return {"ids": ids, "own_at_k": float(own), "exact_sample_s": t_exact}


def run_one(x, lo, hi, cfg: GraphConfig, sample_rows, truth) -> dict:
    """Build + query all N through ShardedKnn; keep the sample rows' results for recall."""
    k = cfg.index.k
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
        "index": cfg.index.kind, "shards": len(workers), "build_s": t_build, "query_s": t_total - t_build,
        "total_s": t_total, "recall@10": recall_at_k(found, truth), "fewer_than_k": fewer, "own_video": own,
        "worker_peak_mb": max(w["peak_rss_mb"] for w in workers), "driver_peak_mb": peak_rss_mb(),
        "workers_cpu_s": sum(w["cpu_s"] for w in workers), "driver_cpu_s": cpu_seconds() - cpu0,
        "loadavg": (load0 + os.getloadavg()[0]) / 2,
    }


def main(argv=None) -> int:
    p = bench_parser(__doc__)
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
    p.add_argument("--table", nargs="+", default=[], help="only print the table of rows from these JSON files")
    a = p.parse_args(argv)
    if a.table:
        rows = [r for path in a.table for r in json.load(open(path))["rows"]]
        print_table(sorted(rows, key=lambda r: (r["n"], r["index"], r["shards"])), a.exact_max)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with local_ray(a.num_cpus):
        rows = measure(a)
    print_table(rows, a.exact_max)
    recalls = [r["recall@10"] for r in rows]
    write_result({"rows": rows}, a.json, ("min_recall_at_10", min(recalls) if recalls else float("nan")))
    return 0


def measure(a) -> list[dict]:
    """One row per (N, index kind, shard count) of the command line."""
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
                cfg = GraphConfig(seed=a.seed,
                                  index=IndexConfig(kind=kind, k=a.k, shards=s, nlist=a.nlist, nprobe=a.nprobe),
                                  resources=GraphResources(query_batch=a.query_batch, cpus_per_shard=a.num_cpus / s))
                r = run_one(x, lo, hi, cfg, sample, ex["ids"])
                r.update(n=n, own_at_k_plain=ex["own_at_k"], nlist=a.nlist, nprobe=a.nprobe)
                rows.append(r)
                log.info("%s", json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
                gc.collect()
        del x, desc, lo, hi, video
        gc.collect()
    return rows


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
