"""Log names of the terms and named composites (DESIGN.md §4).

Binding names are the user's and stay as written (each binding is logged once); other terms
are named after their function, and repeats get ``_2``, ``_3``, ... in source order, skipping
names already taken.

>>> from lossdsl.resolve.ir import Const
>>> a, b, c = Const(1.0), Const(2.0), Const(3.0)
>>> [i.name for i in logged_items([("mse", a, False), ("mse", b, False), ("mse_2", c, True)], {"mse_2"})]
['mse', 'mse_3', 'mse_2']
"""

from __future__ import annotations

from typing import Iterable

from . import ir

__all__ = ["logged_items", "operand_names"]


def logged_items(order: Iterable[tuple[str, ir.Node, bool]], bindings: set[str]) -> tuple[ir.Logged, ...]:
    """``(label, node, named_by_binding)`` in source order -> unique :class:`~lossdsl.resolve.ir.Logged`."""
    order = list(order)
    taken = {label for label, _, named in order if named and label in bindings}
    counts: dict[str, int] = {}
    out = []
    for label, node, named in order:
        if named and label in bindings:
            out.append(ir.Logged(label, node))
            continue
        count = counts.get(label, 0) + 1
        name = label if count == 1 else f"{label}_{count}"
        while name in taken:
            count += 1
            name = f"{label}_{count}"
        counts[label] = count
        taken.add(name)
        out.append(ir.Logged(name, node))
    return tuple(out)


def operand_names(node: ir.Balance, logged: Iterable[ir.Logged]) -> list[str]:
    """The log name of each operand of a ``balance``: its own where it is logged (a term or a
    named composite), else the names of the logged terms inside it joined by ``+``."""
    by_node = {id(item.node): item.name for item in logged}
    names = []
    for k, arg in enumerate(node.args, 1):
        if id(arg) in by_node:
            names.append(by_node[id(arg)])
        else:
            inner = [by_node[id(n)] for n in ir.walk(arg) if id(n) in by_node]
            names.append("+".join(inner) or f"operand_{k}")
    return names
