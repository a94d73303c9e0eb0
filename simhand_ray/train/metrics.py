"""Per-step training metrics: JSON-lines shards under ``output/metrics/``, TensorBoard event files under
``output/tensorboard/`` and the loss-curve PNG.

Rank 0 writes one shard per checkpoint interval (``steps_<first>_<last>.jsonl``), atomically, so a resumed run
simply writes the steps after its checkpoint again; ``read_metrics`` keeps the last record of each step.
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile

from simhand_ray import storage

log = logging.getLogger(__name__)

METRICS_DIR = "metrics"
TENSORBOARD_DIR = "tensorboard"
LOSS_CURVE = "loss_curve.png"


class EventWriter:
    """TensorBoard event files of one run (``tensorboard --logdir OUTPUT/tensorboard``), written by rank 0.

    Written into the output when it is local, else into a local directory whose files ``sync`` copies to
    ``OUTPUT/tensorboard/`` (s3://). ``purge_step``: a run restored from a checkpoint at step S passes S + 1,
    so TensorBoard drops the events an earlier attempt wrote past that checkpoint.
    Without the ``tensorboard`` package installed it logs that once and writes nothing.
    """

    def __init__(self, output: str, purge_step: int | None = None):
        self.remote = storage.join(output, TENSORBOARD_DIR)
        self.local = None if storage.is_s3(output) else storage.resolve(self.remote)[1]
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # the package is optional on machines that only train
            log.warning("no TensorBoard event files: %s (pip install tensorboard)", e)
            return
        self.tmp = None if self.local else tempfile.mkdtemp(prefix="simhand-tb-")
        self.writer = SummaryWriter(self.local or self.tmp, purge_step=purge_step, flush_secs=30)

    def scalars(self, step: int, values: dict, prefix: str = "train/") -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if v is not None:
                self.writer.add_scalar(prefix + k, float(v), int(step))

    def sync(self) -> None:
        """Flush, and copy the event files to an s3:// output."""
        if self.writer is None:
            return
        self.writer.flush()
        if self.tmp:
            for name in os.listdir(self.tmp):
                with open(os.path.join(self.tmp, name), "rb") as f:
                    storage.write_bytes_atomic(storage.join(self.remote, name), f.read())

    def close(self) -> None:
        if self.writer is None:
            return
        self.sync()
        self.writer.close()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.writer = None


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


def plot_loss_curve(rows: list[dict], uri: str, title: str = "", x: str = "step", losses: tuple[str, ...] = ("loss",),
                    ylabel: str = "contrastive loss") -> str | None:
    """The ``losses`` of ``rows`` (and their learning rate, on a second axis) against ``x``, as a PNG at ``uri``:
    pre-training's per-step curve and fine-tuning's per-epoch one."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r[x] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in losses:
        ax.plot(xs, [r.get(key, float("nan")) for r in rows], lw=1, marker="o" if len(rows) < 50 else None, label=key)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    if len(losses) > 1:
        ax.legend(loc="upper right")
    ax2 = ax.twinx()
    ax2.plot(xs, [r["lr"] for r in rows], color="tab:gray", lw=1, ls=":", label="lr")
    ax2.set_ylabel("learning rate")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes_atomic(uri, buf.getvalue())
    return uri
