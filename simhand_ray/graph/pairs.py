"""The pairs stage (SPEC §2): graph -> one row per anchor with its mined positive, crops + keypoints inline.

Training streams ``pairs/pairs-*.parquet`` front to back with no random access, so each row carries both
JPEG crops and both keypoint sets (schema PAIRS). Anchors are put in a seeded random order before they
are cut into shards, so a reader with a small shuffle buffer still sees many videos per batch.

Assembling rows is a join of the pair list with the hands table on two keys (anchor, positive). It runs as
a scatter/gather on Ray, in waves of ``pairs_wave`` output shards: one scatter task per group of hands
files sends every needed hand's crop to the output shards that use it; one gather task per output shard
puts its rows together and writes the shard atomically. The stage follows the stage protocol
(``simhand_ray.stage``): a re-run skips shards already written with the same settings (stamped in each
file and in ``_manifest.json``). ``pairs/`` is one dataset of schema PAIRS; its side files start with
``_`` so dataset readers skip them: ``_manifest.json`` and ``_montage.jpg`` (a contact sheet of pairs).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simhand_ray import storage
from simhand_ray.config import GraphConfig
from simhand_ray.graph.pairs_montage import MONTAGE, write_montage
from simhand_ray.schema import GRAPH, HANDS, PAIRS, PAIRS_ROW_GROUP_ROWS
from simhand_ray.stage import StageManifest

log = logging.getLogger(__name__)

HAND_COLUMNS = ["hand_id", "source", "keypoints", "crop_jpeg"]


# --- pure helpers ------------------------------------------------------------------------------------

def select_positives(graph: pa.Table, positive_rank: int) -> tuple[pa.Table, int]:
    """GRAPH rows -> (anchor_id, positive_id, distance) for rows with >= 1 neighbour.

    The positive is the neighbour at ``positive_rank`` (0 = nearest), or the farthest one kept when the
    row has fewer. Returns the table and how many rows took that fallback.
    """
    lengths = pc.list_value_length(graph["neighbor_ids"]).to_numpy(zero_copy_only=False)
    has = lengths > 0
    g = graph.filter(pa.array(has))
    rank = np.minimum(positive_rank, lengths[has] - 1)

    def pick(column: str) -> pa.Array:
        arr = g[column].combine_chunks()
        return arr.values.take(pa.array(arr.offsets.to_numpy()[:-1] + rank, pa.int64()))

    out = pa.table({"anchor_id": g["hand_id"], "positive_id": pick("neighbor_ids"), "distance": pick("distances")})
    return out, int((rank < positive_rank).sum())


def shard_rows(n: int, per_shard: int, seed: int) -> list[np.ndarray]:
    """A seeded random permutation of rows [0, n) cut into shards of ``per_shard`` (the last may be short)."""
    order = np.random.default_rng(seed).permutation(n)
    return [order[i:i + per_shard] for i in range(0, n, per_shard)]


def assemble_pairs(pairs: pa.Table, hands: pa.Table) -> pa.Table:
    """PAIRS rows for pairs (anchor_id, positive_id, distance) from hands rows (HAND_COLUMNS) holding both."""
    ai = pc.index_in(pairs["anchor_id"], value_set=hands["hand_id"])
    pi = pc.index_in(pairs["positive_id"], value_set=hands["hand_id"])
    if ai.null_count or pi.null_count:
        raise KeyError(f"{ai.null_count + pi.null_count} hands of the graph are missing from the hands table")
    a, p = hands.take(ai), hands.take(pi)
    return pa.table({
        "anchor_id": pairs["anchor_id"], "positive_id": pairs["positive_id"],
        "anchor_jpeg": a["crop_jpeg"], "positive_jpeg": p["crop_jpeg"],
        "anchor_keypoints": a["keypoints"], "positive_keypoints": p["keypoints"],
        "distance": pairs["distance"], "source": a["source"],
    }, schema=PAIRS)


# --- the Ray part --------------------------------------------------------------------------------------

def _scatter(files: list[str], needed: pa.Table, n_out: int):
    """Rows (HAND_COLUMNS) of ``files`` that ``needed`` (hand_id, out) asks for, split into n_out tables."""
    blocks: list[list[pa.Table]] = [[] for _ in range(n_out)]
    for f in files:
        ids = storage.read_parquet(f, columns=["hand_id"])["hand_id"].combine_chunks()
        pos = pc.index_in(needed["hand_id"], value_set=ids)
        hit = pc.is_valid(pos)
        if not pc.any(hit).as_py():
            continue
        rows, outs = pos.filter(hit), needed["out"].filter(hit).to_numpy()
        sub = storage.read_parquet(f, columns=HAND_COLUMNS, schema=HANDS).take(rows)
        for j in np.unique(outs):
            blocks[j].append(sub.filter(pa.array(outs == j)))
    empty = HANDS.empty_table().select(HAND_COLUMNS)
    tables = [pa.concat_tables(b) if b else empty for b in blocks]
    return tables[0] if n_out == 1 else tuple(tables)


def _gather(uri: str, pairs: pa.Table, metadata: dict, *blocks: pa.Table) -> int:
    """Assemble one output shard from the scattered hand rows and write it atomically, stamped with ``metadata``."""
    hands = pa.concat_tables(blocks) if blocks else HANDS.empty_table().select(HAND_COLUMNS)
    storage.write_parquet_atomic(assemble_pairs(pairs, hands), uri, metadata, row_group_rows=PAIRS_ROW_GROUP_ROWS)
    return len(pairs)


def _needed(slices: list[pa.Table]) -> pa.Table:
    """(hand_id, out): every hand output shard ``out`` of a wave needs, once per shard."""
    parts = []
    for o, s in enumerate(slices):
        ids = pc.unique(pa.concat_arrays([s["anchor_id"].combine_chunks(), s["positive_id"].combine_chunks()]))
        parts.append(pa.table({"hand_id": ids, "out": pa.array(np.full(len(ids), o, np.int32))}))
    return pa.concat_tables(parts)


def _file_groups(files: list[str], groups: int) -> list[list[str]]:
    k = max(1, min(groups, len(files)))
    return [files[i::k] for i in range(k)]


def write_pair_shards(pairs: pa.Table, shards: list[np.ndarray], hands_files: list[str],
                      todo: list[tuple[int, str]], wave: int, metadata: dict) -> None:
    """Write output shards ``todo`` [(shard index, uri)], ``wave`` at a time, stamped with ``metadata``;
    shard j holds rows ``shards[j]`` of ``pairs``."""
    import ray

    scatter = ray.remote(_scatter)
    gather = ray.remote(_gather)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    file_groups = _file_groups(hands_files, max(2 * cpus, 4))
    for w in range(0, len(todo), wave):
        batch = todo[w:w + wave]
        slices = [pairs.take(pa.array(shards[j])) for j, _ in batch]  # compact copies: cheap to send
        needed_ref = ray.put(_needed(slices))
        scattered = [scatter.options(num_returns=len(batch)).remote(g, needed_ref, len(batch)) for g in file_groups]
        if len(batch) == 1:
            scattered = [[r] for r in scattered]
        written = [gather.remote(uri, s, metadata, *[refs[o] for refs in scattered])
                   for o, ((_, uri), s) in enumerate(zip(batch, slices))]
        ray.get(written)
        log.debug("pairs: %d/%d shards written", min(w + wave, len(todo)), len(todo))


# --- the pairs stage -----------------------------------------------------------------------------------

def read_graph_positives(graph_uri: str, positive_rank: int) -> tuple[pa.Table, int, int]:
    """(anchor_id, positive_id, distance) over the graph's parts in order; plus counts of hands without
    a neighbour and of rank fallbacks."""
    tables, no_neighbor, fallback = [], 0, 0
    for f in storage.list_parts(graph_uri):
        g = storage.read_parquet(f, schema=GRAPH)
        t, fb = select_positives(g, positive_rank)
        tables.append(t)
        no_neighbor += len(g) - len(t)
        fallback += fb
    empty = pa.table({"anchor_id": pa.array([], pa.string()), "positive_id": pa.array([], pa.string()),
                      "distance": pa.array([], pa.float32())})
    return (pa.concat_tables(tables) if tables else empty), no_neighbor, fallback


def run_pairs_stage(cfg: GraphConfig) -> dict:
    """output/graph + output/hands -> output/pairs (module docstring). Needs a finished graph; same settings
    and graph as finished pairs: reused; as unfinished ones: only missing shards are written; other
    settings: ``StageMismatch``."""
    t0 = time.perf_counter()
    graph_uri, pairs_uri = storage.join(cfg.output, "graph"), storage.join(cfg.output, "pairs")
    graph = StageManifest.require_complete(graph_uri, "graph", "run the graph stage first")
    settings = {"graph": graph.config_hash, **cfg.pairs_result_dict()}
    m = StageManifest.open(pairs_uri, "pairs", settings, info={"config": asdict(cfg)})
    if m.complete:
        log.info("pairs at %s are complete for these settings: reusing them", pairs_uri)
        return {**m.summary, "reused": True}

    pairs, no_neighbor, fallback = read_graph_positives(graph_uri, cfg.pairs.positive_rank)
    shards = shard_rows(len(pairs), cfg.pairs.pairs_per_shard, cfg.seed)
    uris = [storage.join(pairs_uri, f"pairs-{j:05d}.parquet") for j in range(len(shards))]
    todo = m.pending(uris)
    log.info("pairs: %d anchors with a positive (%d hands without a neighbour), %d of %d shards to write",
             len(pairs), no_neighbor, len(todo), len(shards))
    if todo:
        hands_files = storage.list_parts(storage.join(cfg.output, "hands"))
        shard_of = {u: j for j, u in enumerate(uris)}
        write_pair_shards(pairs, shards, hands_files, [(shard_of[u], u) for u in todo], cfg.resources.pairs_wave,
                          m.part_metadata())
    montage_uri = storage.join(pairs_uri, MONTAGE)
    if todo or not storage.exists(montage_uri):
        write_montage(pairs_uri, montage_uri, cfg.pairs.montage_pairs)
    summary = {
        "pairs": len(pairs), "shards": len(shards), "shards_written": len(todo), "hands_without_neighbor": no_neighbor,
        "positive_rank": cfg.pairs.positive_rank, "positive_rank_fallback": fallback,
        "mean_distance": round(float(pc.mean(pairs["distance"]).as_py() or 0.0), 5),
        "montage": montage_uri, "seconds": round(time.perf_counter() - t0, 2), "config_hash": m.config_hash,
    }
    m.finish(summary)
    return summary
