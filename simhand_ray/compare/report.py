"""The comparison's outputs: ``results.json`` (one record per run), ``report.md`` (mean +- std over seeds) and
``compare.png`` (error against label fraction per method, seeds as points)."""
from __future__ import annotations

import io

import numpy as np

from simhand_ray import storage
from simhand_ray.compare.mining_probe import format_figures

RESULTS_JSON = "results.json"
REPORT_MD = "report.md"
COMPARE_PNG = "compare.png"
LOSSES_PNG = "losses.png"
METRICS = ("probe_error", "mpjpe", "pa_mpjpe", "auc")


def _mean_std(values: list[float]) -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if v.size == 0:
        return ""
    return f"{v.mean():.3f} +- {v.std():.3f}" if v.size > 1 else f"{v.mean():.3f}"


def summary_rows(records: list[dict], methods: list[str]) -> list[dict]:
    """One row per (method, label fraction): the metrics' values over seeds."""
    rows = []
    fracs = sorted({r["label_fraction"] for r in records if r["label_fraction"] is not None}) or [None]
    for m in methods:
        for f in fracs:
            sel = [r for r in records if r["method"] == m and r["label_fraction"] == f]
            if sel:
                rows.append({"method": m, "label_fraction": f, "seeds": sorted({r["seed"] for r in sel}),
                             **{k: [r.get(k) for r in sel] for k in METRICS}})
    return rows


def format_table(records: list[dict], methods: list[str]) -> str:
    out = ["| method | label fraction | seeds | probe error (3D, lower = better) | MPJPE (mm) | PA-MPJPE (mm) | AUC |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for r in summary_rows(records, methods):
        frac = "" if r["label_fraction"] is None else f"{r['label_fraction']:g}"
        out.append(f"| {r['method']} | {frac} | {len(r['seeds'])} | "
                   + " | ".join(_mean_std(r[k]) for k in METRICS) + " |")
    return "\n".join(out)


def format_steps(steps: list[dict], records: list[dict]) -> str:
    """The probe error at every checkpoint, one row per method (mean over seeds); step 0 = random init."""
    if not steps:
        return "(no checkpoints)"
    grid = sorted({r["step"] for r in steps})
    start = [r["probe_error"] for r in records if r["method"] == "random" and r.get("probe_error") is not None]
    out = ["| method | 0 | " + " | ".join(str(s) for s in grid) + " |", "|---|" + "---:|" * (len(grid) + 1)]
    for m in dict.fromkeys(r["method"] for r in steps):
        cells = [f"{np.mean([r['probe_error'] for r in steps if r['method'] == m and r['step'] == s]):.3f}"
                 if any(r["method"] == m and r["step"] == s for r in steps) else "" for s in grid]
        out.append(f"| {m} | {np.mean(start):.3f} | " + " | ".join(cells) + " |" if start else
                   f"| {m} |  | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _decorate(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)


def plot_png(records: list[dict], methods: list[str], steps: list[dict] = ()) -> bytes:
    """Left: probe error per method (one point per seed); middle: the probe across pre-training steps (mean over
    seeds, step 0 = random init); right: MPJPE against label fraction per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(16, 4))
    colors = dict(zip(methods, plt.get_cmap("tab10").colors))
    start = [r["probe_error"] for r in records if r["method"] == "random" and r.get("probe_error") is not None]
    for m in methods:
        by_step = {}
        for r in steps:
            if r["method"] == m:
                by_step.setdefault(r["step"], []).append(r["probe_error"])
        if by_step:
            xs = ([0] if start else []) + sorted(by_step)
            ys = ([float(np.mean(start))] if start else []) + [float(np.mean(by_step[x])) for x in sorted(by_step)]
            ax3.plot(xs, ys, "-o", color=colors[m], label=m, ms=3)
    _decorate(ax3, "the probe across pre-training (mean over seeds)", "pre-training step (0: random init)",
              "linear probe: 3D pose error")
    for i, m in enumerate(methods):
        sel = [r for r in records if r["method"] == m]
        probe = sorted({(r["seed"], r["probe_error"]) for r in sel if r.get("probe_error") is not None})
        if probe:
            y = [p for _, p in probe]
            ax1.scatter([i] * len(y), y, color=colors[m])
            ax1.hlines(np.mean(y), i - 0.3, i + 0.3, color=colors[m])
        fracs = sorted({r["label_fraction"] for r in sel if r.get("mpjpe") is not None})
        if fracs:
            mean = [np.mean([r["mpjpe"] for r in sel if r["label_fraction"] == f and r.get("mpjpe") is not None])
                    for f in fracs]
            ax2.plot(fracs, mean, "-o", color=colors[m], label=m)
            for r in sel:
                if r.get("mpjpe") is not None:
                    ax2.scatter([r["label_fraction"]], [r["mpjpe"]], color=colors[m], s=10, alpha=0.5)
    ax1.set_xticks(range(len(methods)), methods, rotation=20)
    _decorate(ax1, "frozen trunk", "", "linear probe: 3D pose error (lower = better)")
    ax2.set_xscale("log")
    _decorate(ax2, "fine-tuned (line: mean over seeds, dots: seeds)", "label fraction", "MPJPE (mm), test videos")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def losses_png(curves: dict[str, list[tuple[int, float]]], methods: list[str]) -> bytes:
    """Every pre-training run's loss against its step ({"method s<seed>": [(step, loss)]}), seeds dashed apart.
    SiMHand-W's weighted loss is on another scale than NT-Xent's, so each method has its own panel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in methods if any(k.rsplit(" s", 1)[0] == m for k in curves)]
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(3.6 * max(1, len(shown)), 3.2), squeeze=False)
    for ax, m in zip(axes[0], shown):
        for i, (name, pts) in enumerate(sorted((k, v) for k, v in curves.items() if k.rsplit(" s", 1)[0] == m)):
            if pts:
                ax.plot(*zip(*pts), ls="-" if i == 0 else "--", lw=1, label=name.rsplit(" ", 1)[1])
        ax.set_title(m, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("pre-training loss")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_outputs(output: str, records: list[dict], methods: list[str], context: dict) -> str:
    """results.json, compare.png and report.md under ``output``; returns the report's text."""
    storage.write_json_atomic(storage.join(output, RESULTS_JSON), {"records": records, **context})
    storage.write_bytes_atomic(storage.join(output, COMPARE_PNG), plot_png(records, methods, context.get("probe_steps", ())))
    storage.write_bytes_atomic(storage.join(output, LOSSES_PNG), losses_png(context.get("loss_curves", {}), methods))
    c, data = context["config"], context["data"]
    counts = data["counts"]
    lines = [f"# Pre-training methods compared ({context['preset']} preset)", "",
             f"Mine output `{c['mine']}`; {c['arch']} at {c['image_size']} px, {c['steps']} pre-training steps of "
             f"{c['batch_size']} for every method, seeds {list(c['seeds'])}; fine-tuning {c['finetune_steps']} steps "
             f"of {c['finetune_batch_size']} at label fractions {list(c['label_fractions'])} on "
             f"{c['dataset'] or 'the fine-tuning videos'}.",
             f"Machine: {context['machine']}; wall time {context['seconds'] / 60:.1f} min; {context['date']}.", "",
             "Videos (hands): " + ", ".join(f"{s} {v['videos']} ({v['hands']})" for s, v in counts.items())
             + f"; pairs: mined {data['pairs']['mined']}, oracle {data['pairs']['oracle']}.", "",
             format_table(records, methods), "",
             "Probe error: a ridge regression from the frozen trunk's pooled features to the wrist-relative 3D joints "
             "(scaled so wrist -> middle MCP = 1, left hands mirrored), fitted on the probe videos and scored as the "
             "mean joint distance on the test videos. MPJPE / PA-MPJPE / AUC (0-50 mm): the fine-tuned model on the "
             "test videos. Mean +- std over seeds.", "", f"![comparison]({COMPARE_PNG})", "",
             "The probe across pre-training steps (each kept checkpoint's trunk, mean over seeds):", "",
             format_steps(context.get("probe_steps", []), records), "",
             "The pre-training losses:", "", f"![losses]({LOSSES_PNG})", "",
             "## Mining quality of the pre-training pairs", "", "SiMHand-W's pairs (mined from 2D keypoints):", "",
             format_figures(data["mining"]["mined"]), "", "The oracle's pairs (nearest by true 3D pose):", "",
             format_figures(data["mining"]["oracle"]), ""]
    text = "\n".join(lines)
    storage.write_bytes_atomic(storage.join(output, REPORT_MD), text.encode())
    return text
