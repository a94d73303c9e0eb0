"""A pure-PyTorch stand-in for mmcv's compiled extension ``mmcv._ext``, enough for RTMDet + RTMPose inference.

Why: mmpose and mmdet import ``mmcv.ops`` at load time, and every ``mmcv/ops/*.py`` asks
``mmcv.utils.ext_loader.load_ext('_ext', [op names])`` for the compiled ops, asserting that each name exists.
``mmcv-lite`` ships no ``_ext``, so ``import mmpose.apis`` fails with "No module named 'mmcv._ext'". The full
``mmcv`` 2.1.0 is on PyPI only as an sdist whose build compiles C++/CUDA ops against the installed torch (here it
does not even get that far: its setup needs ``pkg_resources``); OpenMMLab's own prebuilt wheels target older
torch/CUDA pairs. So this module stands in for the one op the hand models need.

What it covers: ``nms`` (what RTMDet's ``batched_nms`` post-processing calls), via ``torchvision.ops.nms`` with
mmcv's calling convention ``nms(boxes, scores, iou_threshold=float, offset=int) -> kept indices``, highest score
first. Any other op name resolves to a stub, so ``load_ext``'s existence check passes for every module of
``mmcv.ops``, and calling the stub raises ``NotImplementedError`` naming the op.

Side effect to know: with this module in ``sys.modules``, ``mmengine``'s ``mmcv_full_available()`` reports True.
That only makes mmengine/mmpose import classes from ``mmcv.ops`` (which now imports); no compiled op is called
on the inference path of the hand detector and pose models.
"""
from __future__ import annotations

import importlib.util
import sys
from typing import Any, Callable

import torch
import torchvision

NAME = "mmcv._ext"


def install() -> None:
    """Register this module as ``mmcv._ext`` (idempotent). Call before importing mmdet / mmpose / ``mmcv.ops``.

    A real compiled ``mmcv._ext`` (full mmcv installed) is left alone.
    """
    if NAME in sys.modules:
        return
    import mmcv
    if importlib.util.find_spec(NAME) is not None:
        return
    sys.modules[NAME] = sys.modules[__name__]
    mmcv._ext = sys.modules[__name__]  # type: ignore[attr-defined]  # so ``from mmcv import _ext`` works too


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0) -> torch.Tensor:
    """Greedy NMS as mmcv's kernel does it: boxes (N, 4) x0, y0, x1, y1; scores (N,) -> kept indices (K,) int64.

    mmcv measures widths as ``x1 - x0 + offset``; torchvision uses offset 0, so the far corner is shifted by
    ``offset`` instead (same IoU). A box is suppressed when its IoU with a kept box is > ``iou_threshold``.
    """
    if offset:
        boxes = torch.cat([boxes[:, :2], boxes[:, 2:] + offset], dim=1)
    return torchvision.ops.nms(boxes.float(), scores.float(), float(iou_threshold))


def get_compiler_version() -> str:
    return "none (simhand_ray.compat.mmcv_ext: pure PyTorch)"


def get_compiling_cuda_version() -> str:
    return "not available"


def _missing(op: str) -> Callable[..., Any]:
    def op_stub(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"mmcv op {op!r} needs mmcv's compiled extension, which mmcv-lite lacks; "
            f"simhand_ray.compat.mmcv_ext provides only 'nms'. Install a full mmcv build to use {op!r}.")
    op_stub.__name__ = op
    return op_stub


def __getattr__(name: str) -> Callable[..., Any]:
    # PEP 562: any op name ``load_ext`` asks for exists; dunder/private lookups (import machinery) stay errors.
    if name.startswith("_"):
        raise AttributeError(name)
    return _missing(name)
