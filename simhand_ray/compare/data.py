"""The comparison's data, made once from a mine output (``OUTPUT/data``, a stage of its own):

- ``splits.json``: every video's set (``splits.split_videos``) and the counts;
- ``mined/``: the pre-training videos' hands mined again with the mine output's own graph and pairs settings
  (``hands/``, ``graph/``, ``pairs/``), so no probe, fine-tuning or test video lends a positive;
- ``oracle/pairs``: each pre-training hand with a 3D truth paired to the other-video pre-training hand nearest
  by true 3D pose (the ceiling of mining);
- ``mined/mining``, ``oracle/mining``: the mining probe of both pair sets (``mining_probe``);
- ``probe/hands`` + ``probe/_truth.npz``: the probe-fitting and test hands that match a label, with their
  normalised 3D poses (the linear probe's rows; no sidecar is read again);
- ``freihand/``: the fine-tuning hands (training, in a seeded order so a label fraction is a random subset)
  and the test hands (evaluation) in FreiHAND's layout, for fine-tuning and evaluation.

The settings name the mine output by its stages' hashes and counts, not by its path, so a copy of the folder
elsewhere (another machine) is reused as it is.
"""
from __future__ import annotations

import io
import logging
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simhand_ray import schema, storage
from simhand_ray.compare import truth as tr
from simhand_ray.compare.mining_probe import evaluate_mining
from simhand_ray.compare.splits import SETS, split_videos
from simhand_ray.config import CompareConfig
from simhand_ray.evaluate.probe import nearest_by_pose
from simhand_ray.graph.pairs import assemble_pairs, run_pairs_stage
from simhand_ray.graph.pairs_montage import MONTAGE, write_montage
from simhand_ray.schema import PAIRS_ROW_GROUP_ROWS
from simhand_ray.stage import StageManifest
from simhand_ray.synthetic import freihand_export as fh

log = logging.getLogger(__name__)

STAGE = "compare-data"
PART = "part-00000.parquet"
TRUTH = "_truth.npz"


def data_settings(cfg: CompareConfig) -> dict:
    """What shapes the data: the mine output (its stages' hashes and counts) and the split."""
    stages = {}
    for stage, folder in (("label", cfg.mine), ("graph", storage.join(cfg.mine, "graph"))):
        m = StageManifest.read(folder, stage)
        if m is None or not m.complete:
            raise FileNotFoundError(f"no finished {stage} stage in {cfg.mine}: run jobs/mine.py on it first")
        s = m.summary or {}
        stages[stage] = {"hash": m.config_hash, "hands": s.get("hands_kept", s.get("hands"))}
    return {"mine": stages, "split_seed": cfg.split_seed, "dataset": cfg.dataset,
            "fractions": [cfg.pretrain_videos, cfg.probe_videos, cfg.finetune_videos]}


def mine_again(mine: str, hands: pa.Table, folder: str) -> int:
    """The graph and pairs stages over ``hands`` into ``folder`` with the settings ``mine`` was made with;
    returns the pairs' count. (faiss is imported here only: a finished data stage needs none.)"""
    from simhand_ray.config import GraphConfig, from_dict
    from simhand_ray.graph.graph_stage import run_graph_stage

    storage.write_parquet_atomic(hands, storage.join(folder, "hands", PART))
    record = StageManifest.require_complete(storage.join(mine, "graph"), "graph", "run jobs/mine.py first").record
    cfg = replace(from_dict(GraphConfig, record["config"]), output=folder)
    run_graph_stage(cfg)
    return run_pairs_stage(cfg)["pairs"]


def oracle_positives(hand_ids: np.ndarray, video_ids: np.ndarray, poses: np.ndarray) -> pa.Table:
    """(anchor_id, positive_id, distance): every hand with its other-video hand nearest by ``poses`` (N, 21, 3)."""
    nn = nearest_by_pose(poses, video_ids)
    ok = np.flatnonzero(nn >= 0)
    return pa.table({"anchor_id": pa.array(hand_ids[ok].tolist(), pa.string()),
                     "positive_id": pa.array(hand_ids[nn[ok]].tolist(), pa.string()),
                     "distance": pa.array(tr.pose_distances(poses[ok], poses[nn[ok]]), pa.float32())})


def write_pairs(folder: str, positives: pa.Table, hands: pa.Table, seed: int, settings: dict) -> int:
    """A pairs dataset (``schema.PAIRS``, 256-row groups, rows in a seeded order) with its stage manifest and
    montage, as the pairs stage writes one; returns the row count."""
    m = StageManifest.open(folder, "pairs", settings)
    order = np.random.default_rng(seed).permutation(len(positives))
    table = assemble_pairs(positives.take(pa.array(order, pa.int64())), hands)
    storage.write_parquet_atomic(table, storage.join(folder, "pairs-00000.parquet"), m.part_metadata(),
                                 row_group_rows=PAIRS_ROW_GROUP_ROWS)
    write_montage(folder, storage.join(folder, MONTAGE), 16)
    m.finish({"pairs": len(table), "mean_distance": float(pc.mean(table["distance"]).as_py() or 0.0)})
    return len(table)


def freihand_samples(hands: pa.Table, truth: tr.Truth, rows: np.ndarray) -> list[fh.Sample]:
    """FreiHAND samples of mined hands: the 224 px crop as it is (a right hand), the joints mirrored for a hand
    the crop mirrored, and K of the crop (the frame's K cut to the crop box, reflected when mirrored)."""
    boxes = hands.column("crop_box").combine_chunks().flatten().to_numpy().reshape(-1, 4)
    mirrored = np.asarray(hands.column("handedness").to_pylist(), dtype=object) == "left"
    jpegs = hands.column("crop_jpeg")
    out = []
    for i in rows:
        x0, y0, x1, _ = boxes[i]
        K = fh.crop_intrinsics(truth.K[i], x0, y0, x1 - x0, schema.CROP_SIZE)
        xyz = truth.joints[i]
        if mirrored[i]:       # the crop was flipped when mined: the camera flips with it
            xyz, K = fh.mirror_camera(xyz, K, schema.CROP_SIZE)
        K[:2, 2] -= 0.5       # FreiHAND's K: pixel centres at integers
        out.append(fh.Sample(jpegs[int(i)].as_py(), xyz, K, ""))
    return out


def read_truth(folder: str) -> tuple[list[str], np.ndarray]:
    """(hand_ids, normalised 3D poses (N, 21, 3)) of the probe hands."""
    z = np.load(io.BytesIO(storage.read_bytes(storage.join(folder, "probe", TRUTH))))
    return [str(h) for h in z["hand_id"]], z["poses"]


def prepare_data(cfg: CompareConfig, folder: str) -> dict:
    """Make (or reuse) ``folder`` as the module docstring says; returns its summary."""
    settings = data_settings(cfg)
    m = StageManifest.open(folder, STAGE, settings)
    if m.complete:
        return m.summary
    hands = storage.read_parquet(storage.join(cfg.mine, "hands"), schema=schema.HANDS)
    truth = tr.match_truth(hands)
    ids = np.asarray(hands.column("hand_id").to_pylist(), dtype=object).astype(str)
    videos = np.asarray(hands.column("video_id").to_pylist(), dtype=object).astype(str)
    labelled = sorted(set(videos[truth.matched]))
    if len(labelled) < len(SETS):
        raise ValueError(f"{cfg.mine}: {len(labelled)} videos have hands that match a sidecar label; the comparison "
                         f"needs at least {len(SETS)} (one per set: {', '.join(SETS)})")
    split = split_videos(labelled, (cfg.pretrain_videos, cfg.probe_videos, cfg.finetune_videos), cfg.split_seed)
    hand_set = np.array([split.get(v, "pretrain") for v in videos], dtype=object)   # unlabelled: pre-training
    pre = hand_set == "pretrain"

    pool = hands.filter(pa.array(pre))      # the pre-training hands; random and oracle hands come from them too
    usable = pre & truth.matched
    oracle = oracle_positives(ids[usable], videos[usable], truth.poses[usable])
    pairs = {"mined": mine_again(cfg.mine, pool, storage.join(folder, "mined")),
             "oracle": write_pairs(storage.join(folder, "oracle", "pairs"), oracle, hands, cfg.split_seed,
                                   {"mine": settings["mine"], "split_seed": cfg.split_seed, "positives": "oracle"})}
    mining = {name: evaluate_mining(pool, storage.join(folder, name, "pairs"), storage.join(folder, name, "mining"))
              for name in pairs}

    probe_rows = np.flatnonzero(np.isin(hand_set, ["probe", "test"]) & truth.matched)
    storage.write_parquet_atomic(hands.take(pa.array(probe_rows)), storage.join(folder, "probe", "hands", PART))
    buf = io.BytesIO()
    np.savez_compressed(buf, hand_id=ids[probe_rows], poses=truth.poses[probe_rows])
    storage.write_bytes_atomic(storage.join(folder, "probe", TRUTH), buf.getvalue())
    counts = {s: {"videos": int(sum(1 for v in split.values() if v == s)), "hands": int((hand_set == s).sum()),
                  "hands_with_truth": int(((hand_set == s) & truth.matched).sum())} for s in SETS}
    counts["pretrain"]["unlabelled_videos"] = len(set(videos) - set(labelled))
    if not cfg.dataset:
        train = np.random.default_rng(cfg.split_seed).permutation(np.flatnonzero((hand_set == "finetune") & truth.matched))
        test = np.flatnonzero((hand_set == "test") & truth.matched)
        for name, rows in (("training", train), ("evaluation", test)):
            fh.write_split(storage.join(folder, "freihand"), name, freihand_samples(hands, truth, rows))
    storage.write_json_atomic(storage.join(folder, "splits.json"), {"videos": split, "counts": counts})
    summary = {"counts": counts, "truth": truth.counts(), "mining": mining, "pairs": pairs}
    m.finish(summary)
    return summary
