"""The monitor's statistics as pure functions, and the rows that eager calls leave for them.

A recorded call is one row ``[raw (C), weight (C)]``: the raw value of every logged item
and the total (the last column), then their effective weights (the total's is 1).
:func:`fold_rows` turns ``n`` rows into what they add to the running sums, EMA, min and
max; :func:`stack_rows` makes those rows from what eager calls left in a
:class:`PendingRows`; :func:`probe_norms` is the gradient-norm probe and
:func:`all_reduce` combines ranks.
"""

from __future__ import annotations

import math
import threading
from numbers import Integral
from typing import Any, NamedTuple, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import LossDSLError, did_you_mean

__all__ = [
    "QUANTITIES", "ROWS", "PENDING_ROWS", "Increment", "CallInputs", "PendingRows",
    "fold_rows", "stack_rows", "stat_dtype", "new_statistics", "ratio", "probed_inputs", "probe_norms",
    "probe_settings", "all_reduce",
]

QUANTITIES = ("raw", "weight", "weighted", "share")
# Rows of the `sums` accumulator (one per phase): sums of the quantities over the calls where
# a column was finite, then counts, then the probe's sums and counts.
ROWS = QUANTITIES + ("count", "calls", "grad_norm", "probes")
# Eager calls are folded in batches of this many rows: one vectorised fold per batch
PENDING_ROWS = 256
_REDUCE = {"low": "MIN", "high": "MAX", "step": "MAX"}  # the rest adds up over ranks


def stat_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the statistics on ``device``: float64 keeps long running sums (and
    counts, up to 2^53) exact; MPS has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def new_statistics(columns: int, phases: int) -> dict[str, Tensor]:
    """The monitor's statistics before any call, per phase and column (the terms and the
    total): sums and counts since ``reset()``, the EMA's accumulator and its normaliser, the
    lowest and highest value of each quantity.

    >>> {name: tuple(t.shape) for name, t in new_statistics(3, 2).items()}["low"]
    (2, 4, 3)
    """
    acc, q = stat_dtype(torch.device("cpu")), len(QUANTITIES)
    return {
        "sums": torch.zeros(phases, len(ROWS), columns, dtype=acc),
        "ema_acc": torch.zeros(phases, q, columns, dtype=acc),
        "ema_norm": torch.zeros(phases, columns, dtype=acc),
        "low": torch.full((phases, q, columns), math.inf, dtype=acc),
        "high": torch.full((phases, q, columns), -math.inf, dtype=acc),
    }


class CallInputs(NamedTuple):
    """The inputs of one call, for the probe: ``pred``, ``target`` and the keyword inputs."""

    pred: Any
    target: Any
    inputs: dict


class PendingRows:
    """What eager calls leave between folds, and the count of training calls.

    ``rows``: ``(values and total, weights)`` of calls not folded yet, all of phase
    ``phase`` (0 training, 1 validation) and on ``device``, the statistics' device.
    ``step``: the stored step of the last call (sink rows are labelled with it). Calls
    from several threads (``nn.DataParallel``) share this; the lock is re-entrant, so a
    call that fills the batch folds it under the same lock.
    """

    __slots__ = ("rows", "phase", "calls", "device", "step", "lock")

    def __init__(self, calls: int = 0, device: torch.device | None = None) -> None:
        self.rows: list[tuple[Tensor, Tensor]] = []
        self.phase = 0
        self.calls = calls  # training calls: the cadence of the probe and the sinks
        self.device = device if device is not None else torch.device("cpu")
        self.step: Tensor | None = None
        self.lock = threading.RLock()

    def __getstate__(self):
        return (self.calls, self.device)

    def __setstate__(self, state) -> None:
        self.__init__(*state)


def stack_rows(pending: Sequence[tuple[Tensor, Tensor]], dtype: torch.dtype) -> Tensor:
    """The ``(n, 2C)`` rows of ``n`` pending calls, in ``dtype``.

    >>> w = torch.tensor([0.5])
    >>> stack_rows([(torch.tensor([2.0, 1.0]), w), (torch.tensor([4.0, 2.0]), w)], torch.float64)
    tensor([[2.0000, 1.0000, 0.5000, 1.0000],
            [4.0000, 2.0000, 0.5000, 1.0000]], dtype=torch.float64)
    """
    values = torch.stack([row for row, _ in pending]).to(dtype)
    n = values.shape[0]
    first = pending[0][1]
    if all(w is first for _, w in pending):  # constant weights: the same tensor every call
        weights = first.to(values.device, dtype).expand(n, -1)
    else:
        weights = torch.stack([w for _, w in pending]).to(values.device, dtype)
    return torch.cat([values, weights, values.new_ones(n, 1)], 1)


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


def fold_row(row: Tensor, weights: Tensor, leaf: Tensor, beta: float) -> Increment:
    """``fold_rows`` of one call, from its ``row`` ``[raw (K), total]`` and ``weights`` (K,).

    With one row the cumulative counts are the finite mask itself, so there is no cumsum and
    no power: under ``torch.compile`` this is one fused kernel with few buffers, which is
    what keeps monitoring cheap there (see BENCHMARKS.md).

    >>> leaf = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    >>> one = fold_row(torch.tensor([2.0, 8.0, 3.0]), torch.tensor([0.5, 0.25]), leaf, 0.9)
    >>> [round(x, 4) for x in one.sums[3, :2].tolist()]
    [0.3333, 0.6667]
    """
    acc, c = leaf.dtype, leaf.numel()
    r = row.to(acc)
    w = torch.cat([weights.to(acc), r.new_ones(c - weights.numel())])
    x = r * w
    fin = torch.isfinite(x)
    a = torch.where(fin, x.abs(), 0)
    share = a / (a @ leaf).clamp_min(torch.finfo(acc).tiny)
    vals = torch.stack([r, w, x, share])  # (Q, C)
    clean = torch.where(fin, vals, 0)
    count = fin.to(acc)
    gain = count * (1 - beta)
    sums = torch.cat([clean, count[None], torch.ones_like(count)[None]])
    return Increment(
        sums,
        torch.pow(beta, count),
        gain * clean,
        gain,
        torch.where(fin, vals, math.inf),
        torch.where(fin, vals, -math.inf),
    )


def ratio(num: float, den: float) -> float:
    """``num / den``, NaN when nothing was counted."""
    return num / den if den > 0 else math.nan


def _grad_norm(value: Any, wrt: list[Tensor], dtype: torch.dtype, device) -> Tensor:
    if not isinstance(value, Tensor) or not value.requires_grad:
        return torch.zeros((), dtype=dtype, device=device)
    grads = torch.autograd.grad(value, wrt, retain_graph=True, allow_unused=True)
    norms = [torch.linalg.vector_norm(g.to(dtype)) for g in grads if g is not None]
    if not norms:
        return torch.zeros((), dtype=dtype, device=device)
    return torch.linalg.vector_norm(torch.stack(norms)).to(device)


def probe_settings(every: int, inputs: Sequence[str], inputs_read: frozenset | None) -> tuple[int, tuple]:
    """``Monitor.probe``'s arguments checked: ``every >= 0``, and inputs the program reads.

    >>> probe_settings(5, ["pred"], frozenset({"pred", "target"}))
    (5, ('pred',))
    """
    if isinstance(every, bool) or not isinstance(every, Integral) or every < 0:
        raise LossDSLError(f"probe(every={every!r}): every must be a whole number >= 0", hint="0 turns the probe off")
    inputs = (inputs,) if isinstance(inputs, str) else inputs  # one name, not its letters
    if not isinstance(inputs, Sequence) or not all(isinstance(n, str) for n in inputs):
        raise LossDSLError(f"probe(inputs={inputs!r}): inputs are names of inputs", hint="e.g. inputs=('pred',)")
    known = {"pred", "target"} | set(inputs if inputs_read is None else inputs_read)
    unknown = [n for n in inputs if n not in known]
    if unknown:
        raise LossDSLError(
            f"probe(inputs=...): no term reads the input {unknown[0]!r}",
            hint=did_you_mean(unknown[0], known) or "inputs: " + ", ".join(sorted(known)),
        )
    return int(every), tuple(inputs)


def probed_inputs(inputs: CallInputs, names: Sequence[str], values: Sequence) -> list[Tensor]:
    """The inputs named ``names`` that require grad; none when no value has a graph to probe
    (the inputs do not require grad, or the call ran under ``no_grad``).

    >>> x = torch.ones(2, requires_grad=True)
    >>> len(probed_inputs(CallInputs(x, torch.ones(2), {}), ["pred", "target"], [x.sum()]))
    1
    """
    named = {"pred": inputs.pred, "target": inputs.target, **inputs.inputs}
    wrt = [t for t in (named.get(n) for n in names) if isinstance(t, Tensor) and t.requires_grad]
    if not any(isinstance(v, Tensor) and v.requires_grad for v in values):
        return []
    return wrt


def probe_norms(values: Sequence, weights: Tensor, wrt: list[Tensor], dtype: torch.dtype, device) -> Tensor:
    """``(2, K)``: the norm of the gradient of each weighted value with respect to ``wrt``
    (0 where it is not finite), and 1 where it is finite.

    ``torch.autograd.grad(..., retain_graph=True)`` with ``wrt`` only: no ``.grad`` of a
    parameter changes, and one a non-leaf input retains is put back.

    >>> x = torch.tensor([3.0, 4.0], requires_grad=True)
    >>> probe_norms([(x * x).sum() / 2], torch.tensor([2.0]), [x], torch.float64, "cpu")
    tensor([[10.],
            [ 1.]], dtype=torch.float64)
    """
    kept = [(t, t.grad) for t in wrt if t.retains_grad]
    norms = torch.stack([_grad_norm(v, wrt, dtype, device) for v in values])
    for t, grad in kept:
        t.grad = grad
    weighted = norms * weights.abs().to(device, dtype)  # the norm of a weighted value: |w| times its own
    finite = torch.isfinite(weighted)
    return torch.stack([torch.where(finite, weighted, 0), finite.to(dtype)])


def all_reduce(parts: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """One all-reduce per operation over the process group, when there is one: sums and
    counts add up, ``low``/``high`` take min/max and the step its max."""
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
