"""The pairs stage (SPEC §2): one row per anchor with a neighbour, anchor + positive crops and keypoints in
the row, Parquet shards written atomically to a local dir or s3://, a re-run resumes; the mine CLI."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow as pa
import pytest
from conftest import real_data

from simhand_ray import storage
from simhand_ray.config import GraphConfig
from simhand_ray.graph.knn import StageConfigMismatch, run_graph_stage
from simhand_ray.graph.pairs import (
    MONTAGE, assemble_pairs, draw_hand, pairs_montage, run_pairs_stage, select_positives,
)
from simhand_ray.schema import GRAPH, HANDS, PAIRS, keypoints_array

IMAGES = ("handSrc.jpg", "fruits.jpg", "building.jpg", "messi5.jpg")


def real_crops(n: int, seed: int = 0) -> list[bytes]:
    """n distinct 224x224 JPEG crops cut from the real sample photos (each stamped with its index)."""
    rng = np.random.default_rng(seed)
    photos = [cv2.imread(str(real_data("images", name))) for name in IMAGES]
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w)))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = cv2.resize(img[y:y + side, x:x + side], (224, 224), interpolation=cv2.INTER_AREA)
        cv2.putText(crop, str(i), (8, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 255, 255), 2)
        out.append(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def hands_table(n_videos: int, per_video: int, seed: int = 0) -> pa.Table:
    """A HANDS table: pose-like keypoints jittering around one random hand per video, real JPEG crops."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 180, (n_videos, 21, 2))
    video = np.repeat(np.arange(n_videos), per_video)
    n = len(video)
    kp = (base[video] + rng.normal(0, 4.0, (n, 21, 2))).astype(np.float32)
    kp[3, 5] = np.nan  # one hand without a descriptor: no neighbours, so no pair
    return pa.table({
        "hand_id": [f"src{v % 2}:v{v:03d}:{i:08d}:0" for i, v in enumerate(video)],
        "source": [f"src{v % 2}" for v in video], "video_id": [f"v{v:03d}" for v in video],
        "uri": [f"/data/v{v:03d}.mp4" for v in video], "frame_index": np.arange(n),
        "hand_index": np.zeros(n, np.int32), "image_width": np.full(n, 640, np.int32),
        "image_height": np.full(n, 480, np.int32), "box": [[0.0, 0.0, 100.0, 100.0]] * n,
        "crop_box": [[0.0, 0.0, 130.0, 130.0]] * n, "handedness": ["right"] * n,
        "handedness_score": np.ones(n, np.float32), "det_score": np.ones(n, np.float32),
        "keypoints": list(kp.reshape(n, 42)), "keypoint_scores": [np.ones(21, np.float32)] * n,
        "crop_jpeg": real_crops(n, seed),
    }, schema=HANDS)


def write_hands(out: str, table: pa.Table, files: int = 3) -> None:
    step = -(-len(table) // files)
    for i in range(files):
        storage.write_parquet_atomic(table.slice(i * step, step), storage.join(out, "hands", f"h{i}.parquet"))


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
    hands = hands_table(2, 3).select(["hand_id", "source", "keypoints", "crop_jpeg"])
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
    drawn = draw_hand(crop, keypoints_array(hands["keypoints"])[0])
    assert drawn.shape == crop.shape and (drawn != crop).any()


# --- the stage -------------------------------------------------------------------------------------------

def test_pairs_stage_local_resume_and_config_check(ray_cluster, tmp_path):
    hands = hands_table(8, 6, seed=1)
    out = str(tmp_path / "mine")
    write_hands(out, hands)
    cfg = GraphConfig(output=out, k=4, shards=2, pairs_per_shard=7, pairs_wave=4, montage_pairs=8)
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
    manifest = storage.join(out, "pairs", "manifest.json")
    storage.write_json_atomic(manifest, dict(storage.read_json(manifest), complete=False))
    again = run_pairs_stage(cfg)
    assert again["shards_written"] == 1 and not again.get("reused")
    assert check_pairs(out, hands).sort_by("anchor_id").equals(pairs.sort_by("anchor_id"))
    assert run_pairs_stage(cfg)["reused"] is True

    rank1 = GraphConfig(output=out, k=4, shards=2, pairs_per_shard=7, positive_rank=1)
    with pytest.raises(StageConfigMismatch):
        run_pairs_stage(rank1)
    storage.delete(storage.join(out, "pairs"))
    assert run_pairs_stage(rank1)["positive_rank"] == 1
    check_pairs(out, hands, positive_rank=1)


def test_pairs_stage_on_s3(ray_cluster, s3_bucket):
    hands = hands_table(5, 5, seed=2)
    out = f"{s3_bucket}/mine"
    write_hands(out, hands, files=2)
    cfg = GraphConfig(output=out, k=3, pairs_per_shard=10)
    assert run_graph_stage(cfg)["with_descriptor"] == 24
    summary = run_pairs_stage(cfg)
    assert summary["pairs"] == 24 and summary["shards"] == 3
    check_pairs(out, hands)
    assert storage.exists(f"{out}/pairs/{MONTAGE}") and storage.exists(f"{out}/pairs/manifest.json")
    assert run_pairs_stage(cfg)["reused"] is True


def test_pairs_stage_needs_a_finished_graph(tmp_path):
    with pytest.raises(FileNotFoundError):
        run_pairs_stage(GraphConfig(output=str(tmp_path)))


def test_mine_cli_graph_then_pairs(ray_cluster, tmp_path, caplog):
    import mine

    hands = hands_table(4, 5, seed=3)
    out = str(tmp_path / "mine")
    write_hands(out, hands, files=1)
    common = ["--output", out, "--k", "3", "--shards", "2", "--index", "ivf", "--pca-dim", "8"]
    assert mine.main(["--stage", "graph", *common]) == 0
    graph_manifest = storage.read_json(storage.join(out, "graph", "manifest.json"))
    assert graph_manifest["complete"] and graph_manifest["config"]["index"] == "ivf"
    assert mine.main(["--stage", "pairs", *common, "--positive-rank", "2"]) == 0
    check_pairs(out, hands, positive_rank=2)
    assert json.loads(json.dumps(storage.read_json(storage.join(out, "pairs", "manifest.json"))))["complete"]
