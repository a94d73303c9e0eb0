"""Per-step training metrics: JSON-lines shards under ``output/metrics/`` and the loss-curve PNG.

Rank 0 writes one shard per checkpoint interval (``steps_<first>_<last>.jsonl``), atomically, so a resumed run
simply writes the steps after its checkpoint again; ``read_metrics`` keeps the last record of each step.
"""
from __future__ import annotations

import io
import json

from simhand_ray import storage

METRICS_DIR = "metrics"
LOSS_CURVE = "loss_curve.png"


def write_shard(output: str, rows: list[dict]) -> str | None:
    if not rows:
        return None
    uri = storage.join(output, METRICS_DIR, f"steps_{rows[0]['step']:08d}_{rows[-1]['step']:08d}.jsonl")
    storage.write_bytes_atomic(uri, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
    return uri


def read_metrics(output: str) -> list[dict]:
    """Every step's record, in step order (later shards win for a step written twice)."""
    by_step: dict[int, dict] = {}
    for uri in storage.list_files(storage.join(output, METRICS_DIR), (".jsonl",)):
        for line in storage.read_bytes(uri).decode().splitlines():
            if line.strip():
                r = json.loads(line)
                by_step[int(r["step"])] = r
    return [by_step[s] for s in sorted(by_step)]


def plot_loss_curve(rows: list[dict], uri: str, title: str = "") -> str | None:
    """Loss and learning rate against step, as a PNG at ``uri``."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss"] for r in rows], lw=1, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["lr"] for r in rows], color="tab:orange", lw=1, label="lr")
    ax2.set_ylabel("learning rate")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes_atomic(uri, buf.getvalue())
    return uri
