"""Facts about the nodes of a resolved program, each computed once, without recursion.

A binding used twice is one node reached along two paths, so a program of a few hundred
bytes can stand for a tree with millions of paths (``a1 = a0 + a0; a2 = a1 + a1; ...``).
Every question the resolver asks about a node (how deep the operations nest, whether it only
watches, whether a term reaches it) is answered by one memoised, iterative walk: the cost is
linear in the size of the text, and the nesting limit is checked before anything recurses.

>>> import lossdsl
>>> from lossdsl.resolve_facts import Facts
>>> from lossdsl.resolve import resolve
>>> r = resolve(lossdsl.parse("a = mse + mae; a + exp(a)"))
>>> Facts().of(r.root).depth      # sum -> exp -> a (named) -> sum -> mse
5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import ir
from .errors import LossDSLError

__all__ = ["Facts", "NodeFacts", "operands", "MAX_OPERATION_DEPTH"]

# How deep operations may nest, counting the bindings used inside bindings: `a2 = exp(a1)`
# puts a1 inside a2 without a bracket in the text, so a chain of short bindings nests far
# deeper than the parser's limit of 64 brackets. The tools that walk a program recursively
# (explain, the fused path) rely on this bound to stay far from Python's recursion limit.
MAX_OPERATION_DEPTH = 256


@dataclass(frozen=True)
class NodeFacts:
    """``depth``: operations nested down to a leaf (a leaf is 1); ``watch_only``: the node is
    ``watch(...)`` or a sum of such; ``contributes``: a term outside ``watch`` reaches it."""

    depth: int
    watch_only: bool
    contributes: bool


def operands(node: Any) -> tuple:
    """The nodes ``node`` is computed from."""
    if isinstance(node, (ir.Apply, ir.Balance)):
        return node.args
    if isinstance(node, ir.Named):
        return (node.value,)
    return ()


_LEAF = {
    ir.Term: NodeFacts(1, False, True),
    ir.Const: NodeFacts(1, False, False),
    ir.Schedule: NodeFacts(1, False, False),
}


class Facts:
    """A memo of :class:`NodeFacts` for the nodes of one program.

    :meth:`of` raises a :class:`~lossdsl.LossDSLError` at the first node that nests deeper
    than :data:`MAX_OPERATION_DEPTH`.
    """

    def __init__(self) -> None:
        # id -> (node, facts); the node is kept so that its id cannot be reused
        self._memo: dict[int, tuple[Any, NodeFacts]] = {}

    def of(self, node: Any) -> NodeFacts:
        memo = self._memo
        known = memo.get(id(node))
        if known is not None:
            return known[1]
        stack = [node]
        while stack:
            item = stack[-1]
            if id(item) in memo:
                stack.pop()
                continue
            children = operands(item)
            missing = [c for c in children if id(c) not in memo]
            if missing:
                stack.extend(missing)
                continue
            stack.pop()
            memo[id(item)] = (item, _combine(item, [memo[id(c)][1] for c in children]))
        return memo[id(node)][1]


def _combine(node: Any, inner: list[NodeFacts]) -> NodeFacts:
    leaf = _LEAF.get(type(node))
    if leaf is not None:
        return leaf
    depth = 1 + max((f.depth for f in inner), default=0)
    if depth > MAX_OPERATION_DEPTH:
        raise LossDSLError(
            f"the program nests more than {MAX_OPERATION_DEPTH} operations deep "
            "(counting the bindings used inside bindings)",
            span=getattr(node, "span", None),
            hint="use fewer levels of bindings inside bindings, or flatten the expression",
        )
    if isinstance(node, ir.Named):
        return NodeFacts(depth, inner[0].watch_only, inner[0].contributes)
    if isinstance(node, ir.Balance):
        return NodeFacts(depth, False, True)
    if node.fn == "watch":
        return NodeFacts(depth, True, False)
    watch_only = node.fn == "sum" and all(f.watch_only for f in inner)
    return NodeFacts(depth, watch_only, any(f.contributes for f in inner))
