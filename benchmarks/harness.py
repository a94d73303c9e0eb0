"""What every benchmark shares: the repo on sys.path, quiet Ray start-up, the parser, and the result dump.

    from harness import REPO, bench_parser, local_ray, write_result   # (benchmarks/ is the script's folder)

A benchmark prints its figures as it goes and its headline as the last line (``name=value``); ``--json``
writes all figures to a file as well.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (REPO, os.path.join(REPO, "tests")):          # tests/ for the shared builders (tests/builders.py)
    if _p not in sys.path:
        sys.path.insert(0, _p)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with the module docstring as its description and the shared ``--json`` option."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default="", help="also write the figures to this file")
    return p


@contextmanager
def local_ray(num_cpus: int | None = None, **kwargs):
    """A local Ray of ``num_cpus`` CPUs (no dashboard, warnings only) for the block; yields its start-up seconds."""
    import ray

    t = time.perf_counter()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING", **kwargs)
    try:
        yield time.perf_counter() - t
    finally:
        ray.shutdown()


def write_result(figures: dict, path: str = "", headline: tuple[str, float] | None = None) -> None:
    """Write ``figures`` as JSON to ``path`` (when given) and print the headline ``name=value`` last."""
    if path:
        with open(path, "w") as f:
            json.dump(figures, f, indent=2, default=str)
    if headline is not None:
        print(f"{headline[0]}={headline[1]:.3f}", flush=True)
