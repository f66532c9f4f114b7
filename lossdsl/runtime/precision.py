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

from typing import Any

import torch
from torch import Tensor

__all__ = ["HALF", "widen", "narrow", "weight_vector"]

HALF = (torch.float16, torch.bfloat16)


def widen(x: Any) -> Any:
    """A half-precision tensor in float32; anything else as it is."""
    if isinstance(x, Tensor) and x.dtype in HALF:
        return x.float()
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
    """The effective weights of one call as one (K,) tensor in ``like``'s dtype and device."""
    dtype = torch.float32 if like.dtype in HALF else like.dtype
    parts = [
        w.detach().to(dtype).reshape(()) if isinstance(w, Tensor) else torch.tensor(float(w), dtype=dtype, device=like.device)
        for w in weights
    ]
    return torch.stack(parts)
