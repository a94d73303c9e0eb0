"""One markdown report of a run directory: the tables the other commands wrote (json) and their plots.

Collected, anywhere under the run: ``eval_metrics.json`` (pose metrics, one row each),
``finetune_summary.json`` (fine-tuning runs), ``probe_retrieval.json`` (probe tables), the top-level
scalars of any other ``*summary*.json`` / ``*metrics*.json`` (e.g. pre-training's), and every ``.png``.
Links are relative to the run directory, so the report renders where it is written (``report.md``).
"""
from __future__ import annotations

import logging
import time

from simhand_ray import storage
from simhand_ray.evaluate.finetune import SUMMARY_JSON
from simhand_ray.evaluate.pose_eval import METRICS_JSON
from simhand_ray.evaluate.retrieval import PROBE_JSON, format_table

log = logging.getLogger(__name__)

REPORT = "report.md"
_SKIP_DIRS = ("_ray_train",)


def _rel(run: str, uri: str) -> str:
    return uri[len(run.rstrip("/")) + 1:] if uri.startswith(run.rstrip("/") + "/") else uri


def _dir(rel: str) -> str:
    return rel.rsplit("/", 1)[0] if "/" in rel else "."


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _pose_section(run: str, files: list[str]) -> list[str]:
    rows = []
    for f in files:
        m = storage.read_json(f)
        rows.append(f"| {_dir(_rel(run, f))} | {m['dataset']} | {m['split']} | {m['samples']} | "
                    f"{storage.basename(m.get('trunk') or '') or 'random-init'} | {m['mpjpe_mm']:.2f} | "
                    f"{m['pa_mpjpe_mm']:.2f} | {m['auc_root_relative']:.3f} | {m['auc_procrustes']:.3f} |")
    return ["## 3D hand pose (SPEC §4)", "",
            "MPJPE after root (wrist) alignment and PA-MPJPE (Procrustes with scale) in mm; AUC of the 3D PCK "
            "curve over 0-50 mm (FreiHAND convention).", "",
            "| output | dataset | split | hands | trunk | MPJPE | PA-MPJPE | AUC | PA AUC |",
            "|---|---|---|---:|---|---:|---:|---:|---:|", *rows, ""]


def _finetune_section(run: str, files: list[str]) -> list[str]:
    rows = []
    for f in files:
        s = storage.read_json(f)
        c, fin = s["config"], s.get("final", {})
        rows.append(f"| {_dir(_rel(run, f))} | {c['dataset']} | {storage.basename(c.get('trunk') or '') or 'random-init'} | "
                    f"{s.get('arch', '')} | {s.get('steps', '')} | {_fmt(fin.get('loss', ''))} | "
                    f"{_fmt(fin.get('loss_3d', ''))} | {s.get('seconds', 0):.0f} |")
    return ["## Fine-tuning runs", "", "| output | dataset | trunk | arch | steps | final loss | final 3D loss | seconds |",
            "|---|---|---|---|---:|---:|---:|---:|", *rows, ""]


def _probe_section(run: str, files: list[str]) -> list[str]:
    out = ["## Pose-retrieval probe", "",
           "Mean joint distance between the canonical 2D poses (wrist-relative, RMS-normalised) of each held-out "
           "hand and its nearest neighbour from another video; lower = better. The pose oracle is the floor; "
           "chance is where an embedding blind to pose lands.", ""]
    for f in files:
        p = storage.read_json(f)
        out += [f"`{_dir(_rel(run, f))}`: {p['hands']} hands from {p['videos']} videos", "", format_table(p["rows"]), ""]
    return out


def _other_section(run: str, files: list[str]) -> list[str]:
    out = ["## Other summaries", ""]
    for f in files:
        try:
            d = storage.read_json(f)
        except Exception as e:  # a half-written or foreign file must not sink the report
            log.warning("skipping %s: %s", f, e)
            continue
        if not isinstance(d, dict):
            continue
        scalars = [(k, v) for k, v in d.items() if isinstance(v, (int, float, str, bool)) and len(str(v)) < 120][:30]
        if scalars:
            out += [f"`{_rel(run, f)}`", "", "| key | value |", "|---|---|",
                    *[f"| {k} | {_fmt(v)} |" for k, v in scalars], ""]
    return out if len(out) > 2 else []


def build_report(run: str) -> str:
    """The markdown report of everything found under ``run`` (a directory or s3:// prefix)."""
    root = run.rstrip("/") if storage.is_s3(run) else storage.resolve(run)[1]   # as list_files spells it
    files = [f for f in storage.list_files(run) if not any(f"/{s}/" in f for s in _SKIP_DIRS)]

    def by_name(name: str) -> list[str]:
        return [f for f in files if storage.basename(f) == name]

    known = {METRICS_JSON, SUMMARY_JSON, PROBE_JSON}
    others = [f for f in files if f.endswith(".json") and storage.basename(f) not in known
              and ("summary" in storage.basename(f) or "metrics" in storage.basename(f))]
    pngs = [f for f in files if f.lower().endswith(".png")]
    lines = [f"# Run report: `{run}`", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.", ""]
    if by_name(METRICS_JSON):
        lines += _pose_section(root, by_name(METRICS_JSON))
    if by_name(SUMMARY_JSON):
        lines += _finetune_section(root, by_name(SUMMARY_JSON))
    if by_name(PROBE_JSON):
        lines += _probe_section(root, by_name(PROBE_JSON))
    lines += _other_section(root, others)
    if pngs:
        lines += ["## Plots", ""] + [f"![{_rel(root, p)}]({_rel(root, p)})" for p in pngs] + [""]
    if len(lines) == 4:
        lines += ["Nothing to report: no metrics, summaries or plots found.", ""]
    return "\n".join(lines)


def write_report(run: str, output: str = "") -> str:
    """Build the report and write it (default ``run/report.md``); returns where it went."""
    uri = output or storage.join(run, REPORT)
    storage.write_bytes_atomic(uri, build_report(run).encode())
    log.info("report written to %s", uri)
    return uri
