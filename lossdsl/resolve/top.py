"""The program's scalar top (DESIGN.md §3.1): where only losses and numbers meet.

The terms that ``crit.terms``, ``crit.weights`` and the monitor show live here: catalogue
term calls, loss bindings, and inline terms (a call of kind loss whose operands include a
tensor, such as ``mean(...)``). A loss used inside a tensor operation is part of that
computation, not a term. Both questions are answered with the one walk's idea, iteratively.
"""

from __future__ import annotations

from ..errors import LossTypeError
from ..language.kinds import SCALAR_KINDS
from ..syntax import ast
from . import ir

__all__ = ["scalar_top", "is_leaf", "check_root"]


def is_leaf(node: ir.Node) -> bool:
    """Where the scalar top ends: a term, or a call whose operands include a tensor."""
    if isinstance(node, ir.Term):
        return True
    return isinstance(node, ir.Call) and any(a.kind == "tensor" for a in node.args)


def scalar_top(root: ir.Node) -> set[int]:
    """The ids of the nodes of the scalar top under ``root``."""
    top: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in top or node.kind not in SCALAR_KINDS:
            continue
        top.add(id(node))
        if not is_leaf(node):
            stack.extend(node.children)
    return top


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
    stack, seen, contributes = [root], set(), False
    while stack and not contributes:
        node = stack.pop()
        if id(node) in seen or r.watch_only(node):
            continue
        seen.add(id(node))
        contributes = isinstance(node, (ir.Term, ir.Balance)) or is_leaf(node)
        stack.extend(node.children)
    if not contributes:
        raise LossTypeError(
            "every term is inside watch(...), so the loss is always 0",
            span=expr.offsets,
            hint="add a term outside watch, e.g. mse + watch(mae)",
        )
