"""torch.distributed helpers that also work without a process group (rank 0 of a world of 1).

``gather`` is an all_gather that keeps the gradient (lightly-style): every rank's loss may use every rank's
embeddings, and each rank's embeddings receive the gradient of all ranks' losses.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradient of every rank's copy and returns this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack(grads)
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def gather(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) on each rank -> (world x n, ...) in rank order, differentiable; ``x`` itself without a group."""
    if world_size() == 1:
        return x
    parts = list(_GatherWithGrad.apply(x))
    parts[rank()] = x  # the local slice keeps its direct autograd path
    return torch.cat(parts, dim=0)


def all_reduce(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """A reduced copy of ``x`` over ranks (no gradient): op in sum | mean | min | max."""
    if world_size() == 1:
        return x
    y = x.detach().clone()
    red = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN,
           "max": dist.ReduceOp.MAX}[op]
    dist.all_reduce(y, op=red)
    return y / world_size() if op == "mean" else y
