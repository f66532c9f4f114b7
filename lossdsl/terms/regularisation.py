"""Penalties that read no target (DESIGN.md §5).

out_of_bounds keeps pred inside an interval; l2_reg is weight decay on a model's parameters,
read from the ``model`` input: ``crit(pred, target, model=net)``.
"""

from __future__ import annotations

import functools
from typing import Annotated, Iterable, Mapping

import torch
import torch.nn.functional as F
from annotated_types import Ge
from torch import Tensor, nn

from ..errors import LossInputError
from ._common import Reduction, check_floating, compute_dtype, reduce, safe_pow, upcast

__all__ = ["out_of_bounds", "l2_reg"]


def out_of_bounds(
    pred: Tensor,
    *, lower: float | None, upper: float | None, power: Annotated[float, Ge(1)] = 1,
    reduction: Reduction = "mean",
) -> Tensor:
    """Penalty for pred outside [lower, upper]: mean(relu(lower - pred)^power + relu(pred - upper)^power).

    Reads pred only. ``none`` leaves that side open. Zero inside the interval.
    ``reduction="none"`` returns the penalty of every element (pred's shape).
    Example: ``mse + 10*out_of_bounds(lower=0, upper=1, power=2)``.
    """
    check_floating(pred, "pred")
    (x,) = upcast(pred)
    l = torch.zeros_like(x)
    if lower is not None:
        l = l + safe_pow(F.relu(lower - x), power)
    if upper is not None:
        l = l + safe_pow(F.relu(x - upper), power)
    return reduce(l, reduction).to(pred.dtype)


def _lower_not_above_upper(values: dict) -> None:
    lower, upper = values.get("lower"), values.get("upper")
    if lower is not None and upper is not None and lower > upper:
        raise ValueError(f"lower={lower:g} is above upper={upper:g}: the interval is empty")


out_of_bounds.check_hyperparameters = _lower_not_above_upper


def _parameters(model) -> list[Tensor]:
    if isinstance(model, nn.Module):
        return list(model.parameters())
    if isinstance(model, Tensor):
        return [model]
    if isinstance(model, Mapping):  # a state_dict-like mapping of name -> tensor
        model = model.values()
    if not isinstance(model, Iterable) or isinstance(model, (str, bytes)):
        raise LossInputError(
            f"input 'model' must be an nn.Module or an iterable of tensors, got {type(model).__name__}",
            hint="pass the network (crit(pred, target, model=net)) or net.parameters()",
        )
    params = list(model)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise LossInputError(
                f"input 'model' must hold tensors, but item {i} is a {type(p).__name__}",
                hint="pass the network (crit(pred, target, model=net)) or net.parameters()",
            )
    return params


def l2_reg(model, *, biases: bool = False) -> Tensor:
    """L2 penalty on a model's weights: 0.5 * sum(w^2) over parameters that require grad.

    Input ``model``: an ``nn.Module`` or an iterable of tensors (e.g. ``net.parameters()``).
    One-dimensional (and scalar) parameters, biases and norm scales, count only with
    ``biases=true``. Half-precision parameters are summed and returned in float32: the
    penalty of a large layer exceeds float16's range (65504) long before its weight scales
    it down, so unlike the other terms it does not return to the input dtype.
    Example: ``mse + 1e-4*l2_reg``, called as ``crit(pred, target, model=net)``.
    """
    counted = [p for p in _parameters(model) if p.requires_grad and (biases or p.dim() >= 2)]
    if not counted:
        return torch.zeros(())
    dtype = functools.reduce(torch.promote_types, [compute_dtype(p) for p in counted])
    total = sum(p.to(dtype).square().sum() for p in counted)
    return 0.5 * total
