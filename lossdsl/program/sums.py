"""Weighted sums of terms as one dot product: the one fast path of the program builder.

``0.4*huber + 0.2*mse + 0.1*mae + linear(0, 0.1, steps=1000)*temporal_diff`` is a sum of
terms, each times a number or a schedule. Written as is, it costs a multiplication per term
and an addition between them (and as many autograd nodes); as ``dot(w, stack(terms))`` it
costs two, however many terms there are. ``benchmarks/run.py``'s ``mixture`` measures the
difference. A sum qualifies when it has at least :data:`MIN_TERMS` addends and each is a loss
of the scalar top, alone or times a number or a schedule.

>>> import torch
>>> weighted_sum((0.5, 0.0), (1,), torch.tensor(2.0), torch.tensor(1.0), torch.tensor(3.0))
tensor(6.5000)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..language.schedules import Schedule
from ..resolve import ir
from ..runtime.precision import coefficient_vector

__all__ = ["MIN_TERMS", "addends", "weighted_sum"]

MIN_TERMS = 3


def _scale(node: ir.Node) -> tuple[Any, ir.Node] | None:
    """``(coefficient, term)`` of one addend: the coefficient a number or a schedule node."""
    if node.kind != "loss":
        return None
    if isinstance(node, ir.Call) and node.name == "multiply" and len(node.args) == 2:
        ops = dict(node.params)["ops"]
        first, second = node.args
        if ops == ("*",) and first.kind in ("const", "schedule") and second.kind == "loss":
            return (first.value if isinstance(first, ir.Const) else first), second
        return None
    if isinstance(node, ir.Call) and isinstance(node.fn, Schedule):
        return None
    return 1.0, node


def addends(node: ir.Call) -> list[tuple[Any, ir.Node]] | None:
    """The sum ``node`` as ``[(coefficient, term), ...]``, or None when it is not a weighted
    sum of losses worth one dot product. A watched term (adds 0) is left out."""
    if node.kind != "loss" or len(node.args) < MIN_TERMS:
        return None
    out = []
    for sign, arg in zip(dict(node.params)["signs"], node.args):
        if isinstance(arg, ir.Call) and arg.name == "watch":
            continue
        scaled = _scale(arg)
        if scaled is None:
            return None
        coefficient, term = scaled
        if sign < 0:
            coefficient = -coefficient if isinstance(coefficient, float) else ("neg", coefficient)
        out.append((coefficient, term))
    return out if len(out) >= MIN_TERMS else None


def weighted_sum(numbers: tuple[float, ...], places: tuple[int, ...], *rest: Any) -> Tensor:
    """``dot(w, stack(terms))``: ``numbers`` the constant coefficients, ``places`` where the
    coefficients computed per call (the first ``len(places)`` of ``rest``) go; the terms
    follow. The coefficients are made in the terms' dtype."""
    dynamic, terms = rest[: len(places)], rest[len(places):]
    stacked = torch.stack(terms)
    coefficients = coefficient_vector(stacked, numbers, places, dynamic)
    return torch.dot(coefficients, stacked)
