"""The pairs stream for pre-training: Parquet pairs (local dir or s3://) -> Ray Dataset of augmented views.

The stream is a deterministic function of (pairs, seed, epoch):
- The input is cut into *units* (a Parquet row group, split into ``max_unit_rows`` pieces if larger).
- Each epoch visits the units in a seeded order, ``interleave`` units per *item*; an item's rows are
  resampled (below) and shuffled together, so one batch mixes several files (pairs files are often written
  in video order, and hands of one video make poor negatives for each other).
- ``augment.augment_batch`` then makes the two views of every row in Ray Data tasks on CPU
  (``map_batches``), so training workers only train; Ray Train streams the views to the workers
  (``streaming_split``, equal shares).

Source-balanced sampling (SPEC §3, "each source contributes equally"): with N rows, S sources and n_s rows
in source s, every row of s has the sampling weight w_s = N / (S n_s), its expected number of copies per
epoch. A row appears floor(w_s) times plus once more with probability frac(w_s) (seeded per unit and
epoch), so an epoch still holds about N rows, N / S from each source: small sources are repeated (with
different augmentations per copy), large ones subsampled. With one source, or ``balance_sources=False``,
every row appears exactly once per epoch.

Resuming: ``plan_items(..., start_samples)`` drops the items a run already consumed (``step x global
batch`` samples) and the consumed head of the item in progress. Parallel execution means the consumed set
is the stream's prefix only up to the batches in flight when the run stopped.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from simhand_ray import storage
from simhand_ray.config import PretrainConfig
from simhand_ray.schema import NUM_JOINTS, PAIRS_ROW_GROUP_ROWS, keypoints_array
from simhand_ray.train import augment

log = logging.getLogger(__name__)

_UNIT, _ITEM, _ORDER = 0, 1, 2  # seed domains
MAX_BLOCKS = 4096
#: Output block size of the stream: ~160 views of 128 px. Small blocks leave a task as it makes them, so the
#: first batch comes after a fraction of a task and the consumer is fed evenly (2-core machine: first batch
#: 0.75 s instead of 5.5 s with Ray Data's 128 MiB, 1022 vs 871 pairs/s over a round).
STREAM_BLOCK_BYTES = 16 << 20


@dataclass(frozen=True)
class Unit:
    """Rows [start, stop) of one row group of one Parquet file."""
    uri: str
    row_group: int
    start: int
    stop: int
    chunk_rows: int   # the split size used for this row group (its rows when not split)

    @property
    def num_rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class WorkItem:
    """One read task's input: ``units`` (unit indices) of ``epoch``, resampled and shuffled together as item
    number ``item`` of that epoch, the first ``skip`` of its rows dropped (consumed before a resume). An item
    without units emits nothing."""
    epoch: int
    item: int
    units: tuple[int, ...]
    skip: int = 0


@dataclass
class PairsIndex:
    """The units of a pairs dataset and the source of every row (codes into ``sources``)."""
    units: list[Unit]
    sources: list[str]
    unit_sources: list[np.ndarray] = field(repr=False)   # per unit: (rows,) int32 source codes

    @property
    def num_rows(self) -> int:
        return sum(u.num_rows for u in self.units)

    def source_counts(self) -> dict[str, int]:
        counts = np.bincount(np.concatenate(self.unit_sources), minlength=len(self.sources)) if self.units else []
        return {s: int(c) for s, c in zip(self.sources, counts)}


def index_pairs(uri: str, max_unit_rows: int) -> PairsIndex:
    """List the Parquet files under ``uri``, cut them into units and read the ``source`` column."""
    files = list_pair_files(uri)
    units, codes, names, split = [], [], {}, 0
    for f in files:
        with storage.open_parquet(f) as pf:
            for rg in range(pf.num_row_groups):
                n = pf.metadata.row_group(rg).num_rows
                if n == 0:
                    continue
                src = pf.read_row_group(rg, columns=["source"]).column("source").to_pylist()
                src_codes = np.array([names.setdefault(s or "", len(names)) for s in src], dtype=np.int32)
                chunk = n if n <= max_unit_rows else max_unit_rows
                split += n > max_unit_rows
                for start in range(0, n, chunk):
                    stop = min(n, start + chunk)
                    units.append(Unit(f, rg, start, stop, chunk))
                    codes.append(src_codes[start:stop])
    if split:
        log.warning("%d row groups of %s hold more than %d rows: each of their units re-reads the group from its "
                    "start (the pairs stage writes %d-row groups)", split, uri, max_unit_rows, PAIRS_ROW_GROUP_ROWS)
    return PairsIndex(units, list(names), codes)


def list_pair_files(uri: str) -> list[str]:
    """One Parquet file, or the parts of a dataset folder (``*.parquet`` not starting with ``_``), sorted."""
    fs, path = storage.resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        return [uri]
    files = storage.list_parts(uri)
    if not files:
        raise FileNotFoundError(f"no Parquet pairs under {uri}")
    return files


def source_weights(index: PairsIndex, balance: bool) -> np.ndarray:
    """Per source code: expected copies of each of its rows per epoch, N / (S n_s) (1 when not balancing)."""
    counts = np.array(list(index.source_counts().values()), dtype=np.float64)
    if not balance or len(counts) <= 1:
        return np.ones(len(counts))
    present = counts > 0
    w = np.zeros(len(counts))
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


def unit_multiplicity(seed: int, epoch: int, unit: int, codes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(rows,) copies of each row of a unit this epoch: floor(w) + Bernoulli(frac(w)), seeded."""
    w = weights[codes]
    if np.all(w == 1.0):
        return np.ones(len(codes), dtype=np.int64)
    base = np.floor(w)
    extra = np.random.default_rng([seed, epoch, _UNIT, unit]).random(len(codes)) < (w - base)
    return (base + extra).astype(np.int64)


def epoch_items(seed: int, epoch: int, num_units: int, interleave: int) -> list[list[int]]:
    """The units of one epoch in seeded order, grouped ``interleave`` at a time."""
    order = np.random.default_rng([seed, epoch, _ORDER]).permutation(num_units)
    return [order[i:i + interleave].tolist() for i in range(0, num_units, interleave)]


def item_rows(seed: int, epoch: int, item: int, units: list[int], index: PairsIndex,
              weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows an item emits, in order: (position of the unit in ``units``, row in the unit, copy number)."""
    if not units:
        return (np.zeros(0, np.int64),) * 3
    pos, rows, copies = [], [], []
    for k, u in enumerate(units):
        mult = unit_multiplicity(seed, epoch, u, index.unit_sources[u], weights)
        r = np.repeat(np.arange(len(mult)), mult)
        first = np.concatenate(([0], np.cumsum(mult)[:-1]))
        copies.append(np.arange(len(r)) - np.repeat(first, mult))
        rows.append(r)
        pos.append(np.full(len(r), k))
    pos, rows, copies = np.concatenate(pos), np.concatenate(rows), np.concatenate(copies)
    perm = np.random.default_rng([seed, epoch, _ITEM, item]).permutation(len(rows))
    return pos[perm], rows[perm], copies[perm]


def plan_items(index: PairsIndex, weights: np.ndarray, seed: int, interleave: int, num_epochs: int,
               start_samples: int = 0) -> list[WorkItem]:
    """Work items of the stream for epochs [0, num_epochs), minus the first ``start_samples`` rows."""
    items, seen = [], 0
    for epoch in range(num_epochs):
        groups = epoch_items(seed, epoch, len(index.units), interleave)
        sizes = {u: int(unit_multiplicity(seed, epoch, u, index.unit_sources[u], weights).sum())
                 for g in groups for u in g}
        if seen + sum(sizes.values()) <= start_samples:
            seen += sum(sizes.values())
            continue
        for j, g in enumerate(groups):
            n = sum(sizes[u] for u in g)
            if seen + n <= start_samples:
                seen += n
                continue
            items.append(WorkItem(epoch, j, tuple(g), max(0, start_samples - seen)))
            seen += n
    return items


def plan_rows(index: PairsIndex, weights: np.ndarray, seed: int, items: list[WorkItem]) -> int:
    """Rows the planned ``items`` emit (what ``read_items`` yields for them, skipped heads excluded)."""
    total = 0
    for it in items:
        n = sum(int(unit_multiplicity(seed, it.epoch, u, index.unit_sources[u], weights).sum()) for u in it.units)
        total += max(0, n - it.skip)
    return total


def item_batch(items: list[WorkItem]) -> dict[str, np.ndarray]:
    """Work items as the numpy batch Ray Data hands ``read_items`` (``units`` an object array of arrays)."""
    units = np.empty(len(items), dtype=object)
    units[:] = [np.asarray(it.units, dtype=np.int64) for it in items]
    return {"epoch": np.array([it.epoch for it in items], np.int64), "item": np.array([it.item for it in items], np.int64),
            "units": units, "skip": np.array([it.skip for it in items], np.int64)}


def plan_stream(index: PairsIndex, weights: np.ndarray, seed: int, interleave: int, num_epochs: int,
                start_samples: int = 0, min_rows: int = 0, max_epochs: int = 100_000) -> tuple[list[WorkItem], int]:
    """``plan_items`` over at least ``num_epochs`` epochs, extended until the items emit ``min_rows`` rows.

    ``stream_epochs`` estimates the epochs from the nominal N rows per epoch; resampled epochs hold a random
    number of rows (a tiny or unbalanced dataset can fall short of the estimate), so the plan is checked and
    grown here rather than trusted. Returns (items, epochs planned).
    """
    epochs = max(1, num_epochs)
    items = plan_items(index, weights, seed, interleave, epochs, start_samples)
    rows = plan_rows(index, weights, seed, items)
    while rows < min_rows:
        if epochs >= max_epochs or index.num_rows == 0:
            raise ValueError(f"the pairs stream holds {rows} rows after {epochs} epochs, fewer than the "
                             f"{min_rows} the run needs")
        per_epoch = max(1, rows // epochs) if rows else 1
        epochs = min(max_epochs, max(epochs + 1, epochs + math.ceil((min_rows - rows) / per_epoch)))
        items = plan_items(index, weights, seed, interleave, epochs, start_samples)
        rows = plan_rows(index, weights, seed, items)
    return items, epochs


def read_unit(unit: Unit, columns: list[str]):
    """One unit's rows (selected columns) as a pyarrow Table."""
    with storage.open_parquet(unit.uri) as pf:
        if unit.chunk_rows >= pf.metadata.row_group(unit.row_group).num_rows:
            return pf.read_row_group(unit.row_group, columns=columns)
        # A large row group is read in chunks; batches before ours are decoded and dropped.
        parts, seen = [], 0
        for b in pf.iter_batches(batch_size=unit.chunk_rows, row_groups=[unit.row_group], columns=columns):
            if seen + b.num_rows > unit.start:
                parts.append(b)
            seen += b.num_rows
            if seen >= unit.stop:
                break
        table = pa.Table.from_batches(parts)
        offset = unit.start - (seen - table.num_rows)
        return table.slice(offset, unit.num_rows)


def read_columns(uses_positive: bool) -> list[str]:
    cols = ["anchor_id", "positive_id", "anchor_jpeg", "anchor_keypoints"]
    return cols + (["positive_jpeg", "positive_keypoints"] if uses_positive else [])


def read_items(batch: dict[str, np.ndarray], *, index: PairsIndex, weights: np.ndarray, seed: int,
               uses_positive: bool) -> dict[str, np.ndarray]:
    """``map_batches`` function: work items -> their pair rows, resampled and shuffled (input of ``augment``).

    Out: anchor_jpeg (m,) bytes, anchor_keypoints (m, 21, 2) float32, [positive_*], row_key, epoch, copy.
    """
    cols = read_columns(uses_positive)
    out: dict[str, list] = {k: [] for k in ("anchor_jpeg", "anchor_keypoints", "positive_jpeg",
                                            "positive_keypoints", "row_key", "epoch", "copy")}
    for epoch, item, units, skip in zip(batch["epoch"], batch["item"], batch["units"], batch["skip"]):
        units = [int(u) for u in units]
        tables = [read_unit(index.units[u], cols) for u in units]
        pos, rows, copies = item_rows(int(seed), int(epoch), int(item), units, index, weights)
        pos, rows, copies = pos[int(skip):], rows[int(skip):], copies[int(skip):]
        keys = [np.array([augment.row_key(a, p) for a, p in zip(t.column("anchor_id").to_pylist(),
                                                                 t.column("positive_id").to_pylist())],
                         dtype=np.int64) for t in tables]
        for name in ("anchor", "positive") if uses_positive else ("anchor",):
            jpegs = [np.array(t.column(f"{name}_jpeg").to_pylist(), dtype=object) for t in tables]
            kps = [keypoints_array(t.column(f"{name}_keypoints")) for t in tables]
            out[f"{name}_jpeg"].append(np.array([jpegs[p][r] for p, r in zip(pos, rows)], dtype=object))
            out[f"{name}_keypoints"].append(np.stack([kps[p][r] for p, r in zip(pos, rows)])
                                            if len(rows) else np.zeros((0, NUM_JOINTS, 2), np.float32))
        out["row_key"].append(np.array([keys[p][r] for p, r in zip(pos, rows)], dtype=np.int64))
        out["epoch"].append(np.full(len(rows), int(epoch), dtype=np.int64))
        out["copy"].append(copies.astype(np.int64))
    return {k: np.concatenate(v) for k, v in out.items() if v}


def read_all(index: PairsIndex, uses_positive: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Every pair row once, in file order, as ``read_items`` gives them (benchmarks and checks, not training)."""
    one = item_batch([WorkItem(0, 0, tuple(range(len(index.units))))])
    return read_items(one, index=index, weights=np.ones(len(index.sources)), seed=seed, uses_positive=uses_positive)


def stream_epochs(total_steps: int, global_batch: int, num_rows: int) -> int:
    """Epochs the stream must hold for ``total_steps`` steps, plus one for resampling and split slack."""
    return math.ceil(total_steps * global_batch / max(num_rows, 1)) + 1


def augment_items(batch: dict[str, np.ndarray], *, index: PairsIndex, weights: np.ndarray, seed: int,
                  uses_positive: bool, cfg, fixed_views: bool, chunk_rows: int):
    """``map_batches`` generator: work items -> their rows (``read_items``) -> augmented views, ``chunk_rows``
    at a time, so a task's memory stays one item of JPEG rows plus one chunk of views."""
    for i in range(len(batch["item"])):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        rows = read_items(one, index=index, weights=weights, seed=seed, uses_positive=uses_positive)
        n = len(rows.get("row_key", ()))
        for start in range(0, n, chunk_rows):
            yield augment.augment_batch({k: v[start:start + chunk_rows] for k, v in rows.items()}, seed=seed,
                                        uses_positive=uses_positive, cfg=cfg, fixed_views=fixed_views)


def build_dataset(cfg: PretrainConfig, index: PairsIndex, num_epochs: int, start_samples: int = 0,
                  total_samples: int = 0):
    """The Ray Dataset of augmented views (``augment.VIEW_COLUMNS``) from ``start_samples`` on.

    One operator reads and augments ``items_per_task`` work items per task (an item: ``interleave`` row groups
    of a few hundred rows each): the stream runs as many tasks at once as Ray Data has CPUs, and a task's
    output leaves it as it is made. A task costs ~0.2 s between tasks on a worker (measured on 2 cores), so a
    task is a few seconds of work. (A separate read operator would hold CPU reservations of its own that
    starve the augmentation on small nodes; a fused read -> augment pair bundled ``batch_size`` *items* per
    task: one task ran on a 16-core node.)

    ``total_samples`` (steps x global batch of the whole run): the stream is planned to hold at least the
    rows still needed plus one global batch of slack for the equal split over workers and ``drop_last``.
    """
    import ray

    weights = source_weights(index, cfg.stream.balance_sources)
    min_rows = max(0, total_samples - start_samples) + cfg.optim.batch_size if total_samples > start_samples else 0
    items, epochs = plan_stream(index, weights, cfg.seed, cfg.stream.interleave, num_epochs, start_samples, min_rows)
    if epochs > num_epochs:
        log.info("the pairs stream needs %d epochs (planned %d) to hold %d rows", epochs, num_epochs, min_rows)
    if not items:  # a finished run resubmitted: an item that emits nothing keeps the pipeline well-formed
        items = [WorkItem(num_epochs - 1, 0, ())]
    blocks = min(math.ceil(len(items) / cfg.stream.items_per_task), MAX_BLOCKS)
    if blocks == MAX_BLOCKS:
        log.info("the pairs stream holds %d items: %d per task (MAX_BLOCKS %d)", len(items),
                 math.ceil(len(items) / MAX_BLOCKS), MAX_BLOCKS)
    # A block of items is a task's input (its items run one after the other).
    ds = ray.data.from_items([asdict(it) for it in items], override_num_blocks=blocks)
    ds = ds.map_batches(augment_items, batch_size=None, batch_format="numpy",
                        fn_kwargs={"index": index, "weights": weights, "seed": cfg.seed,
                                   "uses_positive": cfg.uses_positive, "cfg": cfg.augment,
                                   "fixed_views": cfg.stream.fixed_views, "chunk_rows": cfg.stream.augment_batch_size})
    ds.context.target_max_block_size = STREAM_BLOCK_BYTES     # this dataset's own copy of the context
    return ds
