"""Effective weights ``d total / d term``: a reverse sweep over the plan, done once, here.

The sweep runs on polynomials instead of numbers. Each operation's local derivative is
either a constant (``sum``, ``neg``, a constant factor of a product) or a *factor* read from
the values of the call: another operand of a product (``mse*mae``), a balancer's weight, a
schedule's value, or the local derivative of ``log``/``exp``/... Chaining them gives every
weight as ``offset + sum_j c_j * m_j`` with monomials ``m_j``, products of factors. At run
time :class:`WeightProgram` evaluates the few factors and one matrix-vector product, which
costs a handful of tensor operations however the program is written. When no monomial is
left (``0.7*a + 0.3*b``) the weights are the offsets, folded at compile time.

>>> import lossdsl
>>> crit = lossdsl.compile("0.7*huber + 0.3*linear(0, 1, steps=10)*mae")
>>> crit._plan.weight_program.monomials      # one monomial: the schedule's value
((0,),)
>>> crit._plan.weight_program.matrix
((0.0,), (0.3,))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import ops

__all__ = ["WeightProgram", "prepare_weights", "sweep", "power", "MAX_MONOMIALS", "MAX_DEGREE"]

# A program whose weights need more monomials than this (products of many sums of losses,
# which nobody writes), or monomials of more factors than MAX_DEGREE (products of many
# different losses, or of a loss with itself through many levels of bindings), keeps the
# plain numeric sweep per call. The bounds keep each step of the symbolic sweep a bounded
# amount of work, so the sweep, and its bail-out, are linear in the size of the program;
# and they bound a call's cost of the monomials (at most 64 x 16 multiplications), where
# the numeric sweep costs a few operations per operand.
MAX_MONOMIALS = 64
MAX_DEGREE = 16

Poly = dict  # {tuple of factor indices (sorted): coefficient}


@dataclass(frozen=True)
class WeightProgram:
    """``weights = matrix @ [m_1, ..., m_J] + offset``, ``m_j`` the product of its factors.

    ``factors``: ``("slot", s, power)`` (the call's value in slot ``s`` to an integer power),
    ``("balancer", b, k)`` (balancer ``b``'s weight of its argument ``k``) or
    ``("partial", s, k)`` (the local derivative of operation ``s`` by its argument ``k``).
    """

    factors: tuple[tuple, ...]
    monomials: tuple[tuple[int, ...], ...]
    matrix: tuple[tuple[float, ...], ...]
    offset: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.monomials)
        identity = len(self.matrix) == n and all(
            row[j] == (1.0 if i == j else 0.0) for i, row in enumerate(self.matrix) for j in range(n)
        )
        # direct: the weights are the monomials themselves; whole_balancer: they are one
        # balancer's weight vector, in argument order (``balance(a, b)`` at the root)
        object.__setattr__(self, "direct", identity and not any(self.offset))
        in_order = tuple(("balancer", 0, k) for k in range(n))
        single = tuple((j,) for j in range(n))
        object.__setattr__(
            self, "whole_balancer", self.direct and self.factors == in_order and self.monomials == single
        )

    def tensors(self, dtype=torch.float32, device=None) -> tuple[Tensor, Tensor]:
        """(matrix, offset) as tensors of ``dtype``, made from the Python numbers (so a
        float64 loss gets 0.7, not float32's 0.699999988)."""
        return (
            torch.tensor(self.matrix, dtype=dtype, device=device).reshape(len(self.offset), -1),
            torch.tensor(self.offset, dtype=dtype, device=device),
        )

    def on_host(self, monomials: tuple[float, ...]) -> list[float]:
        """The weights from monomials that are Python floats (schedules read on the host).
        A zero coefficient adds nothing, even to an infinite monomial (not ``0 * inf``)."""
        return [o + sum(c * m for c, m in zip(row, monomials) if c) for o, row in zip(self.offset, self.matrix)]

    def monomial_values(
        self, plan, vals: list, balancer_weights: list, dtype: torch.dtype = torch.float32
    ) -> Tensor | tuple[float, ...]:
        """The monomials of this call as one (J,) tensor of ``dtype``, from detached values,
        or as a tuple of Python floats when every factor is one (the weights then follow on
        the host: :meth:`on_host`)."""
        if self.whole_balancer:
            w = balancer_weights[0]
            return w if w.dtype == dtype else w.to(dtype)
        values = []
        partials: dict[int, list] = {}
        for kind, a, b in self.factors:
            if kind == "slot":
                v = vals[a]
                v = v.detach() if isinstance(v, Tensor) else v
                values.append(power(v, b))
            elif kind == "balancer":
                values.append(balancer_weights[a][b])
            else:
                local = partials.get(a)
                if local is None:
                    instr = plan.instrs[a]
                    args = [_detached(vals[s]) for s in instr.args]
                    local = partials[a] = ops.partials(instr.fn, args, _detached(vals[a]), instr.params)
                values.append(local[b])
        out = []
        for mono in self.monomials:
            v = values[mono[0]]
            for i in mono[1:]:
                v = v * values[i]
            out.append(v)
        if not any(isinstance(v, Tensor) for v in out):
            return tuple(out)
        return _as_vector(out, dtype)


def power(v: Any, n: int) -> Any:
    """``v ** n`` for a tensor or a Python float (a schedule's value read on the host), where
    a float's overflow or ``0.0 ** -n`` is infinity as tensor arithmetic gives, not an error.

    >>> power(2.0, 3), power(10.0, 400), power(-0.0, -1)
    (8.0, inf, -inf)
    """
    if n == 1 or isinstance(v, Tensor):
        return v if n == 1 else v**n
    try:
        return v**n
    except (OverflowError, ZeroDivisionError):
        return math.copysign(math.inf, v) if n % 2 else math.inf


def _detached(v: Any) -> Any:
    return v.detach() if isinstance(v, Tensor) else v


def _as_vector(values: list, dtype: torch.dtype) -> Tensor:
    device = next((v.device for v in values if isinstance(v, Tensor)), None)
    parts = [
        v.reshape(()).to(dtype) if isinstance(v, Tensor) else torch.tensor(float(v), dtype=dtype, device=device)
        for v in values
    ]
    return torch.stack(parts)


def prepare_weights(plan) -> None:
    """Fill ``plan.adjoint_order`` and either ``plan.constant_weights`` (folded) or
    ``plan.weight_program``; a program beyond :data:`MAX_MONOMIALS` gets neither and keeps
    the numeric :func:`sweep` per call."""
    needed = set(plan.logged_slots)
    feeds = {instr.slot: set(instr.args) for instr in plan.instrs}
    reaches: dict[int, bool] = {}
    for instr in plan.instrs:  # slots are topologically ordered
        reaches[instr.slot] = instr.slot in needed or any(reaches[a] for a in feeds[instr.slot])
    plan.adjoint_order = [i for i in reversed(plan.instrs) if reaches[i.slot] and i.args]
    program = _symbolic_sweep(plan)
    if program is None:
        return
    if not program.monomials:
        plan.constant_weights = list(program.offset)
    else:
        plan.weight_program = program


class _TooLarge(Exception):
    pass


def _symbolic_sweep(plan) -> WeightProgram | None:
    factors: dict[tuple, int] = {}

    def factor(key: tuple) -> int:
        return factors.setdefault(key, len(factors))

    adjoint: dict[int, Poly] = {plan.root: {(): 1.0}}
    try:
        for instr in plan.adjoint_order:
            a = adjoint.get(instr.slot)
            if not a:
                continue
            for s, d in zip(instr.args, _local_partials(instr, plan.const_slots, factor)):
                d = _checked(d)
                if s in plan.const_slots or not d:
                    continue
                adjoint[s] = _add(adjoint.get(s, {}), _multiply(a, d))
    except _TooLarge:
        return None
    polys = [adjoint.get(s, {}) for s in plan.logged_slots]
    monomials = sorted({m for p in polys for m in p if m})
    column = {m: j for j, m in enumerate(monomials)}
    matrix = []
    for p in polys:
        row = [0.0] * len(monomials)
        for m, c in p.items():
            if m:
                row[column[m]] += c
        matrix.append(tuple(row))
    return WeightProgram(
        factors=tuple(sorted(factors, key=factors.get)),
        monomials=tuple(monomials),
        matrix=tuple(matrix),
        offset=tuple(float(p.get((), 0.0)) for p in polys),
    )


def _local_partials(instr, const_slots: dict, factor) -> list[Poly]:
    """``d out / d arg`` of one instruction, as polynomials over the call's factors."""
    if instr.balancer is not None:
        return [{(factor(("balancer", instr.balancer, k)),): 1.0} for k in range(len(instr.args))]
    if instr.fn in ops.CONSTANT_PARTIALS:
        return [{(): float(d)} for d in ops.partials(instr.fn, [0.0] * len(instr.args), 0.0, instr.params)]
    if instr.fn == "product":
        return _product_partials(instr, const_slots, factor)
    # log, exp, sqrt, pow, abs, min, max, clamp: evaluated from the values at run time
    return [{(factor(("partial", instr.slot, k)),): 1.0} for k in range(len(instr.args))]


def _product_partials(instr, const_slots: dict, factor) -> list[Poly]:
    """``d product / d operand`` for each operand, in time linear in the operands.

    Equal operands are one value to a power: ``c * prod_s x_s^p_s`` (``p_s`` counts ``*x_s``
    minus ``/x_s``). An operand at slot ``s`` then has the partial ``c * x_s^(p_s - 1) *
    prod_(t != s) x_t^p_t``, negated where it divides (``d(1/x)/dx = -1/x^2``): one monomial
    per distinct slot, shared by its operands.
    """
    ops_ = ("*",) + tuple(instr.params["ops"])
    coeff = 1.0
    power: dict[int, int] = {}  # slot -> p_s
    for s, op in zip(instr.args, ops_):
        if s in const_slots:
            coeff = coeff / const_slots[s] if op == "/" else coeff * const_slots[s]
        else:
            power[s] = power.get(s, 0) + (-1 if op == "/" else 1)
    if len(power) > MAX_DEGREE or not coeff:
        # beyond the size of a monomial: the numeric sweep takes it (linear too)
        if coeff:
            raise _TooLarge
        return [{} for _ in instr.args]
    # a slot's whole power appears in the other slots' partials only (none when it is alone)
    whole = {s: factor(("slot", s, p)) for s, p in power.items() if p} if len(power) > 1 else {}
    by_slot: dict[int, Poly] = {}
    for s, p in power.items():
        mono = [i for t, i in whole.items() if t != s]
        if p != 1:
            mono.append(factor(("slot", s, p - 1)))
        by_slot[s] = {tuple(sorted(mono)): coeff}
    negated = {s: {m: -c for m, c in poly.items()} for s, poly in by_slot.items()}
    return [
        {} if s in const_slots else by_slot[s] if op == "*" else negated[s]
        for s, op in zip(instr.args, ops_)
    ]


def _multiply(p: Poly, q: Poly) -> Poly:
    out: Poly = {}
    for m1, c1 in p.items():
        for m2, c2 in q.items():
            m = tuple(sorted(m1 + m2))
            out[m] = out.get(m, 0.0) + c1 * c2
    return _checked(out)


def _add(p: Poly, q: Poly) -> Poly:
    out = dict(p)
    for m, c in q.items():
        out[m] = out.get(m, 0.0) + c
    return _checked(out)


def _checked(p: Poly) -> Poly:
    p = {m: c for m, c in p.items() if c != 0.0}
    if len(p) > MAX_MONOMIALS or any(len(m) > MAX_DEGREE for m in p):
        raise _TooLarge
    return p


def sweep(plan, vals, balancer_weights=None) -> list[Any]:
    """Reverse-mode derivative of the root with respect to every logged slot, numerically
    (the fallback for programs beyond :data:`MAX_MONOMIALS`)."""
    adjoint: dict[int, Any] = {plan.root: 1.0}
    for instr in plan.adjoint_order:
        a = adjoint.get(instr.slot)
        if a is None:
            continue
        if instr.balancer is not None:
            local = list(balancer_weights[instr.balancer])
        else:
            args = [vals[s] for s in instr.args]
            local = ops.partials(instr.fn, args, vals[instr.slot], instr.params)
        for s, d in zip(instr.args, local):
            if s in plan.const_slots:
                continue
            contribution = a * d
            adjoint[s] = adjoint[s] + contribution if s in adjoint else contribution
    return [adjoint.get(s, 0.0) for s in plan.logged_slots]
