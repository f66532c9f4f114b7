"""Which nodes of a program are its logged terms, and under which names (DESIGN.md §3.1, §4).

The terms that ``crit.terms``, ``crit.weights`` and the monitor show live in the program's
scalar top, where only losses and numbers meet: catalogue term calls, loss bindings, and
inline terms (a call of kind loss whose operands include a tensor, such as ``mean(...)``). A
loss used inside a tensor operation is part of that computation, not a term. The top is
found with the one walk (``resolve.ir.walk``).

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

from ..errors import LossTypeError
from ..language.functions import SCALAR_KINDS
from ..syntax import ast
from . import ir

__all__ = ["scalar_top", "is_leaf", "check_root", "logged_items", "operand_names"]


def is_leaf(node: ir.Node) -> bool:
    """Where the scalar top ends: a term, or a call whose operands include a tensor."""
    if isinstance(node, ir.Term):
        return True
    return isinstance(node, ir.Call) and any(a.kind == "tensor" for a in node.args)


def scalar_top(root: ir.Node) -> set[int]:
    """The ids of the nodes of the scalar top under ``root``."""
    if root.kind not in SCALAR_KINDS:
        return set()
    within = ir.walk(root, descend=lambda n: n.kind in SCALAR_KINDS and not is_leaf(n))
    return {id(node) for node in within if node.kind in SCALAR_KINDS}


def check_root(r, root: ir.Node, expr: ast.Node) -> None:
    """The program must be a loss, and something outside ``watch`` must make it."""
    boolean = isinstance(root, ir.Call) and getattr(root.fn, "boolean", False)
    if root.kind == "tensor":
        raise LossTypeError(
            "the program's value is a tensor, not a loss",
            span=expr.offsets,
            hint="reduce it to a number, e.g. mean(...) or sum(...)",
        )
    if boolean:
        raise LossTypeError(
            "the program's value is a condition, not a loss",
            span=expr.offsets,
            hint="use the condition inside where(cond, a, b)",
        )
    if root.kind in ("const", "schedule"):
        raise LossTypeError(
            "the expression has no loss term",
            span=expr.offsets,
            hint="a program needs at least one term, e.g. mse or 0.5*huber(delta=1)",
        )
    outside_watch = ir.walk(root, descend=lambda n: not r.watch_only(n))
    if not any(
        not r.watch_only(node) and (isinstance(node, (ir.Term, ir.Balance)) or is_leaf(node)) for node in outside_watch
    ):
        raise LossTypeError(
            "every term is inside watch(...), so the loss is always 0",
            span=expr.offsets,
            hint="add a term outside watch, e.g. mse + watch(mae)",
        )


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
