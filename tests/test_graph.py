"""The similar-hands graph (SPEC §2): per-shard faiss search that excludes the query's video, the sharded
fan-out + merge on Ray (exact = brute force for any shard count; approximate held to a recall floor), and
the graph stage over a hands table (excluded hands, resume, the stage manifest)."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
from builders import graph_config, hands_table, pose_hands, write_hands

from simhand_ray import storage
from simhand_ray.config import GraphResources, IndexConfig
from simhand_ray.graph.descriptors import hand_descriptors
from simhand_ray.graph.graph_stage import EXCLUDED_REASONS, PCA, run_graph_stage
from simhand_ray.graph.index import ShardIndex, auto_nlist, auto_pq_m
from simhand_ray.graph.knn import knn_search, merge_topk, shard_bounds, video_ranges
from simhand_ray.graph.recall import recall_at_k
from simhand_ray.schema import GRAPH
from simhand_ray.stage import StageManifest, StageMismatch

# --- data and the slow reference -----------------------------------------------------------------------

def clustered(sizes, d: int = 12, seed: int = 0, spread: float = 0.25):
    """Videos of the given sizes, each a tight cluster around its own centre (like frames of one video),
    so most plain nearest neighbours of a hand are from its own video. -> x (N, d) float32, video (N,)."""
    rng = np.random.default_rng(seed)
    video = np.repeat(np.arange(len(sizes)), sizes)
    centres = rng.normal(size=(len(sizes), d))
    x = centres[video] + spread * rng.normal(size=(len(video), d))
    return x.astype(np.float32), video


def brute_force(x: np.ndarray, video: np.ndarray, k: int, exclude_own: bool = True):
    """Loop-free numpy kNN in float64: ids (N, k) (-1 = none) and L2 distances, ties broken by smaller id."""
    xd = x.astype(np.float64)
    d2 = ((xd[:, None, :] - xd[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    if exclude_own:
        d2[video[:, None] == video[None, :]] = np.inf
    if d2.shape[1] < k:
        d2 = np.pad(d2, ((0, 0), (0, k - d2.shape[1])), constant_values=np.inf)
    ids = np.argsort(d2, axis=1, kind="stable")[:, :k]
    dist = np.take_along_axis(d2, ids, 1)
    return np.where(np.isinf(dist), -1, ids), np.sqrt(dist)


# --- pure parts ------------------------------------------------------------------------------------------

def test_video_ranges_and_shard_bounds():
    lo, hi = video_ranges(np.array(["a", "a", "b", "c", "c", "c"], dtype=object))
    assert lo.tolist() == [0, 0, 2, 3, 3, 3] and hi.tolist() == [2, 2, 3, 6, 6, 6]
    assert video_ranges(np.array([]))[0].shape == (0,)
    assert shard_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert shard_bounds(2, 5) == [(0, 1), (1, 2)]
    assert shard_bounds(0, 3) == []


def test_merge_topk_orders_by_distance_then_id():
    a = (np.array([[5, 9, -1]]), np.array([[1.0, 2.0, np.inf]]))
    b = (np.array([[7, 2]]), np.array([[2.0, 0.5]]))
    ids, d2 = merge_topk([a, b], 4)
    assert ids.tolist() == [[2, 5, 7, 9]] and d2.tolist() == [[0.5, 1.0, 2.0, 2.0]]
    ids, d2 = merge_topk([a, b], 6)
    assert ids.tolist() == [[2, 5, 7, 9, -1, -1]] and np.isinf(d2[0, 4:]).all()


def test_auto_index_sizes():
    assert auto_nlist(1_000_000) == 4000 and auto_nlist(100) == 2 and auto_nlist(10) == 1
    assert auto_pq_m(42) == 14 and 16 % auto_pq_m(16) == 0
    with pytest.raises(ValueError):
        auto_pq_m(42, 5)


@pytest.mark.parametrize("small_group", [1, 10_000])  # 1: (nearly) all via a selector; huge: all via k + g
def test_shard_index_exact_excludes_own_video(small_group):
    x, video = clustered([1, 3, 40, 7, 60, 2, 25, 12], seed=1)
    lo, hi = video_ranges(video)
    truth, tdist = brute_force(x, video, 8)
    shard = ShardIndex(x, 0, IndexConfig(kind="flat", small_group=small_group))
    ids, d2 = shard.search(x, lo, hi, 8)
    np.testing.assert_array_equal(ids, truth)
    np.testing.assert_allclose(np.sqrt(d2), tdist, rtol=1e-6)
    # a shard holding ids [50, 120): global ids out, still never the query's video
    part = ShardIndex(x[50:120], 50, IndexConfig(kind="flat", small_group=small_group))
    pids, _ = part.search(x, lo, hi, 5)
    ok = pids >= 0
    assert ((pids[ok] >= 50) & (pids[ok] < 120)).all()
    assert not (video[pids[ok]] == np.broadcast_to(video[:, None], pids.shape)[ok]).any()


# --- the sharded search on Ray ----------------------------------------------------------------------------

def test_exact_graph_equals_brute_force_for_any_shard_count(ray_cluster):
    rng = np.random.default_rng(2)
    sizes = rng.integers(1, 70, 30)
    x, video = clustered(sizes, seed=2)
    # exact duplicates in other videos: ties must be broken the same way (by id) for every shard layout
    x[5] = x[300]
    x[301] = x[300]
    truth, tdist = brute_force(x, video, 10)
    plain, _ = brute_force(x, video, 10, exclude_own=False)
    assert (video[plain] == video[:, None]).mean() > 0.6  # the exclusion matters on this data
    results = {}
    for s in (1, 3):
        cfg = graph_config(k=10, shards=s, small_group=20, resources=GraphResources(query_batch=128))
        ids, dist, stats = knn_search(x, video, cfg)
        assert len(stats["workers"]) == s
        np.testing.assert_array_equal(ids, truth)
        np.testing.assert_allclose(dist, tdist, rtol=1e-5)
        assert not (video[ids] == video[:, None]).any()
        assert (np.diff(dist, axis=1) >= 0).all()
        results[s] = (ids, dist)
    np.testing.assert_array_equal(results[1][0], results[3][0])
    np.testing.assert_array_equal(results[1][1], results[3][1])


def test_fewer_than_k_neighbours_are_padded(ray_cluster):
    x, video = clustered([2, 3, 4], seed=3)
    ids, dist, _ = knn_search(x, video, graph_config(k=10, shards=2))
    found = (ids >= 0).sum(1)
    np.testing.assert_array_equal(found, [7, 7, 6, 6, 6, 5, 5, 5, 5])
    assert np.isinf(dist[ids < 0]).all() and np.isfinite(dist[ids >= 0]).all()
    truth, _ = brute_force(x, video, 10)
    np.testing.assert_array_equal(ids, truth)


def approximate_data():
    rng = np.random.default_rng(4)
    return clustered(rng.integers(20, 120, 40), d=16, seed=4, spread=0.5)


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_approximate_shards_recall_floor(kind):
    """The fan-out + merge without Ray: two shard indexes, per-shard top-(k + margin), merged."""
    x, video = approximate_data()
    lo, hi = video_ranges(video)
    truth, _ = brute_force(x, video, 10)
    shards = [ShardIndex(x[a:b], a, IndexConfig(kind=kind)) for a, b in shard_bounds(len(x), 2)]
    ids, _ = merge_topk([s.search(x, lo, hi, 15) for s in shards], 10)
    assert (ids >= 0).all()
    assert not (video[ids] == video[:, None]).any()
    assert recall_at_k(ids, truth) >= 0.95


def test_approximate_graph_on_ray_recall_floor(ray_cluster):
    x, video = approximate_data()
    truth, _ = brute_force(x, video, 10)
    ids, _, _ = knn_search(x, video, graph_config(k=10, shards=2, kind="ivf",
                                                  resources=GraphResources(query_batch=512)))
    assert (ids >= 0).all()
    assert not (video[ids] == video[:, None]).any()
    assert recall_at_k(ids, truth) >= 0.95


def test_recall_ignores_missing_neighbours():
    truth = np.array([[1, 2, -1], [-1, -1, -1], [4, 5, 6]])
    found = np.array([[2, -1, -1], [-1, -1, -1], [6, 7, 4]])
    assert recall_at_k(found, truth) == pytest.approx((1 / 2 + 2 / 3) / 2)   # the empty row has nothing to find
    assert recall_at_k(truth, truth) == 1.0 and recall_at_k(found[1:2], truth[1:2]) == 1.0


# --- the graph stage ---------------------------------------------------------------------------------------

def test_graph_stage_writes_graph_resumes_and_checks_config(ray_cluster, tmp_path):
    kp, video = pose_hands(12, 15, seed=5)
    kp[7, 3] = np.nan          # no descriptor: NaN keypoint
    kp[40] = kp[40, 0]         # no descriptor: every joint on the wrist
    table = hands_table(kp, video)
    out = str(tmp_path / "mine")
    # shuffled over two files: the stage must not depend on the hands' order on disk
    write_hands(out, table.take(np.random.default_rng(0).permutation(len(table))))
    cfg = graph_config(out, k=5, shards=2, rows_per_part=50, resources=GraphResources(query_batch=32))
    summary = run_graph_stage(cfg)
    assert summary["hands"] == 180 and summary["with_descriptor"] == 178 and summary["excluded"] == 2
    assert summary["excluded_reasons"] == {"nonfinite_keypoints": 1, "degenerate_scale": 1}
    assert summary["fewer_than_k"] == 0 and summary["parts"] == 4 and summary["parts_computed"] == 4

    graph = storage.read_parquet(storage.join(out, "graph"), schema=GRAPH)
    assert len(graph) == 180 and len(set(graph["hand_id"].to_pylist())) == 180
    rows = {r["hand_id"]: r for r in graph.to_pylist()}
    excluded = storage.read_json(storage.join(out, "graph", EXCLUDED_REASONS))
    assert sorted(excluded["reasons"]) == ["degenerate_scale", "nonfinite_keypoints"]
    for h in excluded["hand_ids"]:
        assert rows[h]["neighbor_ids"] == []

    # against brute force over the valid hands' descriptors
    desc = hand_descriptors(kp)
    valid = np.flatnonzero(desc.valid)
    truth, tdist = brute_force(desc.descriptors[valid], video[valid], 5)
    ids = table["hand_id"].to_pylist()
    for i, v in enumerate(valid):
        r = rows[ids[v]]
        assert r["neighbor_ids"] == [ids[valid[j]] for j in truth[i]]
        np.testing.assert_allclose(r["distances"], tdist[i], rtol=1e-5)

    manifest = StageManifest.read(storage.join(out, "graph"), "graph")
    assert manifest.complete and manifest.config_hash == summary["config_hash"]

    # a crash that lost one part: the re-run computes only that part, with the same result
    os.remove(os.path.join(out, "graph", "part-00001.parquet"))
    manifest.update(status="incomplete")
    again = run_graph_stage(cfg)
    assert again["parts_computed"] == 1 and not again.get("reused")
    assert storage.read_parquet(storage.join(out, "graph"), schema=GRAPH).sort_by("hand_id").equals(
        graph.sort_by("hand_id"))
    assert run_graph_stage(cfg)["reused"] is True
    # resources do not change the result: same hash, reused
    assert run_graph_stage(graph_config(out, k=5, shards=3, rows_per_part=50,
                                        resources=GraphResources(query_batch=7)))["reused"]
    with pytest.raises(StageMismatch, match="k: 5 -> 6"):
        run_graph_stage(graph_config(out, k=6, rows_per_part=50))


def test_graph_stage_with_pca(ray_cluster, tmp_path):
    kp, video = pose_hands(6, 10, seed=6)
    out = str(tmp_path / "mine")
    write_hands(out, hands_table(kp, video), files=1)
    summary = run_graph_stage(graph_config(out, k=3, pca_dim=6, kind="ivf"))
    assert summary["dim"] == 6 and summary["fewer_than_k"] == 0
    assert storage.exists(storage.join(out, "graph", PCA))
    g = storage.read_parquet(storage.join(out, "graph"), schema=GRAPH).to_pylist()
    vid = {h: h.split(":")[1] for h in (r["hand_id"] for r in g)}
    for r in g:
        assert len(r["neighbor_ids"]) == 3 and r["distances"] == sorted(r["distances"])
        assert all(vid[n] != vid[r["hand_id"]] for n in r["neighbor_ids"])


def test_duplicate_hand_ids_are_named_with_their_files(tmp_path):
    kp, video = pose_hands(3, 4, seed=7)
    table = hands_table(kp, video)
    out = str(tmp_path / "mine")
    write_hands(out, pa.concat_tables([table, table.slice(2, 2)]), files=2)   # two hands written twice
    with pytest.raises(ValueError, match="hand_id is not unique") as e:
        run_graph_stage(graph_config(out, k=3))
    msg = str(e.value)
    for hid in table["hand_id"].to_pylist()[2:4]:
        assert hid in msg
    assert "h0.parquet" in msg and "h1.parquet" in msg and table["uri"][2].as_py() in msg
    assert table["hand_id"][0].as_py() not in msg
    assert not storage.exists(storage.join(out, "graph"))          # refused before writing anything


# --- no duplicate positives: the same video across sources, the same picture under another name ------------

@pytest.fixture(scope="module")
def copies_mined(ray_cluster, tmp_path_factory):
    """Real pictures labeled by the real label stage (MediaPipe) from two input folders (sources dA and dB),
    then the graph (k=3) and pairs stages: the same photo in both folders under one name (one video_id); the
    same hand photo as a screenshot, re-encoded at quality 30 and resized to half; another photo of an open
    hand (a similar pose, a different picture) and an identical copy of it under another name; Megamind.avi
    beside its damaged copy Megamind_bugy.avi (every 5th frame)."""
    import cv2
    from conftest import real_data

    from simhand_ray.config import LabelConfig
    from simhand_ray.graph.pairs import run_pairs_stage
    from simhand_ray.mining.label_stage import run_label_stage

    root = tmp_path_factory.mktemp("copies")
    da, db = root / "dA", root / "dB"
    da.mkdir(), db.mkdir()
    palm = real_data("images", "Back_Projection1_Source_Image.jpg").read_bytes()
    (da / "palm.jpg").write_bytes(palm)
    (db / "palm.jpg").write_bytes(palm)
    (db / "palm_screenshot.jpg").write_bytes(real_data("images", "Back_Projection_Theory2.jpg").read_bytes())
    img = cv2.imdecode(np.frombuffer(palm, np.uint8), cv2.IMREAD_COLOR)
    cv2.imwrite(str(da / "palm_q30.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 30])
    cv2.imwrite(str(db / "palm_half.png"), cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA))
    (da / "open_hand.jpg").write_bytes(real_data("images", "Back_Projection_Theory0.jpg").read_bytes())
    (db / "open_hand_copy.jpg").write_bytes(real_data("images", "Histogram_Comparison_Source_0.jpg").read_bytes())
    for name in ("Megamind.avi", "Megamind_bugy.avi"):
        (da / name).write_bytes(real_data("videos", name).read_bytes())
    out = str(root / "mine")
    run_label_stage(LabelConfig(inputs=(str(da), str(db)), output=out, every_n=5), progress=False)
    cfg = graph_config(out, k=3)
    summary = run_graph_stage(cfg)
    run_pairs_stage(cfg)
    hands = storage.read_parquet(storage.join(out, "hands"),
                                 columns=["hand_id", "source", "video_id", "frame_index", "crop_jpeg"])
    return out, summary, hands


def _by_name(hands: pa.Table) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for h, s, v in zip(*(hands[c].to_pylist() for c in ("hand_id", "source", "video_id"))):
        names.setdefault(f"{s}/{v}", []).append(h)
    return names


def test_no_neighbour_is_the_same_video_or_a_near_duplicate_crop(copies_mined):
    from simhand_ray.graph.duplicates import crop_hashes, near_duplicates

    out, summary, hands = copies_mined
    limit = IndexConfig().near_duplicate_bits
    h = crop_hashes(hands["crop_jpeg"].to_pylist())
    row = {hid: i for i, hid in enumerate(hands["hand_id"].to_pylist())}
    video = hands["video_id"].to_pylist()
    graph = storage.read_parquet(storage.join(out, "graph"), schema=GRAPH).to_pylist()
    edges = [(row[r["hand_id"]], row[n]) for r in graph for n in r["neighbor_ids"]]
    assert len(edges) > 50
    for a, b in edges:
        assert video[a] != video[b]
        assert not near_duplicates(h.hashes[a], h.ok[a], h.hashes[b], h.ok[b], limit), (a, b)

    names = _by_name(hands)
    palms = [x for n in ("dA/palm.jpg", "dB/palm.jpg", "dB/palm_screenshot.jpg", "dA/palm_q30.jpg",
                         "dB/palm_half.png") for x in names[n]]
    open_hands = names["dA/open_hand.jpg"] + names["dB/open_hand_copy.jpg"]
    assert len(palms) == 5 and len(open_hands) == 2
    neighbours = {r["hand_id"]: r["neighbor_ids"] for r in graph}
    for group in (palms, open_hands):           # copies of one picture: never each other's neighbours
        for x in group:
            assert not set(neighbours[x]) & set(group), x
    # ... but different pictures of a similar pose still are: each palm's nearest is an open hand and back
    for x in palms:
        assert neighbours[x][0] in open_hands, x
    for x in open_hands:
        assert neighbours[x][0] in palms, x

    # what was kept out, and why: the same palm.jpg from both sources is one video; copies were dropped
    ex = summary["excluded_neighbors"]
    assert ex["same_video_across_sources"] == 2 and ex["same_video"] >= 2
    assert ex["near_duplicate_crop"] >= 10 and summary["hands_with_near_duplicates"] >= 7
    assert summary["near_duplicate_bits"] == limit and summary["without_crop_hash"] == 0
    manifest = StageManifest.read(storage.join(out, "graph"), "graph")
    assert manifest.summary["excluded_neighbors"] == ex


def test_a_damaged_copy_of_a_video_is_not_paired_with_its_original(copies_mined):
    from simhand_ray.graph.duplicates import crop_hashes, hamming

    out, _, hands = copies_mined
    limit = IndexConfig().near_duplicate_bits
    h = crop_hashes(hands["crop_jpeg"].to_pylist())
    t = hands.to_pylist()
    frames = {}
    for i, r in enumerate(t):
        if r["video_id"].startswith("Megamind"):
            frames.setdefault((r["video_id"], r["frame_index"]), []).append(i)
    same_frame = [(a, b) for (v, f), rows in frames.items() if v == "Megamind_bugy.avi"
                  for a in rows for b in frames.get(("Megamind.avi", f), [])]
    near = [(a, b) for a, b in same_frame if hamming(h.hashes[a], h.hashes[b]) <= limit]
    assert len(same_frame) >= 15 and len(near) >= 0.7 * len(same_frame)    # most damaged frames are near-copies
    neighbours = {r["hand_id"]: set(r["neighbor_ids"])
                  for r in storage.read_parquet(storage.join(out, "graph"), schema=GRAPH).to_pylist()}
    for a, b in near:
        assert t[b]["hand_id"] not in neighbours[t[a]["hand_id"]]
        assert t[a]["hand_id"] not in neighbours[t[b]["hand_id"]]


def test_settings_beyond_the_data_or_the_cluster(ray_cluster, tmp_path):
    """A k far above the number of hands gives the graph of k = that number at once (no k-sized buffer), and
    more shards than the cluster's CPUs can hold is refused before anything is written, naming --shards."""
    import time

    import pyarrow.parquet as pq

    from simhand_ray.stage import MANIFEST, StageRefused

    kp, video = pose_hands(4, 5, seed=9)
    big, small = str(tmp_path / "big"), str(tmp_path / "small")
    for out in (big, small):
        write_hands(out, hands_table(kp, video))
    t = time.time()
    run_graph_stage(graph_config(big, k=10 ** 9))
    assert time.time() - t < 60
    run_graph_stage(graph_config(small, k=20))
    read = lambda out: pq.read_table(os.path.join(out, "graph")).sort_by("hand_id").select(  # noqa: E731
        ["hand_id", "neighbor_ids"]).to_pylist()
    assert read(big) == read(small)
    refused = str(tmp_path / "refused")
    write_hands(refused, hands_table(kp, video))
    with pytest.raises(StageRefused, match=r"--shards 500 .* lower --shards"):
        run_graph_stage(graph_config(refused, shards=500))
    assert not os.path.exists(os.path.join(refused, "graph", MANIFEST))
