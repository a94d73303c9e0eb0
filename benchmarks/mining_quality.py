"""Mining efficiency under the graph's options, judged against 3D truth (``compare.mining_probe``).

    .venv/bin/python benchmarks/mining_quality.py --mine out/compare-cpu/mine [--mine-groundtruth OUT2]

For a mine output whose videos have sidecar labels, rebuilds the graph and pairs from its hands under each
variant (descriptor scale, near-duplicate threshold, PCA) and judges every variant's pairs with three seeds of
the random baseline; also the pairs kept when the worst-matching fraction (by descriptor distance) is
dropped; MediaPipe's 3D world landmarks as the descriptor (each crop labelled again, the positive the nearest
other-video hand by them, alone and beside the 2D descriptor); and, with ``--mine-groundtruth``, the same
videos mined from their true 2D keypoints (the labeler's share of the gap to the oracle). Prints one table;
the headline is the best efficiency.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
from harness import REPO, bench_parser, local_ray, write_result

from simhand_ray import storage
from simhand_ray.compare.mining_probe import evaluate_mining
from simhand_ray.config import GraphConfig, from_dict
from simhand_ray.graph.graph_stage import run_graph_stage
from simhand_ray.graph.pairs import run_pairs_stage
from simhand_ray.stage import StageManifest

VARIANTS = {
    "as mined": {},
    "scale palm (wrist -> middle MCP)": {"scale": "palm"},
    "near-duplicates kept (-1)": {"near_duplicate_bits": -1},
    "near-duplicate threshold 8 bits": {"near_duplicate_bits": 8},
    "PCA to 16 dims": {"pca_dim": 16},
}
SEEDS = (0, 1, 2)
KEEP = (1.0, 0.8, 0.5)


def judge(hands: str, pairs: str, out: str) -> list[dict]:
    """The mining probe of one pair set under each random-baseline seed."""
    return [evaluate_mining(hands, pairs, os.path.join(out, f"s{s}"), seed=s) for s in SEEDS]


def row(name: str, figs: list[dict], pairs: int) -> dict:
    eff = [f["efficiency"] for f in figs]
    f = figs[0]
    return {"variant": name, "pairs": pairs, "judged": f["pairs_judged"], "mined": f["mined"],
            "random": float(np.mean([g["random"] for g in figs])), "oracle": f["oracle"],
            "efficiency": float(np.mean(eff)), "efficiency_spread": float(np.ptp(eff)),
            "aligned_efficiency": float(np.mean([g["aligned"]["efficiency"] for g in figs]))}


def kept_fraction(out: str, pairs_uri: str, keep: float) -> dict:
    """Figures over the pairs whose descriptor distance is within the ``keep`` quantile (seed 0's judgement)."""
    judged = pq.read_table(os.path.join(out, "s0", "mining_pairs.parquet")).to_pandas()
    dist = pq.read_table(pairs_uri, columns=["anchor_id", "distance"]).to_pandas().set_index("anchor_id")["distance"]
    d = dist.reindex(judged["anchor_id"]).to_numpy()
    sel = judged[d <= np.quantile(d, keep)]
    m, r, o = sel["mined"].mean(), sel["random"].mean(), sel["oracle"].mean()
    return {"variant": f"as mined, best {keep:.0%} of pairs by descriptor distance", "pairs": len(sel),
            "judged": len(sel), "mined": m, "random": r, "oracle": o, "efficiency": (r - m) / (r - o),
            "efficiency_spread": float("nan"), "aligned_efficiency": float("nan")}


def world_landmarks(hands) -> np.ndarray:
    """(N, 21, 3) MediaPipe world landmarks of every hand's crop, wrist-relative with |wrist -> middle MCP| = 1
    (NaN where MediaPipe finds no hand in the crop)."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    from simhand_ray.mining.crops import decode_jpeg
    from simhand_ray.mining.labelers.mediapipe import default_model_path, native_stderr_filtered

    opts = vision.HandLandmarkerOptions(base_options=BaseOptions(model_asset_path=default_model_path()),
                                        running_mode=vision.RunningMode.IMAGE, num_hands=1)
    out = np.full((hands.num_rows, 21, 3), np.nan)
    with native_stderr_filtered():
        landmarker = vision.HandLandmarker.create_from_options(opts)
        for i, jpg in enumerate(hands.column("crop_jpeg").to_pylist()):
            res = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=decode_jpeg(jpg)))
            if res.hand_world_landmarks:
                w = np.array([[p.x, p.y, p.z] for p in res.hand_world_landmarks[0]])
                w = w - w[0]
                out[i] = w / max(np.linalg.norm(w[9]), 1e-9)
        landmarker.close()
    return out


def nearest_other_video(x: np.ndarray, videos: np.ndarray) -> np.ndarray:
    """Row index of each row's L2-nearest row of another video (-1 where x has NaN or none exists)."""
    ok = np.isfinite(x).all(1)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    d[videos[:, None] == videos[None, :]] = np.inf
    d[:, ~ok] = np.inf
    nn = d.argmin(1)
    return np.where(ok & np.isfinite(d[np.arange(len(x)), nn]), nn, -1)


def descriptor_pairs(mine: str, out: str, world: np.ndarray, with_2d: bool) -> tuple[str, int]:
    """A pairs file (anchor_id, positive_id) from the world-landmark descriptor (optionally beside the 2D one)."""
    import pyarrow as pa

    from simhand_ray.graph.descriptors import hand_descriptors
    from simhand_ray.schema import keypoints_array

    hands = storage.read_parquet(os.path.join(mine, "hands"), columns=["hand_id", "video_id", "keypoints"])
    x = world.reshape(len(world), -1)
    if with_2d:
        d2 = hand_descriptors(keypoints_array(hands.column("keypoints"))).descriptors
        x = np.concatenate([x / np.sqrt(21), d2 / np.sqrt(21)], axis=1)    # both parts weigh alike
    nn = nearest_other_video(x, np.asarray(hands.column("video_id").to_pylist(), dtype=object).astype(str))
    ids = np.asarray(hands.column("hand_id").to_pylist(), dtype=object)
    ok = nn >= 0
    uri = os.path.join(out, "pairs", "part-00000.parquet")
    storage.write_parquet_atomic(pa.table({"anchor_id": ids[ok].tolist(), "positive_id": ids[nn[ok]].tolist()}), uri)
    return os.path.dirname(uri), int(ok.sum())


def main() -> None:
    p = bench_parser(__doc__)
    p.add_argument("--mine", required=True, help="a mine output whose videos have sidecar labels")
    p.add_argument("--mine-groundtruth", default="", help="the same videos mined with --labeler groundtruth")
    p.add_argument("--out", default=os.path.join(REPO, "out", "mining_quality"))
    a = p.parse_args()
    base = from_dict(GraphConfig, StageManifest.require_complete(storage.join(a.mine, "graph"), "graph",
                                                                 "run jobs/mine.py first").record["config"])
    rows = []
    with local_ray():
        for name, change in VARIANTS.items():
            folder = os.path.join(a.out, name.split(" (")[0].replace(" ", "_"))
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(os.path.join(a.mine, "hands"), os.path.join(folder, "hands"))
            cfg = replace(base, output=folder, index=replace(base.index, **change))
            run_graph_stage(cfg)
            n = run_pairs_stage(cfg)["pairs"]
            figs = judge(os.path.join(folder, "hands"), os.path.join(folder, "pairs"), os.path.join(folder, "mining"))
            rows.append(row(name, figs, n))
            print(f"{name}: efficiency {rows[-1]['efficiency']:.3f}", flush=True)
            if not change:
                rows += [kept_fraction(os.path.join(folder, "mining"), os.path.join(folder, "pairs"), k)
                         for k in KEEP[1:]]
    world = world_landmarks(storage.read_parquet(os.path.join(a.mine, "hands"), columns=["crop_jpeg"]))
    print(f"world landmarks of {int(np.isfinite(world).all((1, 2)).sum())} of {len(world)} crops", flush=True)
    for name, with_2d in (("MediaPipe 3D world landmarks of the crops", False),
                          ("3D world landmarks beside the 2D descriptor", True)):
        folder = os.path.join(a.out, "world_2d" if with_2d else "world")
        pairs, n = descriptor_pairs(a.mine, folder, world, with_2d)
        rows.append(row(name, judge(os.path.join(a.mine, "hands"), pairs, os.path.join(folder, "mining")), n))
        print(f"{name}: efficiency {rows[-1]['efficiency']:.3f}", flush=True)
    if a.mine_groundtruth:
        figs = judge(os.path.join(a.mine_groundtruth, "hands"), os.path.join(a.mine_groundtruth, "pairs"),
                     os.path.join(a.out, "groundtruth_labels"))
        rows.append(row("the same videos, true 2D keypoints as labels", figs, figs[0]["pairs"]))
    lines = ["| variant | pairs | judged | mined | random | oracle | efficiency (3 seeds: mean, spread) | aligned |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['pairs']} | {r['judged']} | {r['mined']:.3f} | {r['random']:.3f} | "
                     f"{r['oracle']:.3f} | {r['efficiency']:.3f}, {r['efficiency_spread']:.3f} | "
                     f"{r['aligned_efficiency']:.3f} |")
    print("\n".join(lines))
    write_result({"rows": rows}, a.json, ("best_efficiency", max(r["efficiency"] for r in rows)))


if __name__ == "__main__":
    main()
