"""The pose-retrieval probe job (maths in ``probe``): mined hands -> trunk embeddings -> probe table.

Hands (``schema.HANDS`` Parquet, e.g. the mine job's ``hands/``) are subsampled in the driver from their
small columns; the crops are read by Ray Data and embedded by ``TrunkEmbedder`` actors (one model per
actor, loaded in ``__init__``); nearest neighbours and distances are computed in the driver. Pass hands
the trunks did not see in pre-training (a held-out mine run, or held-out videos) for a fair probe.
Writes ``probe_retrieval.json``, ``probe_retrieval.csv`` and ``probe_retrieval.png``.
"""
from __future__ import annotations

import io
import logging
from dataclasses import asdict

import cv2
import numpy as np
import torch

from simhand_ray import schema, storage
from simhand_ray.config import ProbeConfig
from simhand_ray.evaluate import probe
from simhand_ray.evaluate.preprocess import to_model_input
from simhand_ray.train.trunk import make_trunk

log = logging.getLogger(__name__)

PROBE_JSON = "probe_retrieval.json"
PROBE_CSV = "probe_retrieval.csv"
PROBE_PNG = "probe_retrieval.png"


class TrunkEmbedder:
    """Ray Data actor: crop JPEGs -> global-average-pooled features of each trunk, ``emb_{i}`` (B, C_i).

    All trunks run in one pass so the crops are read and decoded once.
    """

    def __init__(self, trunks: list[tuple[str, str]], input_size: int, seed: int, use_gpu: bool = False):
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.trunks = []
        for weights, arch in trunks:
            torch.manual_seed(seed)      # a random-init trunk is the same network in every actor
            trunk, _ = make_trunk(arch, weights)
            self.trunks.append(trunk.to(self.device).eval())
        self.size = input_size

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        imgs = []
        for data in batch["crop_jpeg"]:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            img = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), (self.size, self.size), interpolation=cv2.INTER_AREA)
            imgs.append(img)
        x = to_model_input(torch.as_tensor(np.stack(imgs), device=self.device))
        out = {"hand_id": batch["hand_id"]}
        for i, trunk in enumerate(self.trunks):
            out[f"emb_{i}"] = trunk(x).float().cpu().numpy()
        return out


def _keep_hands(batch: dict[str, np.ndarray], keep: list[str]) -> dict[str, np.ndarray]:
    mask = np.isin(np.asarray(batch["hand_id"]).astype(str), keep)
    return {k: v[mask] for k, v in batch.items()}


def embed_hands(cfg: ProbeConfig, hand_ids: list[str], trunks: list[tuple[str, str]]) -> list[np.ndarray]:
    """Embeddings (N, C_i) of the given hands under each (weights, arch) trunk, rows in ``hand_ids`` order."""
    import ray
    from ray.data import ActorPoolStrategy

    fs, _ = storage.resolve(cfg.hands)
    files = [storage.resolve(f)[1] for f in storage.list_parts(cfg.hands)]
    ds = ray.data.read_parquet(files, filesystem=fs, columns=["hand_id", "crop_jpeg"])
    ds = ds.map_batches(_keep_hands, fn_kwargs={"keep": hand_ids}, batch_format="numpy")
    ds = ds.map_batches(TrunkEmbedder, fn_constructor_kwargs={"trunks": trunks, "input_size": cfg.input_size,
                                                              "seed": cfg.seed, "use_gpu": cfg.use_gpu},
                        batch_size=cfg.batch_size, batch_format="numpy", compute=ActorPoolStrategy(size=cfg.num_workers),
                        num_gpus=1 if cfg.use_gpu else 0)
    got: dict[str, list[np.ndarray]] = {}
    for b in ds.iter_batches(batch_size=1024, batch_format="numpy"):
        for j, h in enumerate(b["hand_id"]):
            got[str(h)] = [b[f"emb_{i}"][j] for i in range(len(trunks))]
    missing = [h for h in hand_ids if h not in got]
    if missing:
        raise RuntimeError(f"{len(missing)} hands got no embedding (first: {missing[0]})")
    return [np.stack([got[h][i] for h in hand_ids]) for i in range(len(trunks))]


def _resolve_arch(cfg: ProbeConfig) -> str:
    if cfg.arch != "auto":
        return cfg.arch
    if cfg.trunks:
        return make_trunk("auto", cfg.labelled_trunks()[0][1])[1]
    return "resnet50"


def _line_style(name: str, colors) -> dict:
    """Reference rows (oracle, chance, random init) in fixed styles; trunks each in their own colour."""
    if name == "pose oracle":
        return {"color": "black", "ls": "--"}
    if name.startswith("chance"):
        return {"color": "gray", "ls": ":"}
    if name.startswith("random-init"):
        return {"color": "tab:red", "ls": "-."}
    return {"color": next(colors), "ls": "-"}


def _write_outputs(cfg: ProbeConfig, rows: list[dict], dists: dict[str, np.ndarray]) -> None:
    cols = ["method", "weights", "queries", "mean", "median", "p90"]
    lines = [",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in rows]
    storage.write_bytes_atomic(storage.join(cfg.output, PROBE_CSV), ("\n".join(lines) + "\n").encode())
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    names = [r["method"] for r in rows]
    ax1.barh(names, [r["mean"] for r in rows], color="tab:blue")
    ax1.invert_yaxis()
    ax1.set_xlabel("mean pose distance to the retrieved hand (lower = better)")
    colors = iter(plt.get_cmap("tab20").colors)
    for name, d in dists.items():
        d = np.sort(d[np.isfinite(d)])
        ax2.plot(d, np.arange(1, d.size + 1) / max(1, d.size), label=name, **_line_style(name, colors))
    ax2.set_xlabel("pose distance")
    ax2.set_ylabel("fraction of queries")
    ax2.grid(alpha=0.3)
    ax2.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"pose retrieval probe ({rows[0]['queries'] if rows else 0} queries)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    storage.write_bytes_atomic(storage.join(cfg.output, PROBE_PNG), buf.getvalue())


def run_retrieval_probe(cfg: ProbeConfig) -> dict:
    """Run the probe for every trunk (+ random init, pose oracle, chance); returns the table it writes."""
    storage.check_writable(cfg.output)
    table = storage.read_parquet(cfg.hands, columns=["hand_id", "video_id", "keypoints"], schema=schema.HANDS)
    rng = np.random.default_rng(cfg.seed)
    index = np.arange(table.num_rows)
    if cfg.max_hands and table.num_rows > cfg.max_hands:
        index = np.sort(rng.choice(table.num_rows, cfg.max_hands, replace=False))
    hand_ids = [str(h) for h in np.asarray(table.column("hand_id").to_pylist(), dtype=object)[index]]
    video_ids = np.asarray(table.column("video_id").to_pylist(), dtype=object)[index].astype(str)
    poses = probe.canonical_poses(schema.keypoints_array(table.column("keypoints"))[index])
    log.info("probe over %d hands from %d videos", len(hand_ids), len(set(video_ids)))

    arch = _resolve_arch(cfg)
    named = [(label, uri, "auto") for label, uri in cfg.labelled_trunks()]
    if cfg.random_init:
        named.append((f"random-init {arch}", "", arch))
    embeddings = embed_hands(cfg, hand_ids, [(uri, a) for _, uri, a in named]) if named else []
    methods = [(label, uri, probe.nearest_by_cosine(e, video_ids)) for (label, uri, _), e in zip(named, embeddings)]
    methods.append(("pose oracle", "", probe.nearest_by_pose(poses, video_ids)))
    methods.append(("chance (random other video)", "", probe.random_other_video(video_ids, rng)))

    rows, dists = [], {}
    for name, uri, nn in methods:
        d = probe.retrieval_distances(poses, nn)
        dists[name] = d
        rows.append({"method": name, "weights": uri, **probe.summarize(d)})
    result = {"rows": rows, "hands": len(hand_ids), "videos": int(len(set(video_ids))), "config": asdict(cfg),
              "distance": "mean joint distance of wrist-relative, RMS-normalised 2D poses"}
    storage.write_json_atomic(storage.join(cfg.output, PROBE_JSON), result)
    _write_outputs(cfg, rows, dists)
    return result


def format_table(rows: list[dict]) -> str:
    """The probe rows as a markdown table."""
    out = ["| method | queries | mean | median | p90 |", "|---|---:|---:|---:|---:|"]
    out += [f"| {r['method']} | {r['queries']} | {r['mean']:.4f} | {r['median']:.4f} | {r['p90']:.4f} |" for r in rows]
    return "\n".join(out)
