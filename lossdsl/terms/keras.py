"""Terms with Keras' definitions (DESIGN.md §5, second table).

hinge and squared_hinge (binary margins), categorical_hinge (per sample, over a class axis),
mape and msle. hinge, squared_hinge, mape and msle are elementwise: they take optional
``weight`` and ``mask`` inputs and ``reduction="mean" | "sum"`` like the regression terms,
and a position whose weight or mask is 0 is left out before its loss is computed (NaN
there reaches neither value nor gradient); categorical_hinge reduces its per-sample values
with ``reduction``. ``reduction="none"`` returns the values: ``mask * weight * l`` of pred's
shape, or categorical_hinge's per sample (pred's shape without the class axis). The mean of
an empty batch is 0.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge
from torch import Tensor

from ..errors import LossInputError
from ._common import Reduction, Stabiliser, check_dim, check_same_shape, elementwise, reduce, upcast

__all__ = ["hinge", "squared_hinge", "categorical_hinge", "mape", "msle"]

Margin = Annotated[float, Ge(0)]
Labels = Literal["01", "pm1"]


def _signed_margin(pred: Tensor, target: Tensor, margin: float, targets: Labels) -> Tensor:
    """``relu(margin - y pred)`` with ``y`` in {-1, 1}: ``2 t - 1`` for 0/1 labels, ``t`` for ±1."""
    y = 2.0 * target - 1.0 if targets == "01" else target
    return F.relu(margin - y * pred)


def _elementwise(values, pred, target, weight, mask, reduction, **hyper) -> Tensor:
    check_same_shape(pred, target)
    p, t = upcast(pred, target)
    l = elementwise(lambda p, t: values(p, t, **hyper), (p, t.to(p.dtype)), weight, mask, reduction)
    return l.to(pred.dtype)


def hinge(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, margin: Margin = 1.0, targets: Labels = "01", reduction: Reduction = "mean",
) -> Tensor:
    """Hinge loss: mean(relu(margin - y pred)), y = 2 target - 1 (targets="01") or target ("pm1").

    Equals Keras' ``Hinge`` at margin 1 (Keras turns 0/1 labels into -1/1 the same way; here
    ``targets=`` says which labels are given, so no data-dependent check runs). pred is a
    score, not a probability. Example: ``hinge(margin=1, targets="pm1")``.
    """
    return _elementwise(_signed_margin, pred, target, weight, mask, reduction, margin=margin, targets=targets)


def _squared_margin(pred: Tensor, target: Tensor, margin: float, targets: Labels) -> Tensor:
    return _signed_margin(pred, target, margin, targets).square()


def squared_hinge(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, margin: Margin = 1.0, targets: Labels = "01", reduction: Reduction = "mean",
) -> Tensor:
    """Squared hinge loss: mean(relu(margin - y pred)^2), y as in hinge.

    Equals Keras' ``SquaredHinge`` at margin 1; differentiable at the margin, unlike hinge.
    Example: ``squared_hinge(targets="01")``.
    """
    return _elementwise(_squared_margin, pred, target, weight, mask, reduction, margin=margin, targets=targets)


def _per_sample_categorical_hinge(pred: Tensor, target: Tensor, axis: int) -> Tensor:
    """``relu(1 + max_c((1 - t) p) - sum_c(t p))`` for each sample (the class axis reduced)."""
    positive = (target * pred).sum(axis)
    negative = ((1.0 - target) * pred).amax(axis)
    return F.relu(1.0 + negative - positive)


def categorical_hinge(
    pred: Tensor, target: Tensor, *, class_dim: int = -1, reduction: Reduction = "mean",
) -> Tensor:
    """Categorical hinge: mean over samples of relu(1 + max_c((1 - t) p) - sum_c(t p)).

    ``t`` is one-hot or a probability vector along ``class_dim`` (pred's shape); every other
    axis indexes samples. Equals Keras' ``CategoricalHinge``; ``reduction="sum"`` sums the
    per-sample values. Where several wrong classes tie for the maximum, the gradient is shared
    among them. Example: ``categorical_hinge(class_dim=-1)``.
    """
    check_same_shape(pred, target)
    if pred.dim() == 0:
        raise LossInputError(
            "categorical_hinge needs scores with a class axis, got a 0-dim pred",
            hint="pass pred and a one-hot target of shape (batch, classes)",
        )
    axis = check_dim(pred, class_dim, "pred", hint="class_dim= names the axis of the classes")
    if pred.shape[axis] == 0:
        raise LossInputError(
            f"categorical_hinge needs at least one class, pred has shape {tuple(pred.shape)}",
            hint="class_dim= names the axis of the classes",
        )
    p, t = upcast(pred, target)
    l = _per_sample_categorical_hinge(p, t.to(p.dtype), axis)
    return reduce(l, reduction).to(pred.dtype)


def _percentage_error(pred: Tensor, target: Tensor, eps: float) -> Tensor:
    return 100.0 * (pred - target).abs() / target.abs().clamp_min(eps)


def mape(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, eps: Stabiliser = 1e-7, reduction: Reduction = "mean",
) -> Tensor:
    """Mean absolute percentage error: 100 mean(abs(e) / max(abs(target), eps)).

    Equals Keras' ``MeanAbsolutePercentageError``; ``eps`` keeps a zero target finite (the
    error there is divided by eps, so it dominates: mask such points out if they are
    expected). Example: ``mape(mask=valid)``.
    """
    return _elementwise(_percentage_error, pred, target, weight, mask, reduction, eps=eps)


def _squared_log_error(pred: Tensor, target: Tensor) -> Tensor:
    return (torch.log1p(F.relu(pred)) - torch.log1p(F.relu(target))).square()


def msle(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, reduction: Reduction = "mean",
) -> Tensor:
    """Mean squared logarithmic error: mean((log1p(relu(pred)) - log1p(relu(target)))^2).

    Negative values count as 0 (Keras clamps them to its epsilon 1e-7 instead, a difference
    below 1e-7 per element). For positive targets spanning orders of magnitude.
    Example: ``msle + 0.1*mape``.
    """
    return _elementwise(_squared_log_error, pred, target, weight, mask, reduction)
