"""The optimisers of pre-training and fine-tuning, with linear warm-up then cosine decay per step.

Pre-training (SPEC §3, PeCLR's optimiser): LARS-wrapped Adam.
- lr = base_lr x sqrt(global batch) (``PretrainConfig.lr``).
- Weight decay 1e-6 on conv/linear weights only; BN parameters and biases get neither weight decay nor the
  LARS trust ratio (the SimCLR convention).
- LARS (pl_bolts' LARSWrapper semantics): before the inner step, each adapted parameter's gradient (with
  its weight decay added) is scaled by min(eta ||w|| / (||g|| + wd ||w|| + eps) / lr, 1).
Fine-tuning: AdamW (decoupled weight decay) over the same two parameter groups, the same schedule.
"""
from __future__ import annotations

import math
import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (decayed, LARS-adapted) and BN parameters + biases (neither)."""
    decay, plain = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_norm = isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))
            (plain if is_norm or name == "bias" or p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lars": True},
            {"params": plain, "weight_decay": 0.0, "lars": False}]


class LARS:
    """Layer-wise adaptive rate scaling around any torch optimiser (here Adam).

    Behaves as an optimiser for the training loop, ``GradScaler`` and checkpoints (``param_groups``,
    ``state``, ``step``, ``zero_grad``, ``state_dict``); the LR scheduler drives ``self.optim``.
    """

    def __init__(self, optim: torch.optim.Optimizer, eta: float = 0.02, clip: bool = True, eps: float = 1e-8):
        self.optim, self.eta, self.clip, self.eps = optim, eta, clip, eps

    @property
    def param_groups(self) -> list[dict]:
        return self.optim.param_groups

    @property
    def state(self):
        return self.optim.state

    @property
    def defaults(self) -> dict:
        return self.optim.defaults

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optim.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.optim.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optim.load_state_dict(state)

    @torch.no_grad()
    def _adapt(self) -> None:
        for group in self.optim.param_groups:
            wd, lr = group["weight_decay"], group["lr"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            adapt = group.get("lars", False) and lr > 0
            if adapt:  # norms before the decay is folded in, as pl_bolts does
                w_norms, g_norms = torch._foreach_norm(params), torch._foreach_norm(grads)
            if wd:
                torch._foreach_add_(grads, params, alpha=wd)
            if not adapt:
                continue
            for g, wn, gn in zip(grads, w_norms, g_norms):
                ratio = self.eta * wn / (gn + wd * wn + self.eps)
                if self.clip:
                    ratio = torch.clamp(ratio / lr, max=1.0)
                # Parameters or gradients that are all zero keep their gradient as it is.
                g.mul_(torch.where((wn > 0) & (gn > 0), ratio, torch.ones_like(ratio)))

    def step(self, closure=None):
        """Adapt gradients, then the inner step with weight decay already folded into the gradients."""
        self._adapt()
        saved = [g["weight_decay"] for g in self.optim.param_groups]
        for g in self.optim.param_groups:
            g["weight_decay"] = 0.0
        try:
            return self.optim.step(closure)
        finally:
            for g, wd in zip(self.optim.param_groups, saved):
                g["weight_decay"] = wd


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR factor at optimiser step ``step`` (0-based): linear 1/w..1 over warm-up, then cosine to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


OPTIMIZERS = ("lars-adam", "adamw")


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, warmup_steps: int, total_steps: int,
                    kind: str = "lars-adam", eta: float = 0.02):
    """(optimiser, per-step warm-up/cosine scheduler; step it after every update) over ``param_groups``.

    ``kind``: "lars-adam" = LARS(Adam) with trust coefficient ``eta`` (pre-training), "adamw" (fine-tuning).
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimiser {kind!r}: one of {OPTIMIZERS}")
    inner_cls = torch.optim.Adam if kind == "lars-adam" else torch.optim.AdamW
    inner = inner_cls(param_groups(model, weight_decay), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(inner, lambda s: warmup_cosine(s, warmup_steps, total_steps))
    return (LARS(inner, eta=eta) if kind == "lars-adam" else inner), sched
