"""The one pass of the fused path: every term's value and ``d total / d pred`` together.

With ``e = pred - target`` each fusable term is a function of ``e`` alone, so a chunk of the
data needs only ``e``, a few running sums and a few elementwise buffers. The value of each
term is a fixed linear map of sums over all chunks; the gradient is assembled per chunk from
``e``, ``sign(e)``, ``clamp(e, -delta, delta)``, ``e / sqrt(e^2 + eps^2)`` and ``sigmoid(2e)``.

>>> import torch
>>> from lossdsl.fused_pass import Part, StatPlan
>>> plan = StatPlan([Part("mse", 0.0, False)], [1.0], 4, torch.device("cpu"), torch.float64)
>>> plan.lin    # d mean(e^2) / de = 2 e / N
0.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Part", "StatPlan", "value_and_grad", "sparse_map", "CHUNK"]

_LOG2 = math.log(2.0)
# Elements per chunk on the CPU. Large enough that torch spreads each op of a chunk over its
# threads and the ~25 ops per chunk are few dispatches in all, small enough that the chunk's
# buffers (about six) stay a few MiB whatever the input's size. Measured at 2^23 elements
# on 2 and on 1 threads: 2^18 was 3-4x faster than eager; 2^15-element chunks spread over
# Python threads were 1.4-1.7x, and a chunk of 1/8 of a small input was slower than eager.
CHUNK = 1 << 18
# On an accelerator a chunk only bounds the temporaries (a few times the chunk's bytes).
DEVICE_CHUNK = 1 << 22


@dataclass(frozen=True)
class Part:
    """One distinct elementwise term: ``kind``, its curve parameter and its reduction."""

    kind: str
    param: float
    summed: bool  # reduction="sum" (else the mean)


def _accumulate_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    # chunk sums are added up in float64 where the device has it
    return torch.float64 if device.type in ("cpu", "cuda") else dtype


def value_and_grad(pred: Tensor, target: Tensor, program, need_grad: bool):
    """Every part's value (1-d, float64 where available) and ``d total / d pred`` (or None).

    ``pred`` and ``target`` have the same shape, dtype and device; ``program`` gives the
    :class:`StatPlan` for a size (``FusedProgram.stat_plan``). Half precision is computed in
    float32; the gradient is returned in ``pred``'s dtype and shape.
    """
    n = pred.numel()
    half = pred.dtype in (torch.float16, torch.bfloat16)
    dtype = torch.float32 if half else pred.dtype
    device = pred.device
    plan = program.stat_plan(n, device, _accumulate_dtype(device, dtype))
    p, t = pred.detach().reshape(-1), target.detach().reshape(-1)
    chunk = CHUNK if device.type == "cpu" else DEVICE_CHUNK
    rows = -(-n // chunk)
    stats = torch.empty((rows, plan.size), dtype=dtype, device=device)
    grad = torch.empty(n, dtype=pred.dtype, device=device) if need_grad else None
    width = min(chunk, n)
    bufs = [torch.empty(width, dtype=dtype, device=device) for _ in range(plan.buffers)]
    for row in range(rows):
        start = row * chunk
        stop = min(start + chunk, n)
        cut = [b[: stop - start] for b in bufs]
        e = cut[0]
        if half:
            torch.sub(p[start:stop].to(dtype), t[start:stop].to(dtype), out=e)
        else:
            torch.sub(p[start:stop], t[start:stop], out=e)
        g = None if grad is None else cut[1] if half else grad[start:stop]
        plan.run(e, cut[2:], stats[row], g)
        if half and grad is not None:
            grad[start:stop].copy_(g)
    totals = stats.sum(0, dtype=plan.recipe.dtype)
    values = sparse_map(plan.recipe, plan.recipe_unused, totals)
    if plan.constant is not None:
        values = values + plan.constant
    return values, None if grad is None else grad.view(pred.shape)


def sparse_map(matrix: Tensor, unused: Tensor, vector: Tensor) -> Tensor:
    """``matrix @ vector`` where a zero entry of ``matrix`` (``unused``) adds nothing even to
    an infinite entry of ``vector``: an overflowing ``sum e^2`` makes mse inf, not every other
    term NaN through ``0 * inf``.

    >>> m = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> sparse_map(m, m == 0, torch.tensor([float("inf"), 3.0])).tolist()
    [inf, 6.0]
    """
    return (matrix * vector).masked_fill_(unused, 0.0).sum(-1)


class StatPlan:
    """Which per-chunk sums the parts need, and how a chunk's gradient is assembled.

    Sums: ``S`` = sum(e), ``A`` = sum|e| (as ``dot(sign(e), e)``), ``Q`` = sum e^2, per
    huber-like part ``dot(c, e)`` and ``dot(c, c)`` with ``c = clamp(e, -delta, delta)``
    (huber = ``c (e - c/2)``), per charbonnier ``sum sqrt(e^2 + eps^2)``, for log_cosh
    ``L`` = sum log(max(s, 1 - s)) with ``s = sigmoid(2e)``. Each part's value is a fixed
    linear map of the summed statistics: ``recipe @ sums + constant``.

    The ops are picked for speed on the CPU: ``sigmoid`` is several times faster than
    ``tanh`` and ``exp`` there, so log_cosh uses ``tanh e = 2 s - 1`` and
    ``log cosh e = |e| - log(max(s, 1 - s)) - log 2``.
    """

    def __init__(self, parts, coeffs, n: int, device: torch.device, dtype: torch.dtype) -> None:
        slots: dict[tuple, int] = {}
        slot = lambda key: slots.setdefault(key, len(slots))  # noqa: E731
        # gradient coefficients per element (means already divided by N)
        self.lin = 0.0  # times e
        self.sign = 0.0  # times sign(e)
        self.const = 0.0
        self.clamps: dict[float, float] = {}  # delta -> coefficient of clamp(e, -delta, delta)
        self.roots: dict[float, float] = {}  # eps -> coefficient of e / sqrt(e^2 + eps^2)
        self.sigmoid = 0.0  # times sigmoid(2e)
        recipes, constants = [], []
        for part, coeff in zip(parts, coeffs):
            scale = 1.0 if part.summed else 1.0 / n
            w = coeff * scale
            k, a = part.kind, part.param
            if k == "mse":
                recipe, self.lin = [(slot(("Q",)), 1.0)], self.lin + 2.0 * w
            elif k == "mae":
                recipe, self.sign = [(slot(("A",)), 1.0)], self.sign + w
            elif k in ("huber", "smooth_l1"):
                # smooth_l1(beta) = huber(delta=beta) / beta
                f = 1.0 if k == "huber" else 1.0 / a
                recipe = [(slot(("ce", a)), f), (slot(("cc", a)), -0.5 * f)]
                self.clamps[a] = self.clamps.get(a, 0.0) + w * f
            elif k == "charbonnier":
                recipe = [(slot(("root", a)), 1.0)]
                self.roots[a] = self.roots.get(a, 0.0) + w
            elif k == "log_cosh":
                # value |e| - log(max(s, 1 - s)) - log 2; derivative tanh e = 2 s - 1
                recipe = [(slot(("A",)), 1.0), (slot(("L",)), -1.0)]
                self.sigmoid += 2.0 * w
                self.const -= w
            else:  # quantile: max(q u, (q-1) u) with u = -e equals |e|/2 + (1/2 - q) e
                recipe = [(slot(("S",)), 0.5 - a), (slot(("A",)), 0.5)]
                self.sign += 0.5 * w
                self.const += (0.5 - a) * w
            recipes.append([(s, f * scale) for s, f in recipe])
            constants.append(-_LOG2 * n * scale if k == "log_cosh" else 0.0)
        self.slots = slots
        self.size = max(len(slots), 1)
        matrix = [[0.0] * self.size for _ in recipes]
        for row, recipe in zip(matrix, recipes):
            for s, f in recipe:
                row[s] += f
        self.recipe = torch.tensor(matrix, dtype=dtype, device=device)
        self.recipe_unused = self.recipe == 0
        self.constant = torch.tensor(constants, dtype=dtype, device=device) if any(constants) else None
        # e, a float32 gradient chunk (half inputs), two scratch buffers, a clamp per delta
        self.buffers = 4 + len(self.clamps)

    def run(self, e: Tensor, scratch: list[Tensor], out: Tensor, g: Tensor | None) -> None:
        """Fill ``out`` (this chunk's sums) and ``g`` (this chunk's gradient) from ``e``."""
        slots = self.slots
        work, work2, clamps = scratch[0], scratch[1], scratch[2:]
        grad = g is not None
        if grad:
            if self.lin:
                torch.mul(e, self.lin, out=g)
            else:
                g.zero_()
            if self.const:
                g.add_(self.const)
        if ("S",) in slots:
            torch.sum(e, 0, out=out[slots[("S",)]])
        if ("Q",) in slots:
            torch.dot(e, e, out=out[slots[("Q",)]])
        if ("A",) in slots or (grad and self.sign):
            torch.sign(e, out=work)
            if ("A",) in slots:
                torch.dot(work, e, out=out[slots[("A",)]])
            if grad and self.sign:
                g.add_(work, alpha=self.sign)
        for c, (delta, coeff) in zip(clamps, self.clamps.items()):
            torch.clamp(e, -delta, delta, out=c)
            torch.dot(c, e, out=out[slots[("ce", delta)]])
            torch.dot(c, c, out=out[slots[("cc", delta)]])
            if grad:
                g.add_(c, alpha=coeff)
        for eps, coeff in self.roots.items():
            torch.mul(e, e, out=work).add_(eps * eps)
            torch.rsqrt(work, out=work2)
            torch.dot(work, work2, out=out[slots[("root", eps)]])  # sum q / sqrt(q)
            if grad:
                g.addcmul_(e, work2, value=coeff)
        if ("L",) in slots:
            torch.sigmoid(torch.mul(e, 2.0, out=work), out=work)
            if grad:
                g.add_(work, alpha=self.sigmoid)
            # max(s, 1 - s) = 1/2 + |s - 1/2|
            work.sub_(0.5).abs_().add_(0.5).log_()
            torch.sum(work, 0, out=out[slots[("L",)]])
