"""The resolved program as text: an operation tree and a table of its terms.

Used by ``lossdsl explain``. Weights are the effective weights ``d total / d term``: exact
numbers when they are constant, else the factor as written (a schedule, a balancer, or
"depends on the term values" for products of losses and functions such as ``log``).

A binding used more than once is one node of the program, and it is shown once: the tree
refers to it by name where it is used and draws it under a heading of its own below, and a
weight reached through a shared composite refers to that composite's weight as ``w(name)``.
So the text grows with the program's text, never with the number of paths through it.

>>> import lossdsl
>>> print(explain(lossdsl.compile("0.7*huber(delta=2) + watch(mae)")))  # doctest: +NORMALIZE_WHITESPACE
0.7 * huber(delta=2) + watch(mae)
<BLANKLINE>
sum
|-- product
|   |-- 0.7
|   `-- huber  (term huber)
`-- watch
    `-- mae  (term mae)
<BLANKLINE>
term   function  weight           hyperparameters          inputs
huber  huber     0.7              delta=2, reduction=mean  pred, target, weight?, mask?
mae    mae       0 (only logged)  reduction=mean           pred, target, weight?, mask?
<BLANKLINE>
inputs marked ? are read when given
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from . import ir
from .errors import LossDSLError
from .syntax import parse

__all__ = ["explain", "weight_descriptions"]

_SYMBOLS = {"sum": "sum", "product": "product", "pow": "power", "neg": "negate"}
_DEPENDS = "depends on the term values"
_RESETS = ("0 (only logged)", "0 (detached)", _DEPENDS)  # factors that do not multiply


def explain(crit) -> str:
    """The canonical program, its operation tree and its terms, as plain text."""
    resolved: ir.Resolved = crit._resolved
    lines = [resolved.canonical, ""]
    lines += _tree(resolved)
    lines.append("")
    table = _term_table(crit)
    lines += table
    notes = []
    if any(not r.required for t in _terms(resolved) for r in t.routes):
        notes.append("inputs marked ? are read when given")
    if any("w(" in row for row in table[1:]):
        notes.append("w(name): the weight of the composite 'name' in this table")
    return "\n".join(lines + ([""] + notes if notes else []))


def _terms(resolved: ir.Resolved) -> list[ir.Term]:
    return [t for t in resolved.logged if isinstance(t, ir.Term)]


def _number(value: float) -> str:
    return f"{value:.6g}"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def _params(params) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in params)


def _label(node: Any) -> str:
    if isinstance(node, ir.Term):
        return f"{node.name}  (term {node.spec.name})"
    if isinstance(node, ir.Const):
        return _number(node.value)
    if isinstance(node, ir.Schedule):
        return f"{node.name}({_params(node.params)})  (schedule)"
    if isinstance(node, ir.Balance):
        extra = _params((k, v) for k, v in node.params if k != "method")
        return f"balance(method={node.method}{', ' + extra if extra else ''})"
    if isinstance(node, ir.Named):
        return f"{node.name} =  (named)"
    if isinstance(node, ir.Apply):
        label = _SYMBOLS.get(node.fn, node.fn)
        if node.fn == "sum" and any(s < 0 for s in node.param("signs", ())):
            label += " (" + " ".join("+" if s > 0 else "-" for s in node.param("signs")) + ")"
        if node.fn == "product" and "/" in node.param("ops", ()):
            label += " (" + " ".join(node.param("ops")) + ")"
        if node.fn == "clamp":
            label += f"({_params(node.params)})"
        return label
    return type(node).__name__


def _children(node: Any) -> tuple:
    if isinstance(node, (ir.Apply, ir.Balance)):
        return node.args
    if isinstance(node, ir.Named):
        return (node.value,)
    return ()


def _uses(root: Any) -> Counter:
    """How many parents each node has; every node is expanded once (no path explosion)."""
    count: Counter = Counter()
    pending, seen = [root], {id(root)}
    while pending:
        for child in _children(pending.pop()):
            count[id(child)] += 1
            if id(child) not in seen:
                seen.add(id(child))
                pending.append(child)
    return count


def _binding_names(source: str) -> dict[tuple[int, int], str]:
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


def _tree(resolved: ir.Resolved) -> list[str]:
    """The operation tree; a node used more than once is drawn once, under a heading of its own
    after the tree, and referred to by name where it is used (indentation stays shallow too)."""
    lines: list[str] = []
    uses = _uses(resolved.root)
    names = _binding_names(resolved.source)
    shared: dict[int, str] = {}  # node -> its name, in the order first met
    queue: list[Any] = []
    terms_seen: set[int] = set()

    def walk(node: Any, prefix: str, last: bool, top: bool, expand: bool = False) -> None:
        branch = "" if top else ("`-- " if last else "|-- ")
        kids = _children(node)
        if kids and uses[id(node)] > 1 and not expand:
            if id(node) not in shared:
                name = names.get(node.span) or f"#{len(shared) + 1}"
                name = node.name if isinstance(node, ir.Named) else name
                shared[id(node)] = name
                queue.append(node)
            lines.append(prefix + branch + f"{shared[id(node)]}  (shared, shown below)")
            return
        again = isinstance(node, ir.Term) and id(node) in terms_seen
        terms_seen.add(id(node))
        lines.append(prefix + branch + _label(node) + ("  (again)" if again else ""))
        inner = prefix + ("" if top else ("    " if last else "|   "))
        for i, child in enumerate(kids):
            walk(child, inner, i == len(kids) - 1, False)

    walk(resolved.root, "", True, True)
    for node in queue:  # grows while it is read: shared nodes inside shared nodes
        kind = "named" if isinstance(node, ir.Named) else "binding"
        lines.append(f"{shared[id(node)]} =  ({kind}, used {uses[id(node)]} times)")
        walk(node.value if isinstance(node, ir.Named) else node, "", True, False, expand=True)
    return lines


def weight_descriptions(crit) -> dict[str, str]:
    """``{term name: effective weight in words}`` for every logged term and composite.

    >>> import lossdsl
    >>> weight_descriptions(lossdsl.compile("r = mse; s = linear(0, 1, steps=9)*r; s + s + r"))["r"]
    '(1) + (2 * linear(start=0, end=1, steps=9, delay=0))'
    """
    resolved: ir.Resolved = crit._resolved
    constant = getattr(crit, "_constant_weights", None)
    if constant is not None:
        watched = _watched(resolved.root)
        out = {}
        for item, w in zip(resolved.logged, constant.tolist()):
            logged_only = float(w) == 0 and id(item) in watched
            out[item.name] = _number(float(w)) + (" (only logged)" if logged_only else "")
        return out
    return _Weights(resolved).describe()


class _Weights:
    """Effective weights in words, from the uses of each node.

    Every logged item and every shared node is a junction; the program between junctions
    is walked once, recording for each junction its uses as ``(owner junction, factors)``.
    A weight is then the sum over its uses of (the owner's weight) times the factors.
    """

    def __init__(self, resolved: ir.Resolved) -> None:
        self.resolved = resolved
        self.names = _binding_names(resolved.source)
        self.shared = {k for k, n in _uses(resolved.root).items() if n > 1}
        self.found: dict[int, list[tuple[Any, list[str]]]] = {}
        self.texts: dict[int, str] = {}
        pending, walked = [(resolved.root, None)], set()
        while pending:
            node, owner = pending.pop()
            if id(node) in walked:
                continue
            walked.add(id(node))
            self._region(node, owner, [], pending, top=True)

    def _junction(self, node: Any) -> bool:
        return isinstance(node, (ir.Term, ir.Named)) or id(node) in self.shared

    def _region(self, node: Any, owner: Any, factor: list[str], pending: list, top: bool = False) -> None:
        if not top and self._junction(node):
            self.found.setdefault(id(node), []).append((owner, factor))
            pending.append((node, node))
            return
        walk = lambda arg, f: self._region(arg, owner, f, pending)  # noqa: E731
        if isinstance(node, ir.Named):
            walk(node.value, factor)
        elif isinstance(node, ir.Balance):
            for arg in node.args:
                walk(arg, factor + [f"balance({node.method})"])
        elif isinstance(node, ir.Apply):
            if node.fn in ("watch", "detach"):
                for arg in node.args:
                    walk(arg, ["0 (only logged)" if node.fn == "watch" else "0 (detached)"])
            elif node.fn == "sum":
                for sign, arg in zip(node.param("signs"), node.args):
                    walk(arg, factor + ([] if sign > 0 else ["-1"]))
            elif node.fn == "neg":
                walk(node.args[0], factor + ["-1"])
            elif node.fn == "product" and _linear_product(node):
                ops = ("*",) + tuple(node.param("ops"))
                scale = [(self._factor(a) if op == "*" else f"1/{self._factor(a)}")
                         for op, a in zip(ops, node.args) if a.kind != "loss"]
                for arg in node.args:
                    if arg.kind == "loss":
                        walk(arg, factor + scale)
            else:
                for arg in node.args:
                    if arg.kind == "loss":
                        walk(arg, [_DEPENDS])

    def _factor(self, node: Any) -> str:
        if isinstance(node, ir.Const):
            return _number(node.value)
        if isinstance(node, ir.Schedule):
            return f"{node.name}({_params(node.params)})"
        return self.names.get(node.span) or "(a schedule expression)"

    def text(self, node: Any) -> str:
        """The weight of ``node`` in words (memoised: each junction is described once)."""
        if id(node) not in self.texts:
            ways = []
            for owner, factor in self.found.get(id(node), []):
                if factor and factor[0] in _RESETS:
                    ways.append(factor[0])
                    continue
                outer = None if owner is None else self._owner_text(owner)
                ways.append(" * ".join(([outer] if outer else []) + factor) or "1")
            self.texts[id(node)] = _combine(ways)
        return self.texts[id(node)]

    def _owner_text(self, owner: Any) -> str | None:
        """How a junction's weight appears in the weights of what it holds (None: it is 1)."""
        text = self.text(owner)
        if text == "1":
            return None
        single = self.found.get(id(owner), [])
        if _is_number(text) or (len(single) == 1 and single[0][0] is None):
            return text  # short: a number, or the factors from the top of the program
        if isinstance(owner, ir.Named):
            return f"w({owner.name})"
        return f"({text})"

    def describe(self) -> dict[str, str]:
        return {item.name: self.text(item) for item in self.resolved.logged}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _combine(ways: list[str]) -> str:
    """One text for the sum of a node's uses: numbers added, repeats counted."""
    if not ways:
        return "0"
    if _DEPENDS in ways:
        return _DEPENDS
    live = [w for w in ways if w not in _RESETS] or ways[:1]
    if all(_is_number(w) for w in live):
        return _number(sum(float(w) for w in live))
    counted = Counter(live)
    parts = [w if n == 1 else f"{n} * {w}" for w, n in counted.items()]
    return parts[0] if len(parts) == 1 else " + ".join(f"({p})" for p in parts)


def _watched(root: Any) -> set[int]:
    """The ids of the terms and composites that stand inside a ``watch(...)``."""
    out: set[int] = set()
    pending, seen = [(root, False)], set()
    while pending:
        node, inside = pending.pop()
        if (id(node), inside) in seen:
            continue
        seen.add((id(node), inside))
        if inside and isinstance(node, (ir.Term, ir.Named)):
            out.add(id(node))
        inside = inside or (isinstance(node, ir.Apply) and node.fn == "watch")
        pending.extend((child, inside) for child in _children(node))
    return out


def _linear_product(node: ir.Apply) -> bool:
    ops = ("*",) + tuple(node.param("ops"))
    losses = [op for op, a in zip(ops, node.args) if a.kind == "loss"]
    return losses == ["*"]


def _inputs(term: ir.Term) -> str:
    parts = []
    for route in term.routes:
        text = route.param if route.path == (route.param,) else f"{route.param}<-{'.'.join(route.path)}"
        parts.append(text + ("" if route.required else "?"))
    return ", ".join(parts)


def _term_table(crit) -> list[str]:
    resolved: ir.Resolved = crit._resolved
    weights = weight_descriptions(crit)
    rows = [("term", "function", "weight", "hyperparameters", "inputs")]
    for item in resolved.logged:
        if isinstance(item, ir.Term):
            hyper = ", ".join(f"{k}={_value(v)}" for k, v in item.hyper) or "-"
            rows.append((item.name, item.spec.name, weights[item.name], hyper, _inputs(item)))
        else:
            rows.append((item.name, "(composite)", weights[item.name], "-", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
