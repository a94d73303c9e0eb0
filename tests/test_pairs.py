"""The pairs stage (SPEC §2): one row per anchor with a neighbour, anchor + positive crops and keypoints in
the row, Parquet shards written atomically to a local dir or s3://, a re-run resumes; the mine CLI."""
from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa
import pytest
from builders import graph_config, hands_with_crops, write_hands

from simhand_ray import storage
from simhand_ray.config import GraphResources, PairsConfig
from simhand_ray.drawing import draw_hand
from simhand_ray.graph.graph_stage import run_graph_stage
from simhand_ray.graph.pairs import assemble_pairs, run_pairs_stage, select_positives
from simhand_ray.graph.pairs_montage import MONTAGE, pairs_montage
from simhand_ray.schema import GRAPH, PAIRS, keypoints_array
from simhand_ray.stage import StageManifest, StageMismatch


def check_pairs(out: str, hands: pa.Table, positive_rank: int = 0) -> pa.Table:
    """Every anchor with a neighbour has exactly one row, built from the graph and the hands table."""
    graph = {r["hand_id"]: r for r in storage.read_parquet(storage.join(out, "graph"), schema=GRAPH).to_pylist()}
    pairs = storage.read_parquet(storage.join(out, "pairs"), schema=PAIRS)
    by_id = {h: i for i, h in enumerate(hands["hand_id"].to_pylist())}
    kp = keypoints_array(hands["keypoints"])
    anchors = pairs["anchor_id"].to_pylist()
    assert sorted(anchors) == sorted(h for h, r in graph.items() if r["neighbor_ids"])
    akp, pkp = keypoints_array(pairs["anchor_keypoints"]), keypoints_array(pairs["positive_keypoints"])
    for i, row in enumerate(pairs.select(["anchor_id", "positive_id", "anchor_jpeg", "positive_jpeg", "distance",
                                          "source"]).to_pylist()):
        g = graph[row["anchor_id"]]
        rank = min(positive_rank, len(g["neighbor_ids"]) - 1)
        assert row["positive_id"] == g["neighbor_ids"][rank]
        assert row["distance"] == pytest.approx(g["distances"][rank])
        a, p = by_id[row["anchor_id"]], by_id[row["positive_id"]]
        assert row["anchor_jpeg"] == hands["crop_jpeg"][a].as_py()
        assert row["positive_jpeg"] == hands["crop_jpeg"][p].as_py()
        assert row["source"] == hands["source"][a].as_py()
        np.testing.assert_array_equal(akp[i], kp[a])
        np.testing.assert_array_equal(pkp[i], kp[p])
        for key in ("anchor_jpeg", "positive_jpeg"):
            img = cv2.imdecode(np.frombuffer(row[key], np.uint8), cv2.IMREAD_COLOR)
            assert img is not None and img.shape == (224, 224, 3)
        assert row["anchor_id"].split(":")[1] != row["positive_id"].split(":")[1]
    return pairs


# --- pure parts ------------------------------------------------------------------------------------------

def test_select_positives_rank_and_fallback():
    graph = pa.table({"hand_id": ["a", "b", "c"],
                      "neighbor_ids": [[], ["x"], ["y", "z", "w"]],
                      "distances": [[], [0.5], [0.1, 0.2, 0.3]]}, schema=GRAPH)
    t, fallback = select_positives(graph, 0)
    assert t.to_pylist() == [{"anchor_id": "b", "positive_id": "x", "distance": 0.5},
                             {"anchor_id": "c", "positive_id": "y", "distance": pytest.approx(0.1)}]
    assert fallback == 0
    t, fallback = select_positives(graph, 2)
    assert t["positive_id"].to_pylist() == ["x", "w"] and fallback == 1


def test_assemble_pairs_and_montage():
    hands = hands_with_crops(2, 3).select(["hand_id", "source", "keypoints", "crop_jpeg"])
    ids = hands["hand_id"].to_pylist()
    pairs = pa.table({"anchor_id": [ids[0], ids[4]], "positive_id": [ids[5], ids[1]],
                      "distance": pa.array([0.2, 0.3], pa.float32())})
    t = assemble_pairs(pairs, hands)
    assert t.schema == PAIRS and t["positive_jpeg"][0].as_py() == hands["crop_jpeg"][5].as_py()
    with pytest.raises(KeyError):
        assemble_pairs(pa.table({"anchor_id": ["nope"], "positive_id": [ids[0]],
                                 "distance": pa.array([0.1], pa.float32())}), hands)
    img = pairs_montage(t, n=16, pairs_per_row=4, tile=100)
    assert img.shape == (100, 4 * 206 - 6, 3) and img[:, :200].std() > 0
    crop = cv2.imdecode(np.frombuffer(hands["crop_jpeg"][0].as_py(), np.uint8), cv2.IMREAD_COLOR)
    drawn = draw_hand(crop, keypoints_array(hands["keypoints"])[0], bgr=True)
    assert drawn.shape == crop.shape and (drawn != crop).any()


# --- the stage -------------------------------------------------------------------------------------------

def test_pairs_stage_local_resume_and_config_check(ray_cluster, tmp_path):
    hands = hands_with_crops(8, 6, seed=1)
    out = str(tmp_path / "mine")
    write_hands(out, hands, files=3)
    cfg = graph_config(out, k=4, shards=2, pairs=PairsConfig(pairs_per_shard=7, montage_pairs=8),
                       resources=GraphResources(pairs_wave=4))
    run_graph_stage(cfg)
    summary = run_pairs_stage(cfg)
    assert summary["pairs"] == 47 and summary["hands_without_neighbor"] == 1
    assert summary["shards"] == 7 and summary["shards_written"] == 7
    pairs = check_pairs(out, hands)
    files = storage.list_files(storage.join(out, "pairs"), (".parquet",))
    assert len(files) == 7 and all(len(storage.read_parquet(f)) <= 7 for f in files)
    montage = cv2.imdecode(np.frombuffer(storage.read_bytes(storage.join(out, "pairs", MONTAGE)), np.uint8),
                           cv2.IMREAD_COLOR)
    assert montage is not None and montage.shape[1] > 1000

    # a crash that lost one shard: the re-run writes only that shard, with the same rows
    storage.delete(files[3])
    StageManifest.read(storage.join(out, "pairs"), "pairs").update(status="incomplete")
    again = run_pairs_stage(cfg)
    assert again["shards_written"] == 1 and not again.get("reused")
    assert check_pairs(out, hands).sort_by("anchor_id").equals(pairs.sort_by("anchor_id"))
    assert run_pairs_stage(cfg)["reused"] is True

    rank1 = graph_config(out, k=4, shards=2, pairs=PairsConfig(pairs_per_shard=7, montage_pairs=8, positive_rank=1))
    with pytest.raises(StageMismatch, match="positive_rank: 0 -> 1"):
        run_pairs_stage(rank1)
    storage.delete(storage.join(out, "pairs"))
    assert run_pairs_stage(rank1)["positive_rank"] == 1
    check_pairs(out, hands, positive_rank=1)


def test_pairs_stage_on_s3(ray_cluster, s3_bucket):
    hands = hands_with_crops(5, 5, seed=2)
    out = f"{s3_bucket}/mine"
    write_hands(out, hands, files=2)
    cfg = graph_config(out, k=3, pairs=PairsConfig(pairs_per_shard=10))
    assert run_graph_stage(cfg)["with_descriptor"] == 24
    summary = run_pairs_stage(cfg)
    assert summary["pairs"] == 24 and summary["shards"] == 3
    check_pairs(out, hands)
    assert storage.exists(f"{out}/pairs/{MONTAGE}") and StageManifest.read(f"{out}/pairs", "pairs").complete
    assert run_pairs_stage(cfg)["reused"] is True


def test_pairs_stage_needs_a_finished_graph(tmp_path):
    with pytest.raises(FileNotFoundError):
        run_pairs_stage(graph_config(str(tmp_path)))


def test_mine_cli_graph_then_pairs(ray_cluster, tmp_path, caplog):
    import mine

    hands = hands_with_crops(4, 5, seed=3)
    out = str(tmp_path / "mine")
    write_hands(out, hands, files=1)
    common = ["--output", out, "--k", "3", "--shards", "2", "--index", "ivf", "--pca-dim", "8"]
    assert mine.main(["--stage", "graph", *common]) == 0
    graph_manifest = StageManifest.read(storage.join(out, "graph"), "graph")
    assert graph_manifest.complete and graph_manifest.record["settings"]["index"]["kind"] == "ivf"
    assert mine.main(["--stage", "pairs", *common, "--positive-rank", "2"]) == 0
    check_pairs(out, hands, positive_rank=2)
    pairs_manifest = StageManifest.read(storage.join(out, "pairs"), "pairs")
    assert pairs_manifest.complete and pairs_manifest.record["settings"]["graph"] == graph_manifest.config_hash


def test_no_pair_is_a_near_duplicate(ray_cluster, tmp_path):
    """Hands whose crops are the same picture (the same JPEG, or re-encoded) in other videos, with the same
    keypoints: without the rule they are each other's positives at distance 0; with it, never, so neither the
    pairs nor the montage (drawn from the pairs) show one. Settings changes change the graph's hash."""
    from builders import graph_config as cfg_of

    from simhand_ray.config import IndexConfig
    from simhand_ray.graph.duplicates import crop_hashes, near_duplicates

    hands = hands_with_crops(6, 4, seed=5)
    jpegs = hands["crop_jpeg"].to_pylist()
    img = cv2.imdecode(np.frombuffer(jpegs[0], np.uint8), cv2.IMREAD_COLOR)
    copies = [jpegs[0], cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 40])[1].tobytes()]
    kp = hands["keypoints"].to_pylist()
    # rows 4 and 8 (videos 1 and 2) become copies of row 0's picture and pose
    for row, data in zip((4, 8), copies):
        jpegs[row], kp[row] = data, kp[0]
    hands = hands.set_column(hands.schema.get_field_index("crop_jpeg"), "crop_jpeg", pa.array(jpegs, pa.binary())) \
        .set_column(hands.schema.get_field_index("keypoints"), "keypoints",
                    pa.array(kp, hands.schema.field("keypoints").type))
    out = str(tmp_path / "mine")
    write_hands(out, hands, files=2)
    off = cfg_of(out, k=3, near_duplicate_bits=-1)
    on = cfg_of(out, k=3)
    ids = hands["hand_id"].to_pylist()
    run_graph_stage(off)
    graph = {r["hand_id"]: r for r in storage.read_parquet(storage.join(out, "graph"), schema=GRAPH).to_pylist()}
    assert graph[ids[0]]["neighbor_ids"][0] in (ids[4], ids[8]) and graph[ids[0]]["distances"][0] == 0.0
    with pytest.raises(StageMismatch, match="near_duplicate_bits: -1 -> 16"):
        run_graph_stage(on)
    storage.delete(storage.join(out, "graph"))
    summary = run_graph_stage(on)
    assert summary["excluded_neighbors"]["near_duplicate_crop"] >= 6 and summary["fewer_than_k"] == 0
    run_pairs_stage(on)
    pairs = check_pairs(out, hands)
    h = crop_hashes(hands["crop_jpeg"].to_pylist())
    row = {x: i for i, x in enumerate(ids)}
    limit = IndexConfig().near_duplicate_bits
    for a, p in zip(pairs["anchor_id"].to_pylist(), pairs["positive_id"].to_pylist()):
        i, j = row[a], row[p]
        assert not near_duplicates(h.hashes[i], h.ok[i], h.hashes[j], h.ok[j], limit), (a, p)
    graph = {r["hand_id"]: r for r in storage.read_parquet(storage.join(out, "graph"), schema=GRAPH).to_pylist()}
    for x in (0, 4, 8):
        assert len(graph[ids[x]]["neighbor_ids"]) == 3
        assert not {ids[0], ids[4], ids[8]} & set(graph[ids[x]]["neighbor_ids"])
