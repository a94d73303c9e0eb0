"""``MODEL_CARD.md`` beside a pre-trained trunk: what it is, what it was trained on and how, and how to load it
in torchvision, timm and mmpose (the snippets are run by ``tests/test_pretrain.py``)."""
from __future__ import annotations

import json

from simhand_ray import storage
from simhand_ray.config import PretrainConfig
from simhand_ray.stage import StageManifest, StageMismatch

MODEL_CARD = "MODEL_CARD.md"
DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}


def _stage(folder: str, stage: str) -> dict | None:
    """A stage's manifest record, or None where there is none (pairs made elsewhere)."""
    try:
        m = StageManifest.read(folder, stage)
    except (StageMismatch, ValueError, OSError):
        return None
    return m.record if m is not None else None


def mine_records(pairs: str) -> dict[str, dict]:
    """The pairs', graph's and label stage's records of the mine output the pairs come from, where present."""
    parent = pairs.rstrip("/").rsplit("/", 1)[0]
    out = {}
    for name, folder in (("pairs", pairs), ("graph", storage.join(parent, "graph")), ("label", parent)):
        if (rec := _stage(folder, name)) is not None:
            out[name] = rec
    return out


def _block(obj) -> str:
    return "```json\n" + json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n```"


def model_card(cfg: PretrainConfig, summary: dict, config_hash: str, hardware: str, seconds: float) -> str:
    """The card's markdown."""
    m, o = cfg.method, cfg.optim
    precision = (f"{cfg.run.amp_dtype} autocast" if cfg.run.amp else "float32") if cfg.run.use_gpu else "float32"
    plan = summary["plan"]
    loss = summary.get("final_loss")
    mine = mine_records(cfg.pairs)
    lines = [
        f"# {m.name} {m.arch} trunk (simhand-ray)", "",
        f"A torchvision {m.arch} trunk (no `fc`), pre-trained contrastively with **{m.name}** on mined hand pairs. "
        "`trunk.pt` (torch) and `trunk.safetensors` hold the same tensors.", "",
        "## Training", "",
        "| setting | value |", "|---|---|",
        f"| method | {m.name} (temperature {m.temperature:g}, projection {m.proj_hidden} -> {m.proj_dim}, negatives "
        f"{'gathered over workers' if m.gather_distributed else 'per worker'}"
        + (f", SiMHand-W negative weights: {m.neg_weight_min}" if m.name == "simhand-w" else "") + ") |",
        f"| pairs | `{cfg.pairs}`: {plan['num_rows']} pairs |",
        f"| steps | {summary['step']} of {plan['total_steps']} (warm-up {plan['warmup_steps']}), global batch "
        f"{o.batch_size}, {cfg.run.num_workers} worker(s) |",
        f"| optimiser | LARS-wrapped Adam, lr {cfg.lr:.3g} (= {o.base_lr:g} x sqrt(batch)), weight decay "
        f"{o.weight_decay:g}, warm-up then cosine |",
        f"| views | {cfg.augment.size} px, rotation <= {cfg.augment.max_angle} deg, keypoint crop, colour jitter |",
        f"| precision | {precision} |", f"| hardware | {hardware} |", f"| wall time | {seconds / 60:.1f} min |",
        f"| final loss | {loss:.4f} |" if loss is not None else "| final loss | - |",
        f"| config hash | `{config_hash}` (the settings: `_manifest.json`) |", "",
        "![loss curve](loss_curve.png)", "",
        "## The pairs' mine run", "",
        "From the stage records of the mine output the pairs come from (settings and summaries):", "",
        _block({k: {"settings": v.get("settings"), "summary": v.get("summary")} for k, v in mine.items()})
        if mine else "(no stage records beside the pairs)", "",
        "## Loading it", "",
        "torchvision:", "", "```python",
        "import torch, torchvision",
        f"model = torchvision.models.{m.arch}()",
        "model.fc = torch.nn.Identity()",
        "model.load_state_dict(torch.load(\"trunk.pt\", weights_only=True))",
        "```", "",
        "timm (no pickle, no download):", "", "```python",
        "import timm",
        f"model = timm.create_model(\"{m.arch}\", pretrained=True, num_classes=0,",
        "                          pretrained_cfg_overlay=dict(file=\"trunk.safetensors\"))",
        "```", "",
        "mmpose (its ResNet backbone, e.g. in a top-down heatmap config's `backbone`):", "", "```python",
        "from mmpose.registry import MODELS",
        "import mmpose.models  # registers the backbones",
        f"backbone = MODELS.build(dict(type=\"ResNet\", depth={DEPTHS[m.arch]}, "
        "init_cfg=dict(type=\"Pretrained\", checkpoint=\"trunk.pt\")))",
        "backbone.init_weights()",
        "```", "",
    ]
    return "\n".join(lines)


def write_model_card(cfg: PretrainConfig, summary: dict, config_hash: str, hardware: str, seconds: float) -> str:
    uri = storage.join(cfg.output, MODEL_CARD)
    storage.write_bytes_atomic(uri, model_card(cfg, summary, config_hash, hardware, seconds).encode())
    return uri
