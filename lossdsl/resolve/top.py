"""The program's scalar top (DESIGN.md §3.1): where only losses and numbers meet.

The terms that ``crit.terms``, ``crit.weights`` and the monitor show live here: catalogue
term calls, loss bindings, and inline terms (a call of kind loss whose operands include a
tensor, such as ``mean(...)``). A loss used inside a tensor operation is part of that
computation, not a term. Both questions are answered with the one walk (``resolve.ir.walk``).
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
