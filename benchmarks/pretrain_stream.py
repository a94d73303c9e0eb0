"""The pretrain job's pairs stream alone: Ray Data pairs/s with N CPUs vs N x the augmentation in one process.

Claim checked (issue: pre-training at GPU rate): the stream runs as many augmentation tasks at once as it has
CPUs, so its rate is close to N x one plain process running ``augment.augment_batch`` on rows already in
memory. Both sides use the same pairs, augmentation settings and batch size. Rounds alternate (plain, stream,
plain, ...) so drifting background load shows up in both; the fastest round of each is reported. The stream
is timed from its first batch on (Ray's start-up and the first worker starts are reported apart).

    python benchmarks/pretrain_stream.py                      # N = 2 (this machine's cores), 4096 pairs
    python benchmarks/pretrain_stream.py --num-cpus 16 --pairs s3://bucket/mine/pairs

Before Ray starts, N plain processes run the function at once: what the machine gives N copies with nothing else
running (shared caches, memory bandwidth, clock), the ceiling of any N-CPU stream; the stream's own costs are
what separates it from that ceiling (reading the Parquet rows, Ray's object store, the consumer and Ray's daemons
on the same cores).

Last line: ``stream_ratio=R`` with R = stream pairs/s / (N x single-process pairs/s).
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from harness import bench_parser, local_ray, write_result


def plain_rate(rows: dict, cfg, seconds: float) -> float:
    """pairs/s of ``augment_batch`` in this process over rows in memory (batches of ``augment_batch_size``)."""
    from simhand_ray.train import augment

    n, b = len(rows["row_key"]), cfg.stream.augment_batch_size
    done, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        idx = np.arange(i, i + b) % n
        augment.augment_batch({k: v[idx] for k, v in rows.items()}, seed=cfg.seed,
                              uses_positive=cfg.uses_positive, cfg=cfg.augment)
        done, i = done + b, i + b
    return done / (time.perf_counter() - start)


def parallel_plain(n: int, rows: dict, cfg, seconds: float) -> list[float]:
    """pairs/s of each of ``n`` plain processes running ``plain_rate`` at once (forked before Ray starts): what
    this machine gives N copies of the function with nothing else running, the ceiling of any N-CPU stream."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(n) as pool:
        return pool.starmap(plain_rate, [(rows, cfg, seconds)] * n)


def stream_rate(cfg, index, epochs: int) -> dict:
    """pairs/s of ``data.build_dataset`` consumed in this process: over the whole round (from asking for the
    dataset to its last row) and in steady state (the rows delivered between 20% and 80% of the round, where
    the work in flight at both ends is alike, so start-up and the last tasks' tail drop out)."""
    from simhand_ray.train import data

    t0 = time.perf_counter()
    ds = data.build_dataset(cfg, index, epochs)
    marks = [(0.0, 0)]
    for batch in ds.iter_batches(batch_size=cfg.optim.batch_size, batch_format="numpy"):   # a training batch
        marks.append((time.perf_counter() - t0, marks[-1][1] + len(batch["view1"])))
    wall, rows = marks[-1]
    (ta, ra), (tb, rb) = (next(m for m in marks if m[1] >= f * rows) for f in (0.2, 0.8))
    return {"pairs_per_s": (rb - ra) / (tb - ta), "whole_round_pairs_per_s": rows / wall, "rows": rows,
            "wall_s": wall, "first_batch_s": marks[1][0]}


def main(argv=None) -> int:
    p = bench_parser(__doc__)
    p.add_argument("--pairs", default="", help="pairs dataset (default: --rows pairs made from the sample images)")
    p.add_argument("--rows", type=int, default=2048, help="pairs made when --pairs is not given")
    p.add_argument("--epochs", type=int, default=8, help="passes over the pairs per stream round")
    p.add_argument("--method", default="simhand-w")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--augment-batch-size", type=int, default=0, help="0 = the pretrain job's default")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="N: CPUs of the local Ray")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--plain-seconds", type=float, default=6.0, help="length of one plain round")
    a = p.parse_args(argv)

    from simhand_ray.config import AugmentConfig, PretrainConfig, sectioned
    from simhand_ray.train import data

    work = tempfile.mkdtemp(prefix="pretrain-stream-")
    pairs = a.pairs
    if not pairs:
        from builders import make_pairs

        pairs = os.path.join(work, "pairs")
        make_pairs(pairs, n=a.rows, files=max(1, a.rows // 256), split=a.rows)
    extra = {"augment_batch_size": a.augment_batch_size} if a.augment_batch_size else {}
    cfg = sectioned(PretrainConfig, pairs=pairs, method=a.method, batch_size=256, balance_sources=False,
                         augment=AugmentConfig(size=a.image_size), **extra)
    index = data.index_pairs(pairs, cfg.stream.max_unit_rows)
    rows = data.read_all(index, cfg.uses_positive, cfg.seed)
    plain, stream = [], []
    together = parallel_plain(a.num_cpus, rows, cfg, a.plain_seconds)
    print(f"{a.num_cpus} plain processes at once: {sum(together):.0f} pairs/s in all "
          f"({', '.join(f'{x:.0f}' for x in together)})", flush=True)
    with local_ray(a.num_cpus) as ray_start:
        warm = stream_rate(cfg, index, 1)
        print(f"warm-up stream round (workers start): {warm['pairs_per_s']:.0f} pairs/s, not counted", flush=True)
        for r in range(a.rounds):
            plain.append(plain_rate(rows, cfg, a.plain_seconds))
            stream.append(stream_rate(cfg, index, a.epochs))
            st = stream[-1]
            print(f"round {r}: plain {plain[-1]:.0f} pairs/s, stream {st['pairs_per_s']:.0f} pairs/s steady, "
                  f"{st['whole_round_pairs_per_s']:.0f} over the whole round ({st['rows']} pairs in "
                  f"{st['wall_s']:.1f} s, first batch after {st['first_batch_s']:.1f} s)", flush=True)
    best_plain, best_stream = max(plain), max(s["pairs_per_s"] for s in stream)
    best_whole = max(s["whole_round_pairs_per_s"] for s in stream)
    ratio = best_stream / (a.num_cpus * best_plain)
    figures = {"num_cpus": a.num_cpus, "pairs": index.num_rows, "image_size": a.image_size, "method": a.method,
               "augment_batch_size": cfg.stream.augment_batch_size, "ray_start_s": ray_start,
               "plain_pairs_per_s": plain, "stream": stream, "stream_ratio": ratio,
               "whole_round_ratio": best_whole / (a.num_cpus * best_plain),
               "plain_processes_at_once_pairs_per_s": together,
               "machine_ceiling_ratio": sum(together) / (a.num_cpus * best_plain)}
    print(f"N = {a.num_cpus}: one process {best_plain:.0f} pairs/s, N x that {a.num_cpus * best_plain:.0f}, "
          f"stream {best_stream:.0f} pairs/s steady ({best_whole:.0f} over a whole round: "
          f"{figures['whole_round_ratio']:.3f} of N x one process; Ray start-up {ray_start:.1f} s, not counted); "
          f"N plain processes at once {sum(together):.0f} pairs/s = {figures['machine_ceiling_ratio']:.3f} of N x one "
          "process (this machine's ceiling for any N-CPU stream)")
    write_result(figures, a.json, ("stream_ratio", ratio))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
