"""How good are the mined positives? Each mined pair judged by the 3D ground truth of its two hands.

For every pair (anchor, mined positive) whose two hands match a label (``truth.match_truth``), three
normalised 3D pose distances from the anchor: to the mined positive, to a random hand of another video
(seeded) and to the oracle, the other-video hand nearest by true 3D pose (the best any mining could do);
the same three after rotating each onto the anchor (``truth.aligned_distances``). ``efficiency`` =
(random - mined) / (random - oracle): 0 = no better than chance, 1 = the oracle. Writes ``mining.json``,
``mining_pairs.parquet`` (one row per judged pair) and ``mining.png`` (the three histograms).
"""
from __future__ import annotations

import io
import logging

import numpy as np
import pyarrow as pa

from simhand_ray import schema, storage
from simhand_ray.compare import truth as tr
from simhand_ray.evaluate.probe import nearest_by_pose, random_other_video

log = logging.getLogger(__name__)

MINING_JSON = "mining.json"
MINING_PARQUET = "mining_pairs.parquet"
MINING_PNG = "mining.png"
HAND_COLUMNS = ["hand_id", "video_id", "uri", "frame_index", "handedness", "keypoints", "crop_box"]
KINDS = ("mined", "random", "oracle")


def efficiency(mined: float, random: float, oracle: float) -> float:
    """(random - mined) / (random - oracle); NaN when random and oracle coincide."""
    gap = random - oracle
    return float((random - mined) / gap) if abs(gap) > 1e-12 else float("nan")


def judge_pairs(anchor: np.ndarray, positive: np.ndarray, poses: np.ndarray, video_ids: np.ndarray,
                usable: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Distances of each pair. anchor, positive (P,) row indices into ``poses`` (N, 21, 3) normalised;
    ``usable`` (N,) rows with a truth (random and oracle hands are drawn among them). Returns (P,) arrays
    ``{kind}`` and ``{kind}_aligned`` for KINDS, and the chosen ``random_row`` / ``oracle_row`` (N-indexed)."""
    pool = np.flatnonzero(usable)
    pos_in_pool = np.full(len(poses), -1)
    pos_in_pool[pool] = np.arange(len(pool))
    vids = np.asarray(video_ids).astype(str)[pool]
    queries = pos_in_pool[anchor]
    oracle = pool[nearest_by_pose(poses[pool], vids, queries=queries)]
    rnd = pool[random_other_video(vids, np.random.default_rng(seed))[queries]]
    out = {"random_row": rnd, "oracle_row": oracle}
    for kind, other in (("mined", positive), ("random", rnd), ("oracle", oracle)):
        out[kind] = tr.pose_distances(poses[anchor], poses[other])
        out[f"{kind}_aligned"] = tr.aligned_distances(poses[anchor], poses[other])
    return out


def summarize(d: dict[str, np.ndarray]) -> dict:
    """mining.json's figures: means (the headline keys), medians and the efficiency, plain and aligned."""
    res = {k: float(np.mean(d[k])) if len(d[k]) else float("nan") for k in KINDS}
    res["efficiency"] = efficiency(res["mined"], res["random"], res["oracle"])
    res["median"] = {k: float(np.median(d[k])) if len(d[k]) else float("nan") for k in KINDS}
    aligned = {k: float(np.mean(d[f"{k}_aligned"])) if len(d[k]) else float("nan") for k in KINDS}
    aligned["efficiency"] = efficiency(aligned["mined"], aligned["random"], aligned["oracle"])
    aligned["median"] = {k: float(np.median(d[f"{k}_aligned"])) if len(d[k]) else float("nan") for k in KINDS}
    res["aligned"] = aligned
    return res


def read_pairs(pairs_uri: str) -> pa.Table:
    """(anchor_id, positive_id) of every pair of a pairs dataset."""
    return storage.read_parquet(pairs_uri, columns=["anchor_id", "positive_id"], schema=schema.PAIRS)


def evaluate_mining(hands: str | pa.Table, pairs_uri: str, output: str, seed: int = 0) -> dict:
    """Judge the pairs of ``pairs_uri`` against the sidecar labels of the hands' videos; ``hands`` (a hands
    dataset's URI, or its table) holds every hand of the pairs and is the pool the random and oracle hands are
    drawn from. Writes MINING_JSON, MINING_PARQUET and MINING_PNG under ``output``; returns the figures."""
    storage.check_writable(output)
    hands_uri = hands if isinstance(hands, str) else "(table)"
    if isinstance(hands, str):
        hands = storage.read_parquet(hands, columns=HAND_COLUMNS, schema=schema.HANDS)
    pairs = read_pairs(pairs_uri)
    truth = tr.match_truth(hands)
    row_of = {h: i for i, h in enumerate(hands.column("hand_id").to_pylist())}
    a = np.array([row_of.get(h, -1) for h in pairs.column("anchor_id").to_pylist()], np.int64)
    p = np.array([row_of.get(h, -1) for h in pairs.column("positive_id").to_pylist()], np.int64)
    if (a < 0).any() or (p < 0).any():
        raise ValueError(f"{int((a < 0).sum() + (p < 0).sum())} hands of the pairs at {pairs_uri} are not in "
                         f"the hands {hands_uri}: give the hands the pairs were mined from")
    video_ids = np.asarray(hands.column("video_id").to_pylist(), dtype=object).astype(str)
    ok = truth.matched[a] & truth.matched[p]
    d = judge_pairs(a[ok], p[ok], truth.poses, video_ids, truth.matched, seed)
    figures = summarize(d)
    figures.update({
        "pairs": int(len(a)), "pairs_judged": int(ok.sum()), "pairs_without_truth": int((~ok).sum()),
        "hands": truth.counts() | {"total": hands.num_rows}, "seed": seed, "hands_uri": hands_uri,
        "pairs_uri": pairs_uri,
        "distance": "mean over the 21 joints of the Euclidean distance between wrist-relative 3D poses scaled "
                    "to |wrist -> middle MCP| = 1, left hands mirrored; aligned: after the best rotation about "
                    "the wrist",
    })
    ids = hands.column("hand_id")
    table = pa.table({"anchor_id": ids.take(pa.array(a[ok])), "positive_id": ids.take(pa.array(p[ok])),
                      "random_id": ids.take(pa.array(d["random_row"])),
                      "oracle_id": ids.take(pa.array(d["oracle_row"])),
                      **{k: pa.array(d[k], pa.float32()) for k in d if not k.endswith("_row")}})
    storage.write_parquet_atomic(table, storage.join(output, MINING_PARQUET))
    storage.write_json_atomic(storage.join(output, MINING_JSON), figures)
    storage.write_bytes_atomic(storage.join(output, MINING_PNG), histogram_png(d, figures))
    return figures


def histogram_png(d: dict[str, np.ndarray], figures: dict) -> bytes:
    """The three distance distributions, plain and aligned, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    styles = {"mined": "tab:blue", "random": "tab:gray", "oracle": "black"}
    for ax, suffix, title in ((axes[0], "", "3D pose distance to the anchor"),
                              (axes[1], "_aligned", "after rotation alignment")):
        values = [d[k + suffix] for k in KINDS]
        hi = max((float(np.max(v)) for v in values if len(v)), default=1.0)
        bins = np.linspace(0, hi, 40)
        for k, v in zip(KINDS, values):
            ax.hist(v, bins=bins, histtype="step", lw=1.6, color=styles[k],
                    label=f"{k} (mean {np.mean(v):.2f})" if len(v) else k)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("mean joint distance (wrist -> middle MCP = 1)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("pairs")
    fig.suptitle(f"mined positives vs random and oracle: {figures['pairs_judged']} pairs, "
                 f"efficiency {figures['efficiency']:.2f}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def format_figures(f: dict) -> str:
    """mining.json as a short markdown table."""
    a = f["aligned"]
    lines = ["| anchor -> | mean | median | mean, aligned | median, aligned |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {f[k]:.3f} | {f['median'][k]:.3f} | {a[k]:.3f} | {a['median'][k]:.3f} |" for k in KINDS]
    lines += ["", f"efficiency (random - mined) / (random - oracle): **{f['efficiency']:.3f}** "
                  f"(aligned {a['efficiency']:.3f}); {f['pairs_judged']} of {f['pairs']} pairs judged; hands "
                  f"matched to a label {f['hands']['matched']} of {f['hands']['total']}, unmatched "
                  f"{f['hands']['unmatched']}"]
    return "\n".join(lines)
