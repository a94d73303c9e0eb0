"""Contrastive losses of SPEC §3 as small pure functions over projections.

All take the two views' projections of a (local) batch of n pairs, shape (n, D). With
``gather_distributed=True`` each worker compares its 2n rows against the 2N rows of every worker (all_gather
with gradient, ``dist.gather``); without a process group that is the local batch, so everything runs alone.

- ``nt_xent``: SimCLR's NT-Xent (temperature 0.5), mean over the 2n anchors.
- ``peclr``: NT-Xent after undoing each view's rotation/translation in projection space (PeCLR).
- ``simhand``: the same loss where view 2 comes from the mined positive (SiMHand without weights).
- ``simhand_w``: SiMHand-W, NT-Xent whose logits (similarity / tau) are multiplied by adaptive weights from
  the two views' augmented 2D keypoints (``adaptive_weights``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from simhand_ray.config import NEG_WEIGHT_MIN_MODES
from simhand_ray.train import dist
from simhand_ray.train.model import equivariant_projection

TIE_EPS = 1e-6  # relative span below which all distances count as equal (float32 rounding)


def _global_index(n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rows of this rank's 2n anchors inside the gathered 2N columns, and their positives' columns.

    The gathered layout is [view 1 of rank 0..W-1, view 2 of rank 0..W-1].
    """
    world, rank = dist.world_size(), dist.rank()
    big_n = n * world
    local = torch.arange(n) + rank * n
    rows = torch.cat((local, local + big_n))
    positives = torch.cat((local + big_n, local))
    return rows, positives, big_n


def _gathered(z1: torch.Tensor, z2: torch.Tensor, gather_distributed: bool) -> torch.Tensor:
    if gather_distributed:
        return torch.cat((dist.gather(z1), dist.gather(z2)))
    return torch.cat((z1, z2))


def weighted_nt_xent(z1: torch.Tensor, z2: torch.Tensor, pos_weights: torch.Tensor | None = None,
                     neg_weights: torch.Tensor | None = None, temperature: float = 0.5,
                     gather_distributed: bool = False) -> torch.Tensor:
    """NT-Xent whose logits are multiplied by weights (SiMHand-W); weights None = plain NT-Xent.

    z1, z2 (n, D), normalised here. For anchor a with positive p:
        loss_a = -w+_a s_ap / tau + log sum_{k != a} exp(w-_ak s_ak / tau)
    with s the cosine similarity; the sum runs over all other 2N - 1 samples, the positive included, as in
    SiMHand's reference implementation. pos_weights (n,) (one per pair, used by both of its anchors);
    neg_weights (2n, 2N): this rank's anchors x all gathered samples.
    """
    n = z1.shape[0]
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    local = torch.cat((z1, z2))
    everyone = _gathered(z1, z2, gather_distributed)
    if gather_distributed:
        rows, positives, _ = _global_index(n)
    else:
        rows = torch.arange(2 * n)
        positives = torch.cat((torch.arange(n) + n, torch.arange(n)))
    rows, positives = rows.to(z1.device), positives.to(z1.device)
    sim = local @ everyone.T                                   # (2n, 2N)
    logits = sim / temperature
    pos_logit = logits.gather(1, positives.view(-1, 1)).squeeze(1)
    if pos_weights is not None:
        pos_logit = pos_logit * torch.cat((pos_weights, pos_weights)).to(logits.dtype)
    if neg_weights is not None:
        logits = logits * neg_weights.to(logits.dtype)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[torch.arange(2 * n, device=z1.device), rows] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - pos_logit).mean()


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5,
            gather_distributed: bool = False) -> torch.Tensor:
    """SimCLR's NT-Xent: z1, z2 (n, D) -> scalar; positives are the rows with the same index."""
    return weighted_nt_xent(z1, z2, None, None, temperature, gather_distributed)


def peclr(p1: torch.Tensor, p2: torch.Tensor, angle1: torch.Tensor, angle2: torch.Tensor, shift1: torch.Tensor,
          shift2: torch.Tensor, temperature: float = 0.5, gather_distributed: bool = False) -> torch.Tensor:
    """PeCLR: NT-Xent on equivariant projections. p (n, 2K) raw; angle (n,) degrees; shift (n, 2)."""
    return nt_xent(equivariant_projection(p1, angle1, shift1), equivariant_projection(p2, angle2, shift2),
                   temperature, gather_distributed)


def simhand(p1: torch.Tensor, p2: torch.Tensor, angle1: torch.Tensor, angle2: torch.Tensor, shift1: torch.Tensor,
            shift2: torch.Tensor, temperature: float = 0.5, gather_distributed: bool = False) -> torch.Tensor:
    """SiMHand without weights: PeCLR's loss where view 2 is the augmented mined positive (same shapes)."""
    return peclr(p1, p2, angle1, angle2, shift1, shift2, temperature, gather_distributed)


#: Elements of the (rows, k, J, 2) difference tensor ``mean_joint_distance`` materialises at once (512 MiB).
MJD_CHUNK_ELEMENTS = 1 << 27


def compile_distances() -> None:
    """Use a ``torch.compile``d ``mean_joint_distance`` from now on in this process (one fused kernel on GPU)."""
    global _distances
    _distances = torch.compile(mean_joint_distance, dynamic=False)


def mean_joint_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise mean-per-joint Euclidean distance: a (m, J, 2), b (k, J, 2) -> (m, k).

    One broadcast (rows, k, J, 2) difference per block of rows of ``a``, blocks sized to
    ``MJD_CHUNK_ELEMENTS``: a handful of large kernels instead of a loop over joints (and no cdist, whose
    exact mode is slow on GPU). ``torch.compile`` fuses it into one kernel (``--compile``).
    """
    a, b = a.float(), b.float()
    m, k = a.shape[0], b.shape[0]
    rows = max(1, MJD_CHUNK_ELEMENTS // max(1, b.numel()))
    parts = [torch.linalg.vector_norm(a[i:i + rows, None] - b[None], dim=-1).mean(dim=-1) for i in range(0, m, rows)]
    return torch.cat(parts) if parts else a.new_zeros(0, k)


def minmax_weights(d: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(max - d) / (max - min): 1 for the closest, 0 for the farthest; all ones when max == min (ties)."""
    span = hi - lo
    tied = span <= TIE_EPS * hi.abs().clamp(min=1.0)
    w = ((hi - d) / torch.where(tied, torch.ones_like(span), span)).clamp(0.0, 1.0)
    return torch.where(tied, torch.ones_like(w), w)  # no host sync: stays on the device


NEG_MIN_MODES = NEG_WEIGHT_MIN_MODES
_distances = mean_joint_distance


@torch.no_grad()
def adaptive_weights(kp1: torch.Tensor, kp2: torch.Tensor, gather_distributed: bool = False,
                     neg_min: str = "reference") -> tuple[torch.Tensor, torch.Tensor]:
    """SiMHand-W's weights from the two views' augmented keypoints (SPEC §3).

    kp1, kp2 (n, 21, 2) in view pixels. Positive weight of pair i from d_i = mean-joint distance between its
    two views, min-max normalised over the (global) batch; negative weight of (a, b) likewise from the
    mean-joint distance between samples a and b over all 2N samples. ``neg_min``: where the negatives' min
    comes from. "reference" (SiMHand's code): the whole matrix, its zero self-distances included, so the
    min is 0 and w- = 1 - d / max; "exclude-self": the off-diagonal distances only.
    Returns pos (n,), neg (2n, 2N) (rows: this rank's anchors; columns in ``weighted_nt_xent``'s order).
    """
    if neg_min not in NEG_MIN_MODES:
        raise ValueError(f"neg_min must be one of {NEG_MIN_MODES}, not {neg_min!r}")
    n = kp1.shape[0]
    d_pos = torch.linalg.vector_norm(kp1.float() - kp2.float(), dim=-1).mean(dim=1)
    lo, hi = d_pos.min(), d_pos.max()
    if gather_distributed:
        lo, hi = dist.all_reduce(lo, "min"), dist.all_reduce(hi, "max")
    pos = minmax_weights(d_pos, lo, hi)

    local = torch.cat((kp1, kp2))
    everyone = _gathered(kp1, kp2, gather_distributed)
    d_neg = _distances(local, everyone)                       # (2n, 2N)
    rows = (_global_index(n)[0] if gather_distributed else torch.arange(2 * n)).to(d_neg.device)
    self_mask = torch.zeros_like(d_neg, dtype=torch.bool)
    self_mask[torch.arange(2 * n, device=d_neg.device), rows] = True
    lo = d_neg.min() if neg_min == "reference" else d_neg.masked_fill(self_mask, float("inf")).min()
    hi = d_neg.masked_fill(self_mask, float("-inf")).max()
    if gather_distributed:
        lo, hi = dist.all_reduce(lo, "min"), dist.all_reduce(hi, "max")
    neg = minmax_weights(d_neg, lo, hi)
    return pos, neg


def simhand_w(p1: torch.Tensor, p2: torch.Tensor, angle1: torch.Tensor, angle2: torch.Tensor, shift1: torch.Tensor,
              shift2: torch.Tensor, kp1: torch.Tensor, kp2: torch.Tensor, temperature: float = 0.5,
              gather_distributed: bool = False,
              neg_min: str = "reference") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SiMHand-W: weighted NT-Xent on equivariant projections. Returns (loss, {pos_weight, neg_weight} means)."""
    pos_w, neg_w = adaptive_weights(kp1, kp2, gather_distributed, neg_min)
    loss = weighted_nt_xent(equivariant_projection(p1, angle1, shift1), equivariant_projection(p2, angle2, shift2),
                            pos_w, neg_w, temperature, gather_distributed)
    return loss, {"pos_weight": pos_w.mean(), "neg_weight": neg_w.mean()}


def contrastive_loss(method: str, p1: torch.Tensor, p2: torch.Tensor, batch: dict[str, torch.Tensor],
                     temperature: float = 0.5, gather_distributed: bool = False,
                     neg_min: str = "reference") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Dispatch on the method name; ``batch`` holds angle1/2, shift1/2, keypoints1/2 (``augment.VIEW_COLUMNS``)."""
    if method == "simclr":
        return nt_xent(p1, p2, temperature, gather_distributed), {}
    args = (p1, p2, batch["angle1"], batch["angle2"], batch["shift1"], batch["shift2"])
    if method == "peclr":
        return peclr(*args, temperature, gather_distributed), {}
    if method == "simhand":
        return simhand(*args, temperature, gather_distributed), {}
    if method == "simhand-w":
        return simhand_w(*args, batch["keypoints1"], batch["keypoints2"], temperature, gather_distributed, neg_min)
    raise ValueError(f"unknown method {method!r}")
