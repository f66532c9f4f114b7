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

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import ops

__all__ = ["WeightProgram", "prepare_weights", "sweep", "MAX_MONOMIALS"]

# A program whose weights need more monomials than this (products of many sums of losses,
# which nobody writes) keeps the plain numeric sweep per call.
MAX_MONOMIALS = 64

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
                # on the host, 0**-1 is inf as for tensors, not ZeroDivisionError
                values.append(v if b == 1 else ops.apply("pow", [v, b], {}))
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

    def factor(key: tuple) -> Poly:
        return {(factors.setdefault(key, len(factors)),): 1.0}

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
        return [factor(("balancer", instr.balancer, k)) for k in range(len(instr.args))]
    if instr.fn in ops.CONSTANT_PARTIALS:
        return [{(): float(d)} for d in ops.partials(instr.fn, [0.0] * len(instr.args), 0.0, instr.params)]
    if instr.fn == "product":
        return _product_partials(instr, const_slots, factor)
    # log, exp, sqrt, pow, abs, min, max, clamp: evaluated from the values at run time
    return [factor(("partial", instr.slot, k)) for k in range(len(instr.args))]


def _product_partials(instr, const_slots: dict, factor) -> list[Poly]:
    ops_ = ("*",) + tuple(instr.params["ops"])
    out = []
    for i, (si, op_i) in enumerate(zip(instr.args, ops_)):
        coeff, keys = 1.0, []
        for j, (sj, op_j) in enumerate(zip(instr.args, ops_)):
            divide = op_j == "/"
            if j == i:
                if divide:  # d(1/x)/dx = -1/x^2
                    coeff, keys = -coeff, keys + [("slot", sj, -2)]
            elif sj in const_slots:
                c = const_slots[sj]
                coeff = coeff / c if divide else coeff * c
            else:
                keys.append(("slot", sj, -1 if divide else 1))
        poly: Poly = {(): coeff}
        for key in keys:
            poly = _multiply(poly, factor(key))
        out.append(poly)
    return out


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
    if len(p) > MAX_MONOMIALS:
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
