"""The total of a program that is a weighted sum of its terms, as one dot product.

``0.4*huber + 0.2*mse + linear(0, 0.1, steps=1000)*temporal_diff`` is
``sum_k w_k * term_k + offset``, where ``w_k`` are the terms' effective weights: constants, or
numbers that depend on the step alone. For such a program ``Loss.forward`` runs the terms
and the step-dependent numbers only and adds the terms up as ``dot(w, [term_1, ...,
term_K])``: two tensor operations and two autograd nodes, where the program as written takes
a multiplication and an addition per term.

>>> import lossdsl
>>> crit = lossdsl.compile("0.5*mse + mae/4 + linear(0, 1, steps=10)*huber + 1")
>>> lin = crit._plan.linear
>>> len(lin.terms), lin.offset
(3, 1.0)
>>> lossdsl.compile("log(mse) + mae")._plan.linear is None    # not a weighted sum
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import ops

__all__ = ["LinearTotal", "linear_total"]

_BAD = "bad"


@dataclass(frozen=True)
class LinearTotal:
    """``total = dot(weights[weight_index], [vals[s] for s in terms]) + offset``.

    ``runs``: the slots a call computes (the terms, and the numbers the weights are made
    of), in order; ``step_dependent``: whether any weight follows the step.
    """

    runs: tuple[int, ...]
    terms: tuple[int, ...]
    weight_index: tuple[int, ...]
    offset: float
    step_dependent: bool


def linear_total(plan) -> LinearTotal | None:
    """The weighted-sum form of ``plan``, or None when its total is not one."""
    if plan.balancers or plan.root in plan.const_slots:
        return None
    if plan.constant_weights is None and plan.weight_program is None:
        return None  # weights beyond the weight program's size: the plan's operations run
    if any(not hasattr(item, "spec") for item in plan.logged_items):
        return None  # named composites are logged: their operations must run anyway
    state: dict[int, str] = {}
    for instr in plan.instrs:
        state[instr.slot] = _state(instr, [state[a] for a in instr.args])
    if state[plan.root] != "linear":
        return None
    offset = _offset(plan)
    if offset is None or not math.isfinite(offset):
        return None  # an infinite weight (1e300*1e300*mse): inf*0 makes no offset
    feeding = _feeding(plan)
    terms = tuple(s for s in plan.logged_slots if s in feeding)
    position = {s: i for i, s in reversed(list(enumerate(plan.logged_slots)))}  # first place
    runs = tuple(i.slot for i in plan.instrs if i.kind == "term" or state[i.slot] == "scalar")
    return LinearTotal(
        runs=runs,
        terms=terms,
        weight_index=tuple(position[s] for s in terms),
        offset=offset,
        step_dependent=any(state[s] == "scalar" for s in runs),
    )


def _state(instr, args: list[str]) -> str:
    """``const``, ``scalar`` (depends on the step only), ``linear`` (a weighted sum of terms
    plus a constant) or bad."""
    if instr.kind in ("const", "schedule", "term"):
        return {"const": "const", "schedule": "scalar", "term": "linear"}[instr.kind]
    if instr.kind == "balance" or _BAD in args:
        return _BAD
    linear = args.count("linear")
    if not linear:
        return "const" if all(a == "const" for a in args) else "scalar"
    fn = instr.fn
    if fn in ("named", "neg"):
        return "linear"
    if fn == "sum":  # a step-dependent addend would make the offset vary
        return "linear" if "scalar" not in args else _BAD
    if fn == "product" and linear == 1:
        ops_ = ("*",) + tuple(instr.params["ops"])
        return "linear" if ops_[args.index("linear")] == "*" else _BAD
    return _BAD


def _offset(plan) -> float | None:
    """The total with every term 0 (the schedules at 1: they only multiply terms here)."""
    vals: list = []
    try:
        for instr in plan.instrs:
            if instr.kind == "const":
                vals.append(plan.const_slots[instr.slot])
            elif instr.kind in ("term", "schedule"):
                vals.append(0.0 if instr.kind == "term" else 1.0)
            else:
                vals.append(ops.apply(instr.fn, [vals[a] for a in instr.args], instr.params))
        return float(vals[plan.root])
    except (ArithmeticError, ValueError):
        return None


def _feeding(plan) -> set[int]:
    """The slots the total depends on (a watched term does not feed it)."""
    seen, stack = set(), [plan.root]
    while stack:
        slot = stack.pop()
        if slot not in seen:
            seen.add(slot)
            stack.extend(plan.instrs[slot].args)
    return seen
