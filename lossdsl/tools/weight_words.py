"""Effective weights in words, for ``lossdsl explain``'s table of terms.

A weight is ``d total / d term``: an exact number when the program's weights are constants
(the numbers the :class:`~lossdsl.program.Program` computed), else the factors as written: a
schedule (``linear(start=0, end=1, steps=10, delay=0)``), a balancer (``balance(ema)``), or
``depends on the term values`` for products of losses and functions such as ``log``.

The words come from one reverse pass over the IR's walk (parents before children). Every
logged item and every node used more than once is a junction; each junction records its uses
as ``(owner junction, factors)``, and its weight is the sum over its uses of the owner's
weight times the factors. A weight reached through a shared composite refers to that
composite's weight as ``w(name)``, so the words stay as short as the program.

>>> import lossdsl
>>> weight_descriptions(lossdsl.compile("r = mse; s = linear(0, 1, steps=9)*r; s + s + r"))["r"]
'(1) + (2 * linear(start=0, end=1, steps=9, delay=0))'
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from ..errors import LossDSLError
from ..language.schedules import Schedule
from ..resolve import ir
from ..resolve.ir import walk
from ..resolve.logged import is_leaf
from ..syntax import parse

__all__ = ["weight_descriptions", "binding_names", "logged_names", "number", "value_text", "params_text"]

DEPENDS = "depends on the term values"
WATCHED, DETACHED = "0 (only logged)", "0 (detached)"
_RESETS = (WATCHED, DETACHED, DEPENDS)  # factors that do not multiply


def number(value: float) -> str:
    """A number as explain writes it: six significant digits.

    >>> number(0.30000000000000004), number(5000.0)
    ('0.3', '5000')
    """
    return f"{value:.6g}"


def value_text(value: Any) -> str:
    """A hyperparameter's value as the program would write it (``true``, ``[1, 2]``, ``mean``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return number(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    return str(value)


def params_text(params: Iterable[tuple[str, Any]]) -> str:
    return ", ".join(f"{k}={value_text(v)}" for k, v in params)


def logged_names(resolved: ir.IR) -> dict[int, str]:
    """``{id(node): log name}`` of the terms and composites the program logs."""
    return {id(item.node): item.name for item in resolved.logged}


def binding_names(source: str) -> dict[tuple[int, int], str]:
    """``{span of a binding's value: binding name}``, to name shared nodes as the text does."""
    try:
        program = parse(source)
    except LossDSLError:
        return {}
    names: dict[tuple[int, int], str] = {}
    for binding in program.bindings:
        span = binding.value.offsets
        if span is not None:
            names.setdefault(span, binding.name)
    return names


def weight_descriptions(crit) -> dict[str, str]:
    """``{term name: effective weight in words}`` for every logged term and composite."""
    resolved: ir.IR = crit.ir
    constant = crit.program.constant_weights
    if constant is None:
        return _Words(resolved).describe()
    watched = _watched(walk(resolved.root))
    out = {}
    for item, w in zip(resolved.logged, constant):
        only_logged = float(w) == 0 and id(item.node) in watched
        out[item.name] = number(float(w)) + (" (only logged)" if only_logged else "")
    return out


def _watched(nodes: list[ir.Node]) -> set[int]:
    """The ids of the nodes that stand inside a ``watch(...)`` (on some path from the top)."""
    inside: set[int] = set()
    for node in reversed(nodes):  # parents before children
        if id(node) in inside or (isinstance(node, ir.Call) and node.name == "watch"):
            inside.update(id(child) for child in node.children)
    return inside


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _Words:
    """The weights in words of one program (see the module's docstring)."""

    def __init__(self, resolved: ir.IR) -> None:
        self.resolved = resolved
        nodes = walk(resolved.root)
        uses = Counter(id(c) for n in nodes for c in n.children)
        self.spans = binding_names(resolved.source)
        self.logged = logged_names(resolved)
        self.junctions = {id(n) for n in nodes if isinstance(n, (ir.Term, ir.Named)) or uses[id(n)] > 1}
        self.junctions |= self.logged.keys()
        self.found: dict[int, list[tuple[Any, tuple[str, ...]]]] = {id(resolved.root): [(None, ())]}
        passed: dict[int, tuple[Any, tuple[str, ...]]] = {}  # a node used once: what its parent passed
        order = list(reversed(nodes))  # parents before children
        for node in order:
            if id(node) in self.junctions:
                context: tuple[Any, tuple[str, ...]] | None = (node, ())
            else:
                context = passed.get(id(node), (None, ()) if node is resolved.root else None)
            if context is None or is_leaf(node):
                continue  # not reached by a loss, or where the scalar top ends
            for child, use in self._operands(node, *context):
                if child.kind != "loss":
                    continue
                if id(child) in self.junctions:
                    self.found.setdefault(id(child), []).append(use)
                else:
                    passed[id(child)] = use
        self.texts: dict[int, str] = {}
        for node in order:  # an owner is above what it holds: its words are ready first
            if id(node) in self.junctions:
                self.texts[id(node)] = self._text(node)

    def _operands(self, node: ir.Node, owner: Any, factor: tuple[str, ...]) -> list[tuple[ir.Node, tuple]]:
        """``(operand, (owner, factors))`` for each operand a loss's weight flows to."""
        if isinstance(node, ir.Named):
            return [(node.value, (owner, factor))]
        if isinstance(node, ir.Balance):
            return [(a, (owner, factor + (f"balance({node.method.name})",))) for a in node.args]
        if not isinstance(node, ir.Call):
            return []
        name = node.name
        if name in ("watch", "detach"):
            return [(a, (owner, (WATCHED if name == "watch" else DETACHED,))) for a in node.args]
        if name == "add":
            return [(a, (owner, factor + (() if s > 0 else ("-1",)))) for s, a in zip(node.param("signs"), node.args)]
        if name == "neg":
            return [(node.args[0], (owner, factor + ("-1",)))]
        if name == "multiply" and _linear_product(node):
            ops = ("*",) + tuple(node.param("ops"))
            scale = tuple(self._factor(a) if op == "*" else _reciprocal(self._factor(a))
                          for op, a in zip(ops, node.args) if a.kind != "loss")
            return [(a, (owner, factor + scale)) for a in node.args if a.kind == "loss"]
        return [(a, (owner, (DEPENDS,))) for a in node.args]

    def _factor(self, node: ir.Node) -> str:
        if isinstance(node, ir.Const):
            return value_text(node.value)
        if isinstance(node, ir.Call) and isinstance(node.fn, Schedule):
            return f"{node.name}({params_text(node.params)})"
        return self.spans.get(node.span) or "(a schedule expression)"

    def _text(self, node: ir.Node) -> str:
        ways = []
        for owner, factor in self.found.get(id(node), []):
            if factor and factor[0] in _RESETS:
                ways.append(factor[0])
                continue
            outer = None if owner is None else self._owner_text(owner)
            parts = ([outer] if outer else []) + list(factor)
            if DEPENDS in parts:  # a factor that depends on the values makes the whole so
                ways.append(DEPENDS)
            elif all(_is_number(p) for p in parts):  # `-1 * 2` is -2
                product = 1.0
                for p in parts:
                    product *= float(p)
                ways.append(number(product))
            else:
                ways.append(" * ".join(parts))
        return _combine(ways)

    def _owner_text(self, owner: ir.Node) -> str | None:
        """How a junction's weight appears in the weights of what it holds (None: it is 1)."""
        text = self.texts[id(owner)]
        if text == "1":
            return None
        single = self.found.get(id(owner), [])
        if _is_number(text) or (len(single) == 1 and single[0][0] is None):
            return text  # short: a number, or the factors from the top of the program
        if isinstance(owner, ir.Named):
            return f"w({self.logged.get(id(owner), owner.label)})"
        return f"({text})"

    def describe(self) -> dict[str, str]:
        return {item.name: self.texts.get(id(item.node), "0") for item in self.resolved.logged}


def _reciprocal(factor: str) -> str:
    return number(1.0 / float(factor)) if _is_number(factor) else f"1/{factor}"


def _combine(ways: list[str]) -> str:
    """One text for the sum of a node's uses: numbers added, repeats counted."""
    if not ways:
        return "0"
    if DEPENDS in ways:
        return DEPENDS
    live = [w for w in ways if w not in _RESETS] or ways[:1]
    if all(_is_number(w) for w in live):
        return number(sum(float(w) for w in live))
    counted = Counter(live)
    parts = [w if n == 1 else f"{n} * {w}" for w, n in counted.items()]
    return parts[0] if len(parts) == 1 else " + ".join(f"({p})" for p in parts)


def _linear_product(node: ir.Call) -> bool:
    """A product with exactly one loss operand, multiplied (not divided): its weight is linear."""
    ops = ("*",) + tuple(node.param("ops"))
    return [op for op, a in zip(ops, node.args) if a.kind == "loss"] == ["*"]
