"""Regression terms on ``e = pred - target`` (DESIGN.md §5).

mse, mae (alias l1), huber, smooth_l1, adaptive_huber, log_cosh, quantile, charbonnier.

Each accepts optional ``weight`` (``mean(weight * l)``) and ``mask``
(``sum(mask * l) / sum(mask)``) inputs and ``reduction="mean" | "sum" | "none"`` (``"none"``:
the values ``mask * weight * l`` of pred's shape, masked positions exactly 0); a position whose
weight or mask is 0 is left out before the loss is computed, so NaN there (padding) reaches
neither value nor gradient. Half-precision inputs are computed in float32 and returned in
the input dtype; the mean of an empty batch is 0.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Gt, Lt
from torch import Tensor

from ._common import (
    HALF_DTYPES,
    Reduction,
    Stabiliser,
    check_same_shape,
    elementwise,
    from_residual,
    kept_positions,
    reduce_elementwise,
    reduce_kept,
    residual_form,
    upcast,
)

__all__ = [
    "mse", "mae", "huber", "smooth_l1", "adaptive_huber", "log_cosh", "quantile", "charbonnier"]


def _with_torch(loss_fn, pred, target, weight, mask, reduction: Reduction, **hyper) -> Tensor:
    """An elementwise term that torch.nn.functional has: its fused reduction when there is no
    weight or mask, else the elementwise values reduced as DESIGN.md §5 defines."""
    check_same_shape(pred, target)
    half = pred.dtype in HALF_DTYPES or target.dtype in HALF_DTYPES
    p, t = upcast(pred, target) if half else (pred, target)
    if weight is None and mask is None:
        # torch's mean of an empty batch is NaN; the catalogue's is 0 (the sum of nothing)
        how = "sum" if reduction == "mean" and p.numel() == 0 else reduction
        out = loss_fn(p, t, reduction=how, **hyper)
    else:
        out = elementwise(
            lambda p, t: loss_fn(p, t, reduction="none", **hyper), (p, t), weight, mask, reduction
        )
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
    return elementwise(torch.abs, (e,), weight, mask, reduction)


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
    keep = kept_positions(weight, mask, e.shape)
    if keep is not None:  # left-out positions (weight or mask 0) neither count nor move delta
        e = torch.where(keep, e, 0.0)
    a = e.abs()
    with torch.no_grad():
        if keep is None:
            delta = scale * (a.mean() if a.numel() else 0.0)
        else:
            counted = keep if mask is None else torch.where(keep, mask.to(a.dtype), 0.0)
            delta = scale * reduce_elementwise(a, None, counted)
    l = torch.where(a <= delta, 0.5 * e * e, delta * (a - 0.5 * delta))
    return reduce_kept(l, weight, mask, keep, reduction)


@residual_form(_adaptive_huber)
def adaptive_huber(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, scale: Annotated[float, Gt(0)] = 0.5, reduction: Reduction = "mean",
) -> Tensor:
    """Huber loss whose delta follows the batch: delta = scale * mean(abs(e)), detached.

    The threshold between the quadratic and the linear part adapts to the current size of
    the errors; it is treated as a constant for the gradient. With ``mask`` or ``weight``,
    delta is the (mask-weighted) mean over the elements whose mask and weight are not 0.
    Example: ``adaptive_huber(scale=0.5) + 0.1*mse``.
    """
    return from_residual(_adaptive_huber, pred, target, weight, mask, scale=scale, reduction=reduction)


# Beyond it log1p(exp(-2 |e|)) < 1e-34, below every dtype's resolution of |e| - log 2.
_LOG_COSH_LINEAR = 40.0


class _LogCosh(torch.autograd.Function):
    """log(cosh(e)) to a few ulp for every e, with the gradient tanh(e).

    log cosh e = log1p(cosh e - 1) = log1p(2 sinh(e/2)^2) has no cancellation near 0 (where
    the overflow-safe ``abs(e) + softplus(-2 abs(e)) - log 2`` loses every digit: its terms
    are ~log 2 for a value ~e^2/2), and sinh stays finite up to abs(e) = 40, beyond which
    log cosh e = abs(e) - log 2 exactly in floating point. Written as a Function so that
    backward is one ``tanh`` (the composite's backward costs several passes and memory);
    the backward is itself differentiable, so double backward works.
    """

    @staticmethod
    def forward(ctx, e: Tensor) -> Tensor:
        ctx.save_for_backward(e)
        c = e.clamp(-_LOG_COSH_LINEAR, _LOG_COSH_LINEAR)
        value = c.mul_(0.5).sinh_().square_().mul_(2.0).log1p_()
        # the linear part past the switch: log cosh e = log cosh(40) + (abs(e) - 40)
        return value.add_(e.abs().sub_(_LOG_COSH_LINEAR).clamp_min_(0.0))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (e,) = ctx.saved_tensors
        return grad * torch.tanh(e)


def _log_cosh(
    e: Tensor, weight: Tensor | None = None, mask: Tensor | None = None, *, reduction: Reduction
) -> Tensor:
    return elementwise(_LogCosh.apply, (e,), weight, mask, reduction)


@residual_form(_log_cosh)
def log_cosh(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, reduction: Reduction = "mean",
) -> Tensor:
    """Log-cosh loss: mean(log(cosh(e))).

    Computed as log1p(2 sinh(e/2)^2), accurate to a few ulp from tiny errors (about e^2/2)
    to large ones, and as abs(e) - log 2 beyond abs(e) = 40, so it never overflows (cosh
    does from abs(e) ~ 89 in float32); exactly 0 at e = 0; the gradient is tanh(e).
    Example: ``log_cosh + 0.1*temporal_diff``.
    """
    return from_residual(_log_cosh, pred, target, weight, mask, reduction=reduction)


def _quantile(
    e: Tensor, weight: Tensor | None = None, mask: Tensor | None = None, *, q: float, reduction: Reduction
) -> Tensor:
    # u = target - pred = -e: max(q u, (q - 1) u) = max(-q e, (1 - q) e)
    return elementwise(lambda e: torch.maximum(-q * e, (1.0 - q) * e), (e,), weight, mask, reduction)


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
    return elementwise(lambda e: torch.sqrt(e * e + eps * eps), (e,), weight, mask, reduction)


@residual_form(_charbonnier)
def charbonnier(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, eps: Stabiliser = 1e-3, reduction: Reduction = "mean",
) -> Tensor:
    """Charbonnier loss: mean(sqrt(e^2 + eps^2)), a smooth L1.

    Differentiable everywhere (gradient e / sqrt(e^2 + eps^2)); common in image restoration.
    Example: ``charbonnier(eps=1e-3) + 0.05*tv``.
    """
    return from_residual(_charbonnier, pred, target, weight, mask, eps=eps, reduction=reduction)
