"""The monitor's statistics as pure functions: folding history rows into sums, EMA, min and
max, gradient norms for the probe, and the all-reduce that combines ranks (an example is
in :func:`fold_rows`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["QUANTITIES", "ROWS", "Increment", "fold_rows", "acc_dtype", "buffer_dtype", "ratio", "grad_norm", "all_reduce"]

QUANTITIES = ("raw", "weight", "weighted", "share")
# Rows of the `sums` accumulator (one per phase): sums of the quantities over the calls where
# a column was finite, then counts, then the probe's sums and counts.
ROWS = QUANTITIES + ("count", "calls", "grad_norm", "probes")
_REDUCE = {"low": "MIN", "high": "MAX", "step": "MAX"}  # the rest adds up over ranks


def _acc_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps long running sums (and counts, up to 2^53) exact; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _buffer_dtype(name: str, buf: Tensor, device: torch.device) -> torch.dtype:
    if not buf.is_floating_point():
        return buf.dtype
    if name == "_history":  # float32 rows (one cheap copy per call), float64 for float64 inputs
        return torch.float64 if buf.dtype == torch.float64 and device.type != "mps" else torch.float32
    return _acc_dtype(device)


class Increment(NamedTuple):
    """What ``n`` calls add: ``sums`` (6, C) to the first six ROWS; ``decay`` (C,), the factor
    on the old EMA, then ``ema_add`` (Q, C) and ``norm_add`` (C,); ``low``/``high`` (Q, C)."""

    sums: Tensor
    decay: Tensor
    ema_add: Tensor
    norm_add: Tensor
    low: Tensor
    high: Tensor


def fold_rows(rows: Tensor, leaf: Tensor, beta: float) -> Increment:
    """Statistics of ``n`` recorded calls; a row is ``[raw (C), weight (C)]`` with the total
    as the last column (weight 1).

    Quantities: raw, weight, weighted (raw * weight) and share (``|weighted| / sum |weighted|``
    over the columns where ``leaf`` is 1). A non-finite weighted value leaves its column out
    of every statistic of that call; the EMA is exact over the finite values, in order.

    >>> import torch
    >>> rows = torch.tensor([[2.0, 8.0, 3.0, 0.5, 0.25, 1.0]])
    >>> inc = fold_rows(rows, torch.tensor([1.0, 1.0, 0.0]), 0.9)
    >>> [round(x, 4) for x in inc.sums[3, :2].tolist()]   # shares of |1.0| and |2.0|
    [0.3333, 0.6667]
    """
    acc, c = leaf.dtype, leaf.numel()
    rows = rows.to(acc)
    r, w = rows[:, :c], rows[:, c:]
    x = r * w
    fin = torch.isfinite(x)
    a = torch.where(fin, x.abs(), 0)
    share = a / (a @ leaf).clamp_min(torch.finfo(acc).tiny)[:, None]
    vals = torch.stack([r, w, x, share], 1)  # (n, Q, C)
    fin_q = fin[:, None]
    clean = torch.where(fin_q, vals, 0)
    count = fin.sum(0, dtype=acc)
    # each finite value decays once for every finite value of its column after it
    coef = torch.where(fin, torch.pow(beta, count - fin.cumsum(0, dtype=acc)) * (1 - beta), 0)
    sums = torch.cat([clean.sum(0), count[None], torch.full_like(count, rows.shape[0])[None]])
    return Increment(
        sums,
        torch.pow(beta, count),
        (coef[:, None] * clean).sum(0),
        coef.sum(0),
        torch.where(fin_q, vals, math.inf).amin(0),
        torch.where(fin_q, vals, -math.inf).amax(0),
    )


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def _grad_norm(value: Any, wrt: list[Tensor], dtype: torch.dtype, device) -> Tensor:
    if not isinstance(value, Tensor) or not value.requires_grad:
        return torch.zeros((), dtype=dtype, device=device)
    grads = torch.autograd.grad(value, wrt, retain_graph=True, allow_unused=True)
    norms = [torch.linalg.vector_norm(g.to(dtype)) for g in grads if g is not None]
    if not norms:
        return torch.zeros((), dtype=dtype, device=device)
    return torch.linalg.vector_norm(torch.stack(norms)).to(device)


def _all_reduce(parts: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """One all-reduce per operation: sums and counts add up, ``low``/``high`` take min/max."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return parts
    out = dict(parts)
    for op in ("SUM", "MIN", "MAX"):
        group = {n: t for n, t in parts.items() if _REDUCE.get(n, "SUM") == op}
        if group:
            flat = torch.cat([t.reshape(-1).to(dtype) for t in group.values()])
            dist.all_reduce(flat, op=getattr(dist.ReduceOp, op))
            sizes = [t.numel() for t in group.values()]
            out.update({n: p.reshape(t.shape) for (n, t), p in zip(group.items(), flat.split(sizes))})
    return out


acc_dtype = _acc_dtype
buffer_dtype = _buffer_dtype
ratio = _ratio
grad_norm = _grad_norm
all_reduce = _all_reduce
