"""Shared pieces of the term functions: shape checks, half precision, weighted reduction.

>>> import torch
>>> from lossdsl.terms._common import reduce_elementwise
>>> l = torch.tensor([1.0, 2.0, 3.0, 4.0])
>>> float(reduce_elementwise(l, weight=None, mask=torch.tensor([1.0, 1.0, 0.0, 0.0])))
1.5
"""

from __future__ import annotations

import contextlib
import functools
from typing import Literal

import torch
from torch import Tensor

from ..errors import LossInputError

__all__ = [
    "Reduction",
    "HALF_DTYPES",
    "check_same_shape",
    "check_tensor",
    "check_dim",
    "compute_dtype",
    "upcast",
    "from_residual",
    "residual_form",
    "reduce_elementwise",
    "reduce",
    "safe_pow",
    "as_tensor_param",
    "autocast_off",
]

Reduction = Literal["mean", "sum"]
HALF_DTYPES = (torch.float16, torch.bfloat16)


def check_tensor(value, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise LossInputError(
            f"input '{name}' must be a tensor, got {type(value).__name__}",
            hint=f"pass a torch.Tensor as {name}",
        )
    return value


def check_same_shape(pred: Tensor, target: Tensor, what: str = "target") -> None:
    """Elementwise terms never broadcast pred against target silently."""
    if not (isinstance(pred, Tensor) and isinstance(target, Tensor)):
        check_tensor(pred, "pred")
        check_tensor(target, what)
    if pred.shape != target.shape:
        raise LossInputError(
            f"pred has shape {tuple(pred.shape)} but {what} has shape {tuple(target.shape)}",
            hint="elementwise terms need equal shapes (no broadcasting); reshape or squeeze one of them",
        )


def compute_dtype(x: Tensor) -> torch.dtype:
    """float16/bfloat16 are computed in float32; other dtypes as they are."""
    return torch.float32 if x.dtype in HALF_DTYPES else x.dtype


def upcast(*tensors: Tensor | None) -> list[Tensor | None]:
    """Cast half-precision tensors to float32 for the computation (no-op otherwise)."""
    return [t.float() if t is not None and t.dtype in HALF_DTYPES else t for t in tensors]


def from_residual(on_residual, pred, target, *rest, **hyper) -> Tensor:
    """A term written on ``e = pred - target``, called with pred and target."""
    check_same_shape(pred, target)
    p, t = upcast(pred, target)
    out = on_residual(p - t, *rest, **hyper)
    return out if out.dtype == pred.dtype else out.to(pred.dtype)


def residual_form(on_residual):
    """Mark ``fn`` as computable from ``e = pred - target`` by ``on_residual(e, *inputs,
    **hyper)``: a loss whose terms read the same pred and target then computes ``e`` once
    and shares it (one subtraction, and one saved tensor, instead of one per term)."""

    def mark(fn):
        fn.on_residual = on_residual
        return fn

    return mark


def _check_broadcast(x: Tensor, shape: torch.Size, name: str) -> None:
    check_tensor(x, name)
    try:
        ok = torch.broadcast_shapes(x.shape, shape) == shape
    except RuntimeError:
        ok = False
    if not ok:
        raise LossInputError(
            f"{name} has shape {tuple(x.shape)}, which does not broadcast to pred's {tuple(shape)}",
            hint=f"give {name} the shape of pred, or a shape that broadcasts to it",
        )


def reduce_elementwise(
    loss: Tensor,
    weight: Tensor | None = None,
    mask: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Reduce an elementwise loss (DESIGN.md §5).

    ``weight``: ``mean(weight * l)`` (``sum`` with ``reduction="sum"``). ``mask``:
    ``sum(mask * l) / sum(mask)`` (``sum(mask * l)`` with ``"sum"``). Both: the mask's
    formula applied to ``weight * l``. An all-zero mask gives 0, not NaN.
    """
    if weight is not None:
        _check_broadcast(weight, loss.shape, "weight")
        loss = loss * weight.to(loss.dtype)
    if mask is not None:
        _check_broadcast(mask, loss.shape, "mask")
        m = mask.to(loss.dtype)
        masked = (loss * m).sum()
        if reduction == "sum":
            return masked
        count = torch.broadcast_to(m, loss.shape).sum()
        return masked / count.clamp_min(torch.finfo(loss.dtype).tiny)
    return loss.sum() if reduction == "sum" else loss.mean()


def reduce(loss: Tensor, reduction: Reduction = "mean") -> Tensor:
    """``mean`` or ``sum`` over all elements."""
    return loss.sum() if reduction == "sum" else loss.mean()


def check_dim(x: Tensor, dim: int, name: str = "pred", hint: str | None = None) -> int:
    """``dim`` as a non-negative axis of ``x``; a ``LossInputError`` when it is out of range."""
    if not -x.dim() <= dim < x.dim():
        raise LossInputError(
            f"dim={dim} is out of range for {name} with {x.dim()} dimensions "
            f"(shape {tuple(x.shape)})",
            hint=hint or f"choose an axis between {-x.dim()} and {x.dim() - 1}",
        )
    return dim % x.dim()


def safe_pow(x: Tensor, p: float) -> Tensor:
    """``x ** p`` for ``x >= 0`` whose gradient at ``x == 0`` is 0, never inf or NaN.

    For ``p < 1`` the derivative ``p x^(p-1)`` is infinite at 0 and, multiplied by the 0
    derivative of ``abs``/``relu`` there, would give NaN; the double ``where`` keeps the
    infinite branch out of the graph.
    """
    if p == 1:
        return x
    if p == 0:
        return torch.ones_like(x)
    if p > 1:
        return x.pow(p)
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).pow(p), torch.zeros_like(x))


def as_tensor_param(values, like: Tensor, name: str, length: int | None = None) -> Tensor | None:
    """A list hyperparameter (``class_weights``, ``pos_weight``) as a tensor on ``like``'s device.

    ``length``: the size it must have (the number of classes); a list of one value broadcasts.
    """
    if values is None:
        return None
    if length is not None and len(values) not in (1, length):
        raise LossInputError(
            f"{name} has {len(values)} values but the input has {length} classes",
            hint=f"give {name} one value per class ({length}), or one value for all",
        )
    if torch.compiler.is_compiling():  # a constant of the traced graph; no cache needed
        return torch.tensor(values, dtype=like.dtype, device=like.device)
    return _constant(tuple(values), like.dtype, like.device)


@functools.lru_cache(maxsize=64)
def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    # Made once per device and dtype: a fresh torch.tensor per call would copy host to
    # device (and wait for it) on every step. Never written to, so sharing it is safe; made
    # outside inference mode so that autograd may save it.
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype, device=device)


def autocast_off(x: Tensor):
    """A context in which matmul and convolution run in ``x``'s dtype even under autocast.

    Autocast would cast them to float16/bfloat16 whatever the term upcast; terms computed in
    float32 inside compute them in it. A no-op where autocast is off.
    """
    device = x.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()
