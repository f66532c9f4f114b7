"""Precision of the combination of terms (DESIGN.md §5, §9).

Terms in float16/bfloat16 are combined in float32 (a sum, a product, a ``log`` of half
values loses digits fast), and the total is returned in the terms' dtype.

>>> import torch
>>> widen(torch.tensor(1.0, dtype=torch.float16)).dtype, widen(torch.tensor(1.0)).dtype
(torch.float32, torch.float32)
>>> narrow(torch.tensor(2.0), torch.tensor(1.0, dtype=torch.bfloat16)).dtype
torch.bfloat16
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = [
    "HALF", "widen", "half_again", "narrow", "floating_dtype", "as_number", "number_tensor", "weight_vector",
    "coefficient_vector", "list_tensor", "values_row",
]

HALF = (torch.float16, torch.bfloat16)


def widen(x: Any) -> Any:
    """A half-precision tensor in float32; anything else as it is."""
    if isinstance(x, Tensor) and x.dtype in HALF:
        return x.float()
    return x


def half_again(x: Any, like: Any) -> Any:
    """``x``, computed in float32 because ``like`` is half precision, back in ``like``'s dtype
    (an unreduced term's values meet the tensor expression as the inputs' dtype).

    >>> half_again(torch.zeros(2), torch.zeros(2, dtype=torch.float16)).dtype
    torch.float16
    """
    if isinstance(x, Tensor) and isinstance(like, Tensor) and like.dtype in HALF and x.dtype == torch.float32:
        return x.to(like.dtype)
    return x


def narrow(total: Any, *terms: Any) -> Any:
    """The total in the dtype the terms' values promote to (the dtype of the loss)."""
    dtype = None
    for t in terms:
        if isinstance(t, Tensor):
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    if dtype is None or not isinstance(total, Tensor) or total.dtype == dtype:
        return total
    return total.to(dtype)


def weight_vector(like: Tensor, *weights: Any) -> Tensor:
    """The effective weights of one call as one (K,) tensor in ``like``'s dtype (float32 for
    half precision) and device: numbers and 0-dim tensors mixed."""
    numbers = tuple(0.0 if isinstance(w, Tensor) else float(w) for w in weights)
    places = tuple(i for i, w in enumerate(weights) if isinstance(w, Tensor))
    return coefficient_vector(like, numbers, places, [weights[i] for i in places])


def coefficient_vector(like: Tensor, numbers: tuple, places: tuple, dynamic: Sequence[Any]) -> Tensor:
    """A (K,) vector in ``like``'s dtype (float32 for half) and device: ``numbers``, with the
    ``dynamic`` values (tensors or numbers known per call) put at ``places``.

    The numbers are one constant tensor made once; the dynamic values are stacked and put in
    their places: two operations however many there are.
    """
    dtype = torch.float32 if like.dtype in HALF else like.dtype
    compiling = torch.compiler.is_compiling()
    if compiling:
        base = torch.tensor(numbers, dtype=dtype, device=like.device)
    else:
        base = _constant(numbers, dtype, like.device)
    if not places:
        return base
    if not any(isinstance(d, Tensor) for d in dynamic):  # numbers of this call only
        values = list(numbers)
        for i, d in zip(places, dynamic):
            values[i] = float(d)
        return torch.tensor(values, dtype=dtype, device=like.device)
    stacked = torch.stack([_scalar(d, like, dtype) for d in dynamic])
    if len(places) == len(numbers):
        return stacked
    index = torch.tensor(places, device=like.device) if compiling else _index(places, like.device)
    return base.index_put((index,), stacked)


def _scalar(value: Any, like: Tensor, dtype: torch.dtype) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().reshape(()).to(dtype)
    return torch.tensor(float(value), dtype=dtype, device=like.device)


@functools.lru_cache(maxsize=256)
def _index(places: tuple, device: torch.device) -> Tensor:
    with torch.inference_mode(False):
        return torch.tensor(places, device=device)


@functools.lru_cache(maxsize=256)
def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> Tensor:
    # made once per device and dtype (a fresh tensor per call would copy host to device every
    # step), never written to, and made outside inference mode so that autograd may save it
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype, device=device)


def list_tensor(values: tuple, like: Any, pred: Any = None) -> Tensor:
    """A list literal of the program as a constant 1-d tensor in the dtype and on the device
    of the tensor it meets (``like``), in ``pred``'s floating dtype when that one has none (a
    condition), and float32 on the CPU when neither is a tensor.

    >>> list_tensor((1, 2), torch.zeros(2) > 0, torch.zeros(2, dtype=torch.float64)).dtype
    torch.float64
    """
    dtype = floating_dtype(like if isinstance(like, Tensor) and like.is_floating_point() else pred)
    device = like.device if isinstance(like, Tensor) else pred.device if isinstance(pred, Tensor) else torch.device("cpu")
    if torch.compiler.is_compiling():  # a constant of the traced graph: no cache to guard on
        return torch.tensor(values, dtype=dtype, device=device)
    return _constant(tuple(values), dtype, device)


def floating_dtype(like: Any) -> torch.dtype:
    """The dtype a number or a condition takes beside ``like``: its own when it is a floating
    tensor, else float32."""
    return like.dtype if isinstance(like, Tensor) and like.is_floating_point() else torch.float32


def as_number(condition: Any, like: Any) -> Any:
    """A condition as 0/1, in the floating dtype of ``like`` (float32 when it has none).

    >>> as_number(torch.tensor([True, False]), torch.zeros(1, dtype=torch.float64))
    tensor([1., 0.], dtype=torch.float64)
    """
    if not isinstance(condition, Tensor) or condition.dtype != torch.bool:
        return condition
    return condition.to(floating_dtype(like))


def number_tensor(value: Any, like: Any) -> Tensor:
    """A number (or a condition) as a tensor in the floating dtype and on the device of ``like``.

    >>> number_tensor(0.5, torch.zeros(1, dtype=torch.float16))
    tensor(0.5000, dtype=torch.float16)
    """
    if isinstance(value, Tensor):
        return value.to(floating_dtype(like))
    return torch.tensor(float(value), dtype=floating_dtype(like), device=like.device if isinstance(like, Tensor) else None)


def values_row(values: Sequence[Tensor], total: Tensor) -> tuple[Tensor, bool | None]:
    """``[value_1, ..., value_K, total]`` as one new (K+1,) tensor without a graph, and
    whether they are all finite (None when that is not known on the host).

    A term's 0-dim value may share the storage of a full-size buffer (``F.mse_loss``'s does),
    which a kept reference would hold on to, so the row is a copy. On the CPU (eager) the
    numbers are read on the host, a microsecond with no device to wait for, and the row is
    made from them: cheaper than detaching and stacking, and the finiteness check comes free.
    """
    if total.is_cpu and not torch.compiler.is_compiling():
        numbers = [v.item() for v in values]
        numbers.append(total.item())
        dtype = total.dtype
        for v in values:
            if v.dtype != dtype:
                dtype = torch.promote_types(dtype, v.dtype)
        return torch.tensor(numbers, dtype=dtype), all(map(math.isfinite, numbers))
    parts = [v.detach() for v in values]
    parts.append(total.detach())
    return torch.stack(parts), None
