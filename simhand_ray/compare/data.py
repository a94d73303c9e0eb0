"""The comparison's data, made once from a mine output (``OUTPUT/data``, a stage of its own):

- ``splits.json``: every video's set (``splits.split_videos``) and the counts;
- ``mined/``: the pre-training videos' hands, their graph and pairs, mined with the mine output's own graph
  settings (so no probe, fine-tuning or test video lends a positive);
- ``oracle/``: the same hands, each hand with a 3D truth paired to the other-video hand nearest by true 3D
  pose (the ceiling of mining), through the same pairs stage;
- ``probe/hands``: the probe-fitting and test hands that match a label (the linear probe's rows);
- ``freihand/``: the fine-tuning hands (training, in a seeded order so a label fraction is a random subset)
  and the test hands (evaluation) in FreiHAND's layout, for ``jobs/finetune.py`` and ``jobs/evaluate.py``;
- ``mined/mining`` and ``oracle/mining``: the mining probe of both pair sets (``mining_probe``).
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pyarrow as pa

from simhand_ray import schema, storage
from simhand_ray.compare import truth as tr
from simhand_ray.compare.mining_probe import evaluate_mining
from simhand_ray.compare.splits import SETS, split_videos
from simhand_ray.config import CompareConfig, GraphConfig, from_dict
from simhand_ray.evaluate.probe import nearest_by_pose
from simhand_ray.graph.graph_stage import run_graph_stage
from simhand_ray.graph.pairs import run_pairs_stage
from simhand_ray.schema import GRAPH
from simhand_ray.stage import StageManifest
from simhand_ray.synthetic import freihand_export as fh

log = logging.getLogger(__name__)

STAGE = "compare-data"
PART = "part-00000.parquet"


def data_settings(cfg: CompareConfig) -> dict:
    """What shapes the data: the mine output (its stages' hashes) and the split."""
    hashes = {}
    for stage, folder in (("label", cfg.mine), ("graph", storage.join(cfg.mine, "graph"))):
        m = StageManifest.read(folder, stage)
        if m is None or not m.complete:
            raise FileNotFoundError(f"no finished {stage} stage in {cfg.mine}: run jobs/mine.py on it first")
        hashes[stage] = m.config_hash
    return {"mine": storage.absolute(cfg.mine), "stages": hashes, "split_seed": cfg.split_seed,
            "fractions": [cfg.pretrain_videos, cfg.probe_videos, cfg.finetune_videos], "dataset": cfg.dataset}


def mine_graph_config(mine: str, output: str) -> GraphConfig:
    """The graph + pairs settings the mine output was made with, writing to ``output``."""
    m = StageManifest.require_complete(storage.join(mine, "graph"), "graph", "run jobs/mine.py first")
    return replace(from_dict(GraphConfig, m.record["config"]), output=output)


def oracle_graph(hand_ids: pa.Array, video_ids: np.ndarray, poses: np.ndarray, usable: np.ndarray) -> pa.Table:
    """GRAPH rows: every usable hand with its other-video hand nearest by true 3D pose (``poses`` normalised)."""
    pool = np.flatnonzero(usable)
    nn = nearest_by_pose(poses[pool], video_ids[pool])
    ok = nn >= 0
    a, b = pool[ok], pool[nn[ok]]
    dist = tr.pose_distances(poses[a], poses[b]).astype(np.float32)
    offsets = pa.array(np.arange(len(a) + 1, dtype=np.int32))
    return pa.table({"hand_id": hand_ids.take(pa.array(a)),
                     "neighbor_ids": pa.ListArray.from_arrays(offsets, hand_ids.take(pa.array(b))),
                     "distances": pa.ListArray.from_arrays(offsets, pa.array(dist))}, schema=GRAPH)


def freihand_samples(hands: pa.Table, truth: tr.Truth, rows: np.ndarray) -> list[fh.Sample]:
    """FreiHAND samples of mined hands: the 224 px crop as it is (a right hand), the joints mirrored for a left
    hand, and K of the crop (the frame's K cut to the crop box, reflected when mirrored)."""
    boxes = hands.column("crop_box").combine_chunks().flatten().to_numpy().reshape(-1, 4)
    mirrored = np.asarray(hands.column("handedness").to_pylist(), dtype=object) == "left"
    out = []
    for i in rows:
        x0, y0, x1, _ = boxes[i]
        K = fh.crop_intrinsics(truth.K[i], x0, y0, x1 - x0, schema.CROP_SIZE)
        xyz = truth.joints[i].copy()
        if mirrored[i]:
            xyz[:, 0] *= -1.0
            K[0, 2] = schema.CROP_SIZE - K[0, 2]
        K[:2, 2] -= 0.5     # FreiHAND's K: pixel centres at integers
        out.append(fh.Sample(hands.column("crop_jpeg")[int(i)].as_py(), xyz, K, ""))
    return out


def prepare_data(cfg: CompareConfig, folder: str) -> dict:
    """Make (or reuse) ``folder`` as the module docstring says; returns its summary."""
    m = StageManifest.open(folder, STAGE, data_settings(cfg))
    if m.complete:
        return m.summary
    hands = storage.read_parquet(storage.join(cfg.mine, "hands"), schema=schema.HANDS)
    truth = tr.match_truth(hands)
    videos = np.asarray(hands.column("video_id").to_pylist(), dtype=object).astype(str)
    labelled = sorted(set(videos[truth.matched]))
    if len(labelled) < len(SETS):
        raise ValueError(f"{cfg.mine}: {len(labelled)} videos have hands that match a sidecar label; the comparison "
                         f"needs at least {len(SETS)} (one per set: {', '.join(SETS)})")
    split = split_videos(labelled, (cfg.pretrain_videos, cfg.probe_videos, cfg.finetune_videos), cfg.split_seed)
    hand_set = np.array([split.get(v, "pretrain") for v in videos], dtype=object)   # unlabelled: pre-training
    pre = hand_set == "pretrain"

    mined, oracle = storage.join(folder, "mined"), storage.join(folder, "oracle")
    sub = hands.filter(pa.array(pre))
    for out in (mined, oracle):
        storage.write_parquet_atomic(sub, storage.join(out, "hands", PART))
    gcfg = mine_graph_config(cfg.mine, mined)
    run_graph_stage(gcfg)
    run_pairs_stage(gcfg)
    sub_truth = tr.Truth(*(getattr(truth, f)[pre] for f in ("matched", "reason", "poses", "joints", "K", "left")))
    graph = oracle_graph(sub.column("hand_id").combine_chunks(), videos[pre], sub_truth.poses, sub_truth.matched)
    gm = StageManifest.open(storage.join(oracle, "graph"), "graph",
                            {"oracle": "nearest other-video hand by true 3D pose", "hands": data_settings(cfg)})
    storage.write_parquet_atomic(graph, storage.join(oracle, "graph", PART), gm.part_metadata())
    gm.finish({"hands": len(graph), "oracle": True})
    run_pairs_stage(replace(gcfg, output=oracle))
    mining = {name: evaluate_mining(storage.join(out, "hands"), storage.join(out, "pairs"), storage.join(out, "mining"))
              for name, out in (("mined", mined), ("oracle", oracle))}

    probe_rows = np.isin(hand_set, ["probe", "test"]) & truth.matched
    storage.write_parquet_atomic(hands.filter(pa.array(probe_rows)), storage.join(folder, "probe", "hands", PART))
    counts = {s: {"videos": int(sum(1 for v in split.values() if v == s)), "hands": int((hand_set == s).sum()),
                  "hands_with_truth": int(((hand_set == s) & truth.matched).sum())} for s in SETS}
    counts["pretrain"]["unlabelled_videos"] = len(set(videos) - set(labelled))
    if not cfg.dataset:
        rng = np.random.default_rng(cfg.split_seed)
        train = rng.permutation(np.flatnonzero((hand_set == "finetune") & truth.matched))
        test = np.flatnonzero((hand_set == "test") & truth.matched)
        root = storage.join(folder, "freihand")
        for name, rows in (("training", train), ("evaluation", test)):
            fh.write_split(root, name, freihand_samples(hands, truth, rows))
    storage.write_json_atomic(storage.join(folder, "splits.json"), {"videos": split, "counts": counts})
    summary = {"counts": counts, "truth": truth.counts(), "mining": mining,
               "pairs": {"mined": mining["mined"]["pairs"], "oracle": mining["oracle"]["pairs"]}}
    m.finish(summary)
    return summary
