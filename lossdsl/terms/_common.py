"""Shared pieces of the term functions: shape checks, half precision, weighted reduction.

``reduction="none"`` keeps a term's elementwise (or per-sample) values: ``weight`` is
multiplied in and masked positions are exactly 0, so ``sum`` of them is ``reduction="sum"``.

>>> import torch
>>> from lossdsl.terms._common import reduce_elementwise
>>> l = torch.tensor([1.0, 2.0, 3.0, 4.0])
>>> float(reduce_elementwise(l, weight=None, mask=torch.tensor([1.0, 1.0, 0.0, 0.0])))
1.5
"""

from __future__ import annotations

import contextlib
import functools
from typing import Annotated, Literal

import torch
from annotated_types import Ge
from torch import Tensor

from ..errors import LossInputError

__all__ = [
    "Reduction",
    "HALF_DTYPES",
    "Stabiliser",
    "check_same_shape",
    "residual",
    "direction_scaled",
    "check_tensor",
    "check_floating",
    "check_class_indices",
    "check_dim",
    "compute_dtype",
    "upcast",
    "from_residual",
    "residual_form",
    "reduce_elementwise",
    "reduce",
    "kept_positions",
    "reduce_kept",
    "elementwise",
    "safe_pow",
    "clamp_straight_through",
    "as_tensor_param",
    "autocast_off",
]

Reduction = Literal["mean", "sum", "none"]
HALF_DTYPES = (torch.float16, torch.bfloat16)
# a constant that keeps a root, a ratio or a logarithm finite (eps, smooth): squared it must
# stay a normal float32 (1e-23 squared is 0 there, and sqrt(0 + 0) has a NaN gradient)
Stabiliser = Annotated[float, Ge(1e-12)]


def check_tensor(value, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise LossInputError(
            f"input '{name}' must be a tensor, got {type(value).__name__}",
            hint=f"pass a torch.Tensor as {name}",
        )
    return value


def check_floating(x: Tensor, name: str = "pred") -> Tensor:
    """A ``LossInputError`` for integer, bool or complex values where a term needs real floats
    (its gradient, its logarithms); a dtype attribute test, no device work."""
    check_tensor(x, name)
    if not x.is_floating_point():
        kind = "complex" if x.is_complex() else "integer" if x.dtype != torch.bool else "boolean"
        raise LossInputError(
            f"{name} has dtype {x.dtype} ({kind}), but this term needs floating-point values",
            hint=f"convert it: {name}.float()"
            + (f" (or {name}.real / {name}.abs() for complex values)" if x.is_complex() else ""),
        )
    return x


def check_same_shape(pred: Tensor, target: Tensor, what: str = "target") -> None:
    """Elementwise terms never broadcast pred against target silently; pred is real floating
    point (a complex target is refused too: the terms are defined on real numbers)."""
    if not (isinstance(pred, Tensor) and isinstance(target, Tensor)):
        check_tensor(pred, "pred")
        check_tensor(target, what)
    if not pred.is_floating_point():
        check_floating(pred, "pred")
    if target.is_complex():
        check_floating(target, what)
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


def residual(pred: Tensor, target: Tensor) -> Tensor:
    """``e = pred - target`` in the computation's dtype; a boolean or integer target counts as
    its numbers in pred's dtype (as ``mse`` reads it), never wrapped or refused by ``-``.

    >>> residual(torch.tensor([0.5, 2.0]), torch.tensor([True, False]))
    tensor([-0.5000,  2.0000])
    """
    p, t = upcast(pred, target)
    if not t.is_floating_point() and p.is_floating_point():
        t = t.to(p.dtype)
    return p - t


def direction_scaled(x: Tensor, dim: int) -> Tensor:
    """``x`` with each vector along ``dim`` whose largest entry exceeds 1 in size divided by
    it: the same direction, and a norm that cannot overflow (entries of 1e20 in float32 have a
    squared norm of inf, which normalises them to 0). Other vectors are left as they are, so a
    norm floor (``eps``) acts where it did.

    >>> direction_scaled(torch.tensor([[3e20, 4e20], [0.3, 0.4]]), 1)
    tensor([[0.7500, 1.0000],
            [0.3000, 0.4000]])
    """
    if x.shape[dim] == 0:  # empty vectors: no entry to scale by (amax of nothing is refused)
        return x
    return x / x.detach().abs().amax(dim, keepdim=True).clamp_min(1.0)


def from_residual(on_residual, pred, target, *rest, **hyper) -> Tensor:
    """A term written on ``e = pred - target``, called with pred and target."""
    check_same_shape(pred, target)
    out = on_residual(residual(pred, target), *rest, **hyper)
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
    formula applied to ``weight * l``. An all-zero mask gives 0, not NaN. ``"none"``:
    ``mask * weight * l`` elementwise, the values whose sum is ``"sum"``.
    """
    if weight is not None:
        _check_broadcast(weight, loss.shape, "weight")
        loss = loss * weight.to(loss.dtype)
    if mask is not None:
        _check_broadcast(mask, loss.shape, "mask")
        return _reduce_masked(loss, mask, reduction)
    return reduce(loss, reduction)


def reduce(loss: Tensor, reduction: Reduction = "mean") -> Tensor:
    """``mean`` or ``sum`` over all elements, or ``loss`` itself for ``"none"``; the mean of
    nothing is 0 (an empty batch gives 0 with an empty gradient, like an all-zero mask, where
    ``Tensor.mean`` gives NaN), its ``"none"`` an empty tensor."""
    if reduction == "mean":
        # numel is shape metadata: no device work
        return loss.mean() if loss.numel() else loss.sum()
    if reduction == "sum":
        return loss.sum()
    return loss


def _reduce_masked(loss: Tensor, mask: Tensor, reduction: Reduction) -> Tensor:
    """``loss`` reduced over the positions where ``mask`` is 1: the mean divides by the mask's
    sum (0 when it is all zero), ``"none"`` is ``loss * mask``."""
    m = mask.to(loss.dtype)
    if reduction == "none":
        return loss * m
    masked = (loss * m).sum()
    if reduction == "sum":
        return masked
    count = torch.broadcast_to(m, loss.shape).sum()
    # an all-zero mask leaves 0 / 1 = 0; a soft mask whose sum is subnormal still divides by it
    return masked / torch.where(count != 0, count, torch.ones_like(count))


def kept_positions(weight: Tensor | None, mask: Tensor | None, shape: torch.Size) -> Tensor | None:
    """The positions a weighted or masked term computes: ``weight != 0`` and ``mask != 0``
    (checked to broadcast to ``shape``); ``None`` when there is neither."""
    keep = None
    if weight is not None:
        _check_broadcast(weight, shape, "weight")
        keep = weight != 0
    if mask is not None:
        _check_broadcast(mask, shape, "mask")
        keep = mask != 0 if keep is None else keep & (mask != 0)
    return keep


def reduce_kept(
    loss: Tensor, weight: Tensor | None, mask: Tensor | None, keep: Tensor | None,
    reduction: Reduction = "mean",
) -> Tensor:
    """:func:`reduce_elementwise` of a ``loss`` computed on inputs cleaned at the left-out
    positions (``keep`` false, see :func:`elementwise`), so finite there: ``0 * loss`` is 0.
    The weighted loss is kept out of those positions with ``torch.where``: a weight that is
    NaN or infinite where the mask is 0 (``1 / count`` of an empty bin) stays out of the value
    (``0 * nan`` is NaN), and a learnable weight gets no gradient where it is 0 (the product
    would pass it ``fn``'s value at the cleaned inputs). ``"none"``: ``mask * weight * loss``,
    exactly 0 at the left-out positions."""
    if keep is None:
        return reduce(loss, reduction)
    if weight is not None:
        loss = torch.where(keep, loss * weight.to(loss.dtype), 0.0)
    if mask is None:
        return reduce(loss, reduction)
    return _reduce_masked(loss, mask, reduction)


def elementwise(
    fn, inputs: tuple[Tensor, ...], weight: Tensor | None, mask: Tensor | None,
    reduction: Reduction = "mean",
) -> Tensor:
    """``fn(*inputs)`` reduced with ``weight``/``mask`` as DESIGN.md §5 defines, leaving the
    positions of weight 0 or mask 0 out: their inputs are replaced by 0 *before* ``fn``, so
    NaN or garbage there (padding) reaches neither the value nor, through ``fn``'s backward,
    the gradient. Without weight and mask this is ``reduce(fn(*inputs))``: no extra work.

    >>> import torch
    >>> x = torch.tensor([2.0, float("nan")])
    >>> float(elementwise(torch.square, (x,), None, torch.tensor([1.0, 0.0])))
    4.0
    >>> elementwise(torch.square, (x,), torch.tensor([0.5, 0.0]), None, "none")
    tensor([2., 0.])
    """
    keep = kept_positions(weight, mask, inputs[0].shape)
    if keep is not None:
        inputs = tuple(torch.where(keep, x, 0.0) for x in inputs)
    return reduce_kept(fn(*inputs), weight, mask, keep, reduction)


def check_class_indices(target: Tensor, classes: int, ignore_index: int | None = None) -> None:
    """A ``LossInputError`` for a class index outside ``[0, classes)`` (``ignore_index`` aside).

    Reads two numbers back from the tensor, so it runs on the CPU only: on an accelerator
    that read would wait for the device on every call, and torch's own check (a device-side
    assert) stays in charge there; under ``torch.compile`` tracing it is skipped too.
    """
    if target.device.type != "cpu" or target.numel() == 0 or torch.compiler.is_compiling():
        return
    low, high = (int(v) for v in torch.aminmax(target))
    if low >= 0 and high < classes:
        return
    if ignore_index is not None and not 0 <= ignore_index < classes:
        counted = target[target != ignore_index]
        if counted.numel() == 0:
            return
        low, high = (int(v) for v in torch.aminmax(counted))
        if low >= 0 and high < classes:
            return
    bad = low if low < 0 else high
    ignored = f" (ignore_index={ignore_index} is skipped)" if ignore_index is not None else ""
    raise LossInputError(
        f"target holds the class index {bad}, but pred has {classes} classes: indices must be "
        f"in 0..{classes - 1}{ignored}",
        hint="check the labels and the class axis (class_dim=); a label meaning 'no class' "
        "needs ignore_index= (cross_entropy)",
    )


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


def clamp_straight_through(x: Tensor, min: float | None = None, max: float | None = None) -> Tensor:
    """``x.clamp(min, max)`` in value, ``x`` for the gradient (1 everywhere, also where clamped).

    The value is exactly the clamped one: ``x + (clamped - x).detach()`` would round it away
    for ``x`` far outside (``-0.5 + (1e-9 + 0.5)`` is 0 in float32, and its log -inf).
    """
    return x.clamp(min, max).detach() + (x - x.detach())


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
