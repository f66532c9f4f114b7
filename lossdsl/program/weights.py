"""Effective weights ``d total / d term``, derived symbolically over the scalar top (§3.1, §9).

One reverse sweep over the IR, parents before children: each operation passes its adjoint
to its operands through the derivative rule of its row in the function table (a balancer
through the weights it computed). The rules are written with the algebra helpers, so numbers
fold while the program is built: ``0.7*huber + 0.3*mae`` ends with the constants 0.7 and 0.3
and no operation per call, and ``log(mse) + mae`` adds one division (``1 / mse``, detached)
to the graph. The sweep stops where the scalar top ends: at terms, at calls that reduce a
tensor (inline terms), and at numbers and schedules, which have no weight.

>>> import lossdsl
>>> crit = lossdsl.compile("0.7*huber + 0.3*linear(0, 1, steps=10)*mae")
>>> crit.program.constant_weights is None      # mae's weight follows the schedule
True
"""

from __future__ import annotations

from typing import Any

from ..language import algebra as A
from ..resolve import ir

__all__ = ["sweep", "whole_vector"]


def _leaf(node: ir.Node) -> bool:
    """Where the scalar top ends: a term, or a call whose operands include a tensor."""
    if isinstance(node, ir.Term):
        return True
    return isinstance(node, ir.Call) and any(a.kind == "tensor" for a in node.args)


def sweep(emitter: Any, nodes: list[ir.Node], root: ir.Node) -> list[Any]:
    """The effective weight of every logged item (a number, or a node of the graph)."""
    detached: dict[int, Any] = {}

    def seen(node: ir.Node, numbers_safe: bool) -> Any:
        # a value as a derivative rule reads it: without gradient (one detach per value); a
        # schedule's may stay a Python number where the rule only adds and multiplies
        if node.kind == "schedule" and not numbers_safe:
            v = emitter.scalar(node)
        else:
            v = emitter.value[id(node)]
        if A.is_number(v):
            return v
        if id(v) not in detached:
            detached[id(v)] = emitter.call(_detach, (v,), name="seen")
        return detached[id(v)]

    adjoint: dict[int, Any] = {id(root): 1.0}
    for node in reversed(nodes):
        a = adjoint.get(id(node))
        if a is None or (A.is_number(a) and a == 0) or _leaf(node):
            continue
        if isinstance(node, ir.Named):
            partials = (1.0,)
        elif isinstance(node, ir.Balance):
            weights = emitter.balance_weights[id(node)]
            partials = tuple(emitter.call(_item, (weights, k), name="balance_weight") for k in range(len(node.args)))
        elif isinstance(node, ir.Call) and getattr(node.fn, "grad", None) is not None:
            params = dict(node.params)
            safe = node.name in ("add", "neg") or (node.name == "multiply" and "/" not in params["ops"])
            args = tuple(seen(x, safe) for x in node.args)
            partials = node.fn.grad(args, seen(node, safe), **params)
        else:  # schedules, comparisons, detach: no gradient flows through
            continue
        for child, partial in zip(node.children, partials):
            if child.kind not in ("loss",):
                continue  # numbers and schedules have no weight; tensors are past the top
            contribution = A.times(a, partial)
            key = id(child)
            adjoint[key] = contribution if key not in adjoint else A.plus(adjoint[key], contribution)
    return [adjoint.get(id(item.node), 0.0) for item in emitter.ir.logged]


def _detach(x: Any) -> Any:
    return x.detach() if hasattr(x, "detach") else x


def _item(weights: Any, k: int) -> Any:
    return weights[k]


def whole_vector(weights: list[Any]) -> Any:
    """The vector that holds ``weights`` as they are, in order, when they are the entries
    ``0..K-1`` of one balancer's weights (``balance(a, b)`` at the top); else None."""
    first = getattr(weights[0], "node", None) if weights else None
    if first is None or first.target is not _item:
        return None
    vector = first.args[0]
    for k, w in enumerate(weights):
        node = getattr(w, "node", None)
        if node is None or node.target is not _item or node.args != (vector, k):
            return None
    if len(weights) != getattr(vector, "meta", {}).get("entries", len(weights)):
        return None
    return w.tracer.proxy(vector) if hasattr(w, "tracer") else None
