"""Sequence terms: differences along a time (or space) axis (DESIGN.md §5).

``temporal_diff`` compares the step-to-step changes of pred and target; ``tv`` penalises
the changes of pred alone (total variation). ``reduction="none"`` returns the penalty of
every difference: pred's shape with ``dim`` shortened by ``order`` (by 1 for tv).
"""

from __future__ import annotations

from typing import Annotated

import torch
from annotated_types import Ge, Gt
from torch import Tensor

from ..errors import LossInputError
from ._common import Reduction, check_floating, from_residual, reduce, residual_form, safe_pow, upcast

__all__ = ["temporal_diff", "tv"]


def _difference(x: Tensor, order: int, dim: int) -> Tensor:
    if dim >= x.dim() or dim < -x.dim():
        raise LossInputError(
            f"dim={dim} is out of range for an input with {x.dim()} dimensions",
            hint="choose the time axis, e.g. dim=1 for (batch, time, features)",
        )
    if x.shape[dim] <= order:
        raise LossInputError(
            f"a difference of order {order} along dim {dim} needs more than {order} steps, "
            f"the input has {x.shape[dim]}",
            hint="lower order= or check which axis is time (dim=)",
        )
    return torch.diff(x, n=order, dim=dim)


def _temporal_diff(e: Tensor, *, order: int, dim: int, p: float, reduction: Reduction) -> Tensor:
    # D is linear, so D pred - D target = D (pred - target): one difference instead of two.
    return reduce(safe_pow(_difference(e, order, dim).abs(), p), reduction)


@residual_form(_temporal_diff)
def temporal_diff(
    pred: Tensor, target: Tensor,
    *, order: Annotated[int, Ge(1)] = 1, dim: int = 1, p: Annotated[float, Gt(0)] = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Temporal difference penalty: mean(abs(D pred - D target)^p), D the order-th difference along dim.

    Penalises a forecast whose changes from step to step differ from the target's; for
    (batch, time, features) the time axis is dim=1. With p < 1 the gradient where
    D pred = D target is 0, not NaN. Example: ``0.7*huber(delta=1) + 0.3*temporal_diff(order=1, dim=1)``.
    """
    return from_residual(_temporal_diff, pred, target, order=order, dim=dim, p=p, reduction=reduction)


def tv(
    pred: Tensor,
    *, dim: int = 1, p: Annotated[float, Gt(0)] = 1.0, reduction: Reduction = "mean",
) -> Tensor:
    """Total variation of pred: mean(abs(D pred)^p), D the first difference along dim.

    A smoothness penalty on the prediction alone (the target is not read). With p < 1 the
    gradient where two neighbours are equal is 0, not NaN. Example: ``mse + 0.01*tv(dim=1)``.
    """
    check_floating(pred, "pred")
    (x,) = upcast(pred)
    d = safe_pow(_difference(x, 1, dim).abs(), p)
    return reduce(d, reduction).to(pred.dtype)
