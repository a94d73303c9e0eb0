"""The comparison driver: data (``data.prepare_data``) -> runs (``runs.run_all``) -> linear probes -> report.

The output is a stage folder (stage "compare", settings = ``CompareConfig.result_dict()``): re-run over the same
output it reuses the data and every finished run and does only what is missing; other settings are refused.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace

from simhand_ray import storage
from simhand_ray.compare import report
from simhand_ray.compare.data import prepare_data
from simhand_ray.compare.runs import checkpoint_trunks, parallel_runs, plan_runs, probe_trunks, run_all
from simhand_ray.config import CompareConfig
from simhand_ray.stage import StageManifest
from simhand_ray.train.metrics import read_metrics
from simhand_ray.train.resources import describe_cluster

log = logging.getLogger(__name__)

STAGE = "compare"


def train_records(cfg: CompareConfig, data_dir: str) -> int:
    """How many fine-tuning records there are (the label fractions are fractions of it)."""
    from simhand_ray.evaluate.datasets import open_dataset

    root = cfg.data_root if cfg.dataset else storage.join(data_dir, "freihand")
    return len(open_dataset(cfg.dataset or "freihand", root, "", 0, train=True).records())


def run_compare(cfg: CompareConfig, preset: str = "") -> dict:
    """Run the whole comparison into ``cfg.output``; returns the summary (also in ``_manifest.json``)."""
    t0 = time.time()
    cfg = replace(cfg, mine=storage.absolute(cfg.mine), output=storage.absolute(cfg.output),
                  data_root=storage.absolute(cfg.data_root) if cfg.data_root else "")
    storage.check_readable(cfg.mine)
    storage.check_writable(cfg.output)
    manifest = StageManifest.open(cfg.output, STAGE, cfg.result_dict(), info={"preset": preset})
    data_dir = storage.join(cfg.output, "data")
    data = prepare_data(cfg, data_dir)
    c = data["counts"]
    log.info("data: videos pretrain %d / probe %d / finetune %d / test %d; pairs mined %d, oracle %d; mining "
             "efficiency %.3f (oracle pairs %.3f)", *(c[s]["videos"] for s in ("pretrain", "probe", "finetune", "test")),
             data["pairs"]["mined"], data["pairs"]["oracle"], data["mining"]["mined"]["efficiency"],
             data["mining"]["oracle"]["efficiency"])
    n_train = train_records(cfg, data_dir) if cfg.finetune_steps else 0
    runs = plan_runs(cfg, data_dir, n_train)
    parallel = parallel_runs(cfg)
    log.info("%d runs (%d pre-training, %d fine-tuning), %d at a time", len(runs),
             sum(r.kind == "pretrain" for r in runs), sum(r.kind == "finetune" for r in runs), parallel)
    results: dict[str, dict] = {}
    counter = iter(range(1, len(runs) + 1))

    def on_done(run, result, seconds):
        if result is None:       # finished before: read back what it wrote
            if run.kind == "pretrain":
                s = StageManifest.read(run.folder, "pretrain").summary
                result = {"final_loss": s.get("final_loss"), "step": s.get("step")}
            else:
                result = storage.read_json(storage.join(run.folder, "eval", "eval_metrics.json"))
        results[run.name] = result
        what = (f"loss {result['final_loss']:.3f}" if run.kind == "pretrain"
                else f"MPJPE {result['mpjpe_mm']:.1f} mm, PA-MPJPE {result['pa_mpjpe_mm']:.1f} mm")
        log.info("[%d/%d] %s: %s (%s)", next(counter), len(runs), run.name, what,
                 f"{seconds:.0f} s" if seconds else "done before")

    run_all(runs, parallel, on_done)

    fit_videos = {v for v, s in storage.read_json(storage.join(data_dir, "splits.json"))["videos"].items()
                  if s == "probe"}
    records, steps = [], []
    for seed in cfg.seeds:
        trunks = {m: "" if m == "random" else storage.join(cfg.output, "runs", "pretrain", f"{m}-s{seed}", "trunk.pt")
                  for m in cfg.methods}
        for m in cfg.methods:      # and every checkpoint: the probe across pre-training steps
            if m != "random":
                for step, uri in checkpoint_trunks(storage.join(cfg.output, "runs", "pretrain", f"{m}-s{seed}")).items():
                    trunks[f"{m}@{step}"] = uri
        probes = probe_trunks(cfg, data_dir, fit_videos, trunks, seed,
                              storage.join(cfg.output, "runs", "probe", f"s{seed}"))
        steps += [{"method": k.split("@")[0], "seed": seed, "step": int(k.split("@")[1]),
                   "probe_error": p["probe_error"]} for k, p in probes.items() if "@" in k]
        log.info("linear probe, seed %d: %s", seed, ", ".join(f"{m} {probes[m]['probe_error']:.3f}" for m in cfg.methods))
        for m in cfg.methods:
            pre = results.get(f"pretrain {m} s{seed}", {})
            for frac in (cfg.label_fractions if cfg.finetune_steps else (None,)):
                ev = results.get(f"finetune {m} s{seed} f{frac:g}", {}) if frac is not None else {}
                records.append({"method": m, "seed": seed, "label_fraction": frac,
                                "probe_error": probes[m]["probe_error"], "mpjpe": ev.get("mpjpe_mm"),
                                "pa_mpjpe": ev.get("pa_mpjpe_mm"), "auc": ev.get("auc_root_relative"),
                                "pretrain_final_loss": pre.get("final_loss"), "probe_alpha": probes[m]["alpha"],
                                "test_hands": probes[m]["test_rows"], "eval_samples": ev.get("samples")})
    curves = {}
    for r in runs:
        if r.kind == "pretrain":
            rows = read_metrics(r.folder)
            every = max(1, len(rows) // 200)
            curves[f"{r.meta['method']} s{r.meta['seed']}"] = [(x["step"], x["loss"]) for x in rows[::every]]
    seconds = time.time() - t0
    context = {"preset": preset, "config": asdict(cfg), "data": data, "machine": describe_cluster(), "seconds": seconds,
               "date": time.strftime("%Y-%m-%d", time.gmtime()), "probe_steps": steps,
               "loss_curves": curves}
    text = report.write_outputs(cfg.output, records, list(cfg.methods), context)
    summary = {"records": len(records), "seconds": round(seconds, 1), "machine": context["machine"],
               "report": storage.join(cfg.output, report.REPORT_MD)}
    manifest.finish(summary)
    return {**summary, "text": text, "table": report.format_table(records, list(cfg.methods))}
