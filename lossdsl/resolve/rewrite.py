"""The program text with new term weights (for suggested weights, DESIGN.md §7). No torch.

The text is edited in place, so comments and layout stay: the numeric factor of a term
(``0.7`` in ``0.7*huber``, ``4`` in ``mae/4``) is scaled, and ``r*`` is put before a term
that has none. The edits go where a term is used, through sums, negations, constant
factors and bindings of one term; the terms of a composite binding are edited inside its
definition. A larger unit (``mse*mae``, ``log(mse)``, ``balance(...)``) is scaled as a whole.

The resolver folds and reorders constants (``2*0.5*mse`` has no product left in the IR),
so the factors are found in the syntax tree; the IR says which calls are terms: a logged
term's span is its call's span in the source.

>>> import lossdsl
>>> resolved = lossdsl.check("0.5*mse + mae/4  # recon + sparsity")
>>> rewrite_weights(resolved, {"mse": 2.0, "mae": 0.5}).source
'1*mse + mae/8  # recon + sparsity'
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, NamedTuple

from ..syntax import ast, parse
from . import ir

__all__ = ["Rewritten", "rewrite_weights", "rewriter", "rewrite_source", "term_spans", "format_number"]

# a factor this close to 1 leaves the text as it is
_UNCHANGED = 5e-5


class Rewritten(NamedTuple):
    """``source``: the text with the new weights; ``scale``: the factor each term's weight
    got (terms scaled as one unit share one; a term the text does not scale is absent)."""

    source: str
    scale: dict[str, float]


def rewrite_weights(
    resolved: ir.IR, scale: Mapping[str, float], magnitude: Mapping[str, float] | None = None
) -> Rewritten:
    """``resolved``'s source with the weight of each term ``name`` multiplied by
    ``scale[name]`` (terms not in ``scale`` keep theirs).

    A unit holding several terms (``mse*mae``) gets one factor: the mean of theirs,
    weighted by ``magnitude`` (each term's current weighted magnitude; equal without it),
    so that the unit gets the terms' combined magnitude.

    >>> import lossdsl
    >>> text = "recon = huber  # robust\\n0.7*recon + (0.1+0.2)*mse + mse*mae"
    >>> new = rewrite_weights(lossdsl.check(text), {"recon": 2, "mse": 3, "mse_2": 1, "mae": 2}, {"mse_2": 1, "mae": 3})
    >>> print(new.source)
    recon = huber  # robust
    1.4*recon + 3*(0.1+0.2)*mse + 1.75*mse*mae
    >>> new.scale
    {'recon': 2.0, 'mse': 3.0, 'mse_2': 1.75, 'mae': 1.75}
    """
    return rewrite_source(resolved.source, term_spans(resolved), scale, magnitude)


def rewriter(resolved: ir.IR) -> Callable[..., Rewritten]:
    """:func:`rewrite_weights` for ``resolved``, as ``rewrite(scale, magnitude=None)``. It
    keeps the text and the terms' spans only (plain data: it pickles with a saved loss)."""
    return functools.partial(rewrite_source, resolved.source, term_spans(resolved))


def term_spans(resolved: ir.IR) -> dict[tuple[int, int], str]:
    """The span of each term's call in the source -> the term's log name."""
    return {
        tuple(item.node.span): item.name for item in resolved.logged if item.is_term and item.node.span is not None
    }


def rewrite_source(
    source: str,
    terms: Mapping[tuple[int, int], str],
    scale: Mapping[str, float],
    magnitude: Mapping[str, float] | None = None,
) -> Rewritten:
    """:func:`rewrite_weights` of ``source``, whose terms' calls are at the spans ``terms``."""
    tree = parse(source)
    return _Editor(source, tree, dict(terms), scale, magnitude or {}).run(tree.expr)


def format_number(value: float) -> str:
    """A number as the language writes it: 4 significant digits, no trailing zeros.

    >>> format_number(0.70000001), format_number(-1234567.0), format_number(2.0)
    ('0.7', '-1.235e+06', '2')
    """
    text = format(abs(value), ".4g")
    return ("-" if value < 0 else "") + text


class _Editor:
    """One rewrite: walks the expression, collects the text edits and each term's factor."""

    def __init__(self, source: str, tree: ast.Program, terms: dict, scale: Mapping, magnitude: Mapping) -> None:
        self.source = source
        self.bindings = {b.name: b for b in tree.bindings}
        self.terms = terms  # span of a term's call -> its log name
        self.scale = {n: float(r) for n, r in scale.items()}
        self.magnitude = magnitude
        self.brackets = _bracket_pairs(source)
        self.edits: list[tuple[int, int, str]] = []
        self.applied: dict[str, float] = {}
        self.walked: set[str] = set()

    def run(self, expr: ast.Node) -> Rewritten:
        stack = [expr]  # iterative: bindings inside bindings may nest deeper than the stack
        while stack:
            stack.extend(reversed(self._parts(stack.pop())))
        text = self.source
        for start, end, new in sorted(self.edits, reverse=True):
            text = text[:start] + new + text[end:]
        return Rewritten(text, self.applied)

    def _parts(self, node: ast.Node) -> list[ast.Node]:
        """The parts of ``node`` whose contributions it adds up (each edited on its own),
        or none after ``node`` was edited as one unit."""
        if isinstance(node, ast.Sum):
            return list(node.operands)
        if isinstance(node, ast.Neg):
            return [node.operand]
        if isinstance(node, ast.Call) and node.offsets not in self.terms:
            binding = self._binding(node)
            if binding is not None and not self._one_term(binding):
                # a composite binding: its terms are edited inside its definition, once
                if binding.name in self.walked:
                    return []
                self.walked.add(binding.name)
                return [binding.value]
            if node.name == "watch" and binding is None:
                return []  # only logged: it adds nothing to scale
        if isinstance(node, ast.Product):
            carrying = [i for i, o in enumerate(node.operands) if self._terms_in(o)]
            if len(carrying) == 1:
                i = carrying[0]
                inner = node.operands[i]
                divides = i > 0 and node.ops[i - 1] == "/"
                binding = self._binding(inner) if isinstance(inner, ast.Call) else None
                composite = binding is not None and not self._one_term(binding)
                if not divides and (isinstance(inner, ast.Sum) or composite):
                    return [inner]  # `0.5*(a + b)`, `0.5*recon`: each term inside on its own
        self._unit(node)
        return []

    def _unit(self, node: ast.Node) -> None:
        """Scale ``node`` as a whole, by the magnitude-weighted factor of its terms."""
        inside = [n for n in self._terms_in(node) if n in self.scale]
        if not inside:
            return
        mags = [self.magnitude.get(n, 1.0) for n in inside]
        if sum(mags) > 0:
            r = sum(self.scale[n] * m for n, m in zip(inside, mags)) / sum(mags)
        else:
            r = sum(self.scale[n] for n in inside) / len(inside)
        for n in inside:
            self.applied.setdefault(n, r)
        if abs(r - 1.0) < _UNCHANGED:
            return
        if isinstance(node, ast.Product):
            for operand, op in zip(node.operands, ("*",) + node.ops):
                value = _literal(operand)
                if value is not None and not (op == "/" and r == 0):
                    # the digits alone: a minus keeps its place, and what stands between it
                    # and them (a bracket, a comment) stays; r > 0 keeps the sign
                    number = operand.operand if isinstance(operand, ast.Neg) else operand
                    start, end = number.offsets
                    new = abs(value * r if op == "*" else value / r)
                    self.edits.append((start, end, format_number(new)))
                    return
        start = _true_start(node.offsets, self.brackets)
        self.edits.append((start, start, format_number(r) + "*"))

    def _binding(self, node: ast.Call) -> ast.Binding | None:
        """The binding ``node`` refers to, if it is a use of one."""
        if node.name in self.bindings and not (node.args or node.kwargs) and node.offsets not in self.terms:
            return self.bindings[node.name]
        return None

    def _one_term(self, binding: ast.Binding) -> bool:
        """Whether ``binding`` is exactly one term call (scaled where it is used)."""
        return isinstance(binding.value, ast.Call) and binding.value.offsets in self.terms

    def _terms_in(self, node: ast.Node) -> list[str]:
        """The terms whose values reach ``node`` (not through ``watch``), in source order."""
        found: list[str] = []
        seen: set[str] = set()
        stack = [node]
        while stack:
            item = stack.pop()
            if isinstance(item, ast.Call):
                name = self.terms.get(item.offsets)
                binding = self._binding(item)
                if name is not None:
                    found.append(name)
                elif binding is not None:
                    if binding.name not in seen:
                        seen.add(binding.name)
                        stack.append(binding.value)
                    continue
                elif item.name == "watch":
                    continue
                stack.extend(reversed(item.args))
            elif isinstance(item, (ast.Sum, ast.Product)):
                stack.extend(reversed(item.operands))
            elif isinstance(item, ast.Power):
                stack.extend((item.exponent, item.base))
            elif isinstance(item, ast.Neg):
                stack.append(item.operand)
        return list(dict.fromkeys(found))


def _literal(node: ast.Node) -> float | None:
    """The value of a number as written (``0.5``, ``-2``, ``-(2)``), else ``None``."""
    if isinstance(node, ast.Number):
        return float(node.value)
    if isinstance(node, ast.Neg) and isinstance(node.operand, ast.Number):
        return -float(node.operand.value)
    return None


def _bracket_pairs(text: str) -> dict[int, int]:
    """Offset of each closing bracket -> offset of its opening one (strings and comments skipped)."""
    pairs, stack, i = {}, [], 0
    while i < len(text):
        c = text[i]
        if c in "\"'":
            i += 1
            while i < len(text) and text[i] != c:
                i += 2 if text[i] == "\\" else 1
        elif c == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
        elif c in "([":
            stack.append(i)
        elif c in ")]" and stack:
            pairs[i] = stack.pop()
        i += 1
    return pairs


def _true_start(span: tuple[int, int], brackets: dict[int, int]) -> int:
    """A node's span leaves out the brackets around its first operand (``(a)^2`` starts at
    ``a``); the node really starts at the opening bracket of any bracket it closes."""
    start, end = span
    return min([start] + [o for c, o in brackets.items() if start <= c < end and o < start])
