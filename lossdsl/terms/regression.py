"""Regression terms on ``e = pred - target``: mse, mae/l1, huber, smooth_l1 (DESIGN.md §5).

Each accepts optional ``weight`` (``mean(weight * l)``) and ``mask``
(``sum(mask * l) / sum(mask)``) inputs and ``reduction="mean" | "sum"``. Half-precision
inputs are computed in float32 and returned in the input dtype.
"""

from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F
from annotated_types import Gt
from torch import Tensor

from ..registry import registry
from ._common import Reduction, check_same_shape, reduce_elementwise, upcast

__all__ = ["mse", "mae", "huber", "smooth_l1"]


def mse(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, reduction: Reduction = "mean",
) -> Tensor:
    """Mean squared error: mean(e^2).

    Example: ``0.5*mse + 0.5*mae``; weighted: ``mse(weight=w)``, masked: ``mse(mask=valid)``.
    """
    check_same_shape(pred, target)
    p, t = upcast(pred, target)
    if weight is None and mask is None:
        out = F.mse_loss(p, t, reduction=reduction)
    else:
        out = reduce_elementwise(F.mse_loss(p, t, reduction="none"), weight, mask, reduction)
    return out.to(pred.dtype)


def mae(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, reduction: Reduction = "mean",
) -> Tensor:
    """Mean absolute error: mean(abs(e)). Alias: ``l1``.

    Example: ``mae``, ``0.1*l1(mask=valid)``.
    """
    check_same_shape(pred, target)
    p, t = upcast(pred, target)
    if weight is None and mask is None:
        out = F.l1_loss(p, t, reduction=reduction)
    else:
        out = reduce_elementwise(F.l1_loss(p, t, reduction="none"), weight, mask, reduction)
    return out.to(pred.dtype)


def huber(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, delta: Annotated[float, Gt(0)] = 1.0, reduction: Reduction = "mean",
) -> Tensor:
    """Huber loss: 0.5 e^2 where abs(e) <= delta, else delta (abs(e) - 0.5 delta).

    Equals ``torch.nn.functional.huber_loss``. Example: ``0.7*huber(delta=1) + 0.3*temporal_diff``.
    """
    check_same_shape(pred, target)
    p, t = upcast(pred, target)
    if weight is None and mask is None:
        out = F.huber_loss(p, t, reduction=reduction, delta=delta)
    else:
        l = F.huber_loss(p, t, reduction="none", delta=delta)
        out = reduce_elementwise(l, weight, mask, reduction)
    return out.to(pred.dtype)


def smooth_l1(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, beta: Annotated[float, Gt(0)] = 1.0, reduction: Reduction = "mean",
) -> Tensor:
    """Smooth L1: 0.5 e^2 / beta where abs(e) < beta, else abs(e) - 0.5 beta.

    Equals ``torch.nn.functional.smooth_l1_loss``. Example: ``smooth_l1(beta=0.5)``.
    """
    check_same_shape(pred, target)
    p, t = upcast(pred, target)
    if weight is None and mask is None:
        out = F.smooth_l1_loss(p, t, reduction=reduction, beta=beta)
    else:
        l = F.smooth_l1_loss(p, t, reduction="none", beta=beta)
        out = reduce_elementwise(l, weight, mask, reduction)
    return out.to(pred.dtype)


for _fn in (mse, mae, huber, smooth_l1):
    registry.register(_fn, replace=True)
registry.register(mae, name="l1", replace=True)
