"""Regression terms on ``e = pred - target`` (DESIGN.md §5).

mse, mae (alias l1), huber, smooth_l1, adaptive_huber, log_cosh, quantile, charbonnier.

Each accepts optional ``weight`` (``mean(weight * l)``) and ``mask``
(``sum(mask * l) / sum(mask)``) inputs and ``reduction="mean" | "sum"``. Half-precision
inputs are computed in float32 and returned in the input dtype.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Gt, Lt
from torch import Tensor

from ._common import (
    HALF_DTYPES,
    Reduction,
    check_same_shape,
    from_residual,
    reduce_elementwise,
    residual_form,
    upcast,
)

__all__ = [
    "mse", "mae", "huber", "smooth_l1", "adaptive_huber", "log_cosh", "quantile", "charbonnier"]

_LOG2 = math.log(2.0)


def _with_torch(loss_fn, pred, target, weight, mask, reduction: Reduction, **hyper) -> Tensor:
    """An elementwise term that torch.nn.functional has: its fused reduction when there is no
    weight or mask, else the elementwise values reduced as DESIGN.md §5 defines."""
    check_same_shape(pred, target)
    half = pred.dtype in HALF_DTYPES or target.dtype in HALF_DTYPES
    p, t = upcast(pred, target) if half else (pred, target)
    if weight is None and mask is None:
        out = loss_fn(p, t, reduction=reduction, **hyper)
    else:
        out = reduce_elementwise(loss_fn(p, t, reduction="none", **hyper), weight, mask, reduction)
    return out if out.dtype == pred.dtype else out.to(pred.dtype)


def mse(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, reduction: Reduction = "mean",
) -> Tensor:
    """Mean squared error: mean(e^2).

    Example: ``0.5*mse + 0.5*mae``; weighted: ``mse(weight=w)``, masked: ``mse(mask=valid)``.
    """
    return _with_torch(F.mse_loss, pred, target, weight, mask, reduction)


def _mae(
    e: Tensor, weight: Tensor | None = None, mask: Tensor | None = None, *, reduction: Reduction
) -> Tensor:
    return reduce_elementwise(e.abs(), weight, mask, reduction)


@residual_form(_mae)
def mae(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, reduction: Reduction = "mean",
) -> Tensor:
    """Mean absolute error: mean(abs(e)).

    Also registered as ``l1``. Example: ``0.5*mse + 0.5*l1``; masked: ``mae(mask=valid)``.
    """
    return from_residual(_mae, pred, target, weight, mask, reduction=reduction)


def huber(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, delta: Annotated[float, Gt(0)] = 1.0, reduction: Reduction = "mean",
) -> Tensor:
    """Huber loss: 0.5 e^2 where abs(e) <= delta, else delta (abs(e) - 0.5 delta).

    Equals ``torch.nn.functional.huber_loss``. Example: ``0.7*huber(delta=1) + 0.3*temporal_diff``.
    """
    return _with_torch(F.huber_loss, pred, target, weight, mask, reduction, delta=delta)


def smooth_l1(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, beta: Annotated[float, Gt(0)] = 1.0, reduction: Reduction = "mean",
) -> Tensor:
    """Smooth L1: 0.5 e^2 / beta where abs(e) < beta, else abs(e) - 0.5 beta.

    Equals ``torch.nn.functional.smooth_l1_loss``. Example: ``smooth_l1(beta=0.5)``.
    """
    return _with_torch(F.smooth_l1_loss, pred, target, weight, mask, reduction, beta=beta)


def _adaptive_huber(
    e: Tensor, weight: Tensor | None = None, mask: Tensor | None = None, *, scale: float, reduction: Reduction
) -> Tensor:
    a = e.abs()
    with torch.no_grad():
        delta = scale * (a.mean() if mask is None else reduce_elementwise(a, None, mask))
    l = torch.where(a <= delta, 0.5 * e * e, delta * (a - 0.5 * delta))
    return reduce_elementwise(l, weight, mask, reduction)


@residual_form(_adaptive_huber)
def adaptive_huber(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, scale: Annotated[float, Gt(0)] = 0.5, reduction: Reduction = "mean",
) -> Tensor:
    """Huber loss whose delta follows the batch: delta = scale * mean(abs(e)), detached.

    The threshold between the quadratic and the linear part adapts to the current size of
    the errors; it is treated as a constant for the gradient. With ``mask``, delta is the
    mean over the unmasked elements. Example: ``adaptive_huber(scale=0.5) + 0.1*mse``.
    """
    return from_residual(_adaptive_huber, pred, target, weight, mask, scale=scale, reduction=reduction)


def _log_cosh(
    e: Tensor, weight: Tensor | None = None, mask: Tensor | None = None, *, reduction: Reduction
) -> Tensor:
    a = e.abs()
    return reduce_elementwise(a + F.softplus(-2.0 * a) - _LOG2, weight, mask, reduction)


@residual_form(_log_cosh)
def log_cosh(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, reduction: Reduction = "mean",
) -> Tensor:
    """Log-cosh loss: mean(log(cosh(e))).

    Computed as abs(e) + softplus(-2 abs(e)) - log 2, which equals log(cosh(e)) but never
    overflows (cosh does from abs(e) ~ 89 in float32); the gradient is tanh(e).
    Example: ``log_cosh + 0.1*temporal_diff``.
    """
    return from_residual(_log_cosh, pred, target, weight, mask, reduction=reduction)


def _quantile(
    e: Tensor, weight: Tensor | None = None, mask: Tensor | None = None, *, q: float, reduction: Reduction
) -> Tensor:
    # u = target - pred = -e: max(q u, (q - 1) u) = max(-q e, (1 - q) e)
    return reduce_elementwise(torch.maximum(-q * e, (1.0 - q) * e), weight, mask, reduction)


@residual_form(_quantile)
def quantile(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, q: Annotated[float, Gt(0), Lt(1)] = 0.5, reduction: Reduction = "mean",
) -> Tensor:
    """Quantile (pinball) loss: mean(max(q u, (q - 1) u)), u = target - pred.

    Its minimiser is the q-th quantile of the target; q=0.5 is half the mean absolute error.
    Example: ``quantile(q=0.1) + quantile(q=0.9)`` for an 80 % prediction interval.
    """
    return from_residual(_quantile, pred, target, weight, mask, q=q, reduction=reduction)


def _charbonnier(
    e: Tensor, weight: Tensor | None = None, mask: Tensor | None = None, *, eps: float, reduction: Reduction
) -> Tensor:
    return reduce_elementwise(torch.sqrt(e * e + eps * eps), weight, mask, reduction)


@residual_form(_charbonnier)
def charbonnier(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, eps: Annotated[float, Gt(0)] = 1e-3, reduction: Reduction = "mean",
) -> Tensor:
    """Charbonnier loss: mean(sqrt(e^2 + eps^2)), a smooth L1.

    Differentiable everywhere (gradient e / sqrt(e^2 + eps^2)); common in image restoration.
    Example: ``charbonnier(eps=1e-3) + 0.05*tv``.
    """
    return from_residual(_charbonnier, pred, target, weight, mask, eps=eps, reduction=reduction)
