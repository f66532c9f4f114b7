"""The resolved program as text: an operation tree and a table of its terms.

Used by ``lossdsl explain``. Every node of the tree shows its kind after a colon (``const``,
``schedule``, ``loss`` or ``tensor``, DESIGN.md §3.1). The table's weights are the effective
weights ``d total / d term`` (:mod:`lossdsl.tools.weight_words`).

A node with operands that the program uses more than once (a binding used twice) is one node
of the IR, and it is drawn once: the tree names it where it is used and draws it under a
heading of its own below. The tree is built from the IR's one walk (children before parents),
each node's lines made once and moved into its parent's, so the text grows with the program's
text, never with the number of paths through it, and no recursion meets a deep program.

>>> import lossdsl
>>> print(explain(lossdsl.compile("0.7*huber(delta=2) + watch(mae)")))  # doctest: +NORMALIZE_WHITESPACE
0.7 * huber(delta=2) + watch(mae)
<BLANKLINE>
add : loss
|-- multiply : loss
|   |-- 0.7 : const
|   `-- huber  (term huber) : loss
`-- watch : loss
    `-- mae  (term mae) : loss
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

from ..language.schedules import Schedule
from ..resolve import ir
from ..resolve.ir import walk
from .weight_words import binding_names, logged_names, params_text, value_text, weight_descriptions

__all__ = ["explain", "weight_descriptions", "label"]

# operator rows whose parameters the label shows in its own way (signs, operators, items)
_OPERATORS = ("add", "multiply", "index")


def explain(crit) -> str:
    """The canonical program, its operation tree and its terms, as plain text.

    ``crit``: a compiled :class:`~lossdsl.Loss` (its ``ir`` and its program's weights).
    """
    resolved: ir.IR = crit.ir
    lines = [resolved.canonical, ""]
    lines += _Tree(resolved).lines()
    lines.append("")
    table = _term_table(crit)
    lines += table
    notes = []
    if any(not r.required for item in resolved.logged if isinstance(item.node, ir.Term) for r in item.node.routes):
        notes.append("inputs marked ? are read when given")
    if any("w(" in row for row in table[1:]):
        notes.append("w(name): the weight of the composite 'name' in this table")
    return "\n".join(lines + ([""] + notes if notes else []))


def _index_text(items: tuple) -> str:
    def one(item: Any) -> str:
        if item is None:
            return "none"
        if item is Ellipsis:
            return "..."
        if isinstance(item, slice):
            bounds = ["" if b is None else str(b) for b in (item.start, item.stop, item.step)]
            return ":".join(bounds[:2] if item.step is None else bounds)
        return str(item)

    return "[" + ", ".join(one(i) for i in items) + "]"


def _changed_params(node: ir.Call) -> list[tuple[str, Any]]:
    """The parameters of a call that differ from their defaults (all of them for a schedule)."""
    if isinstance(node.fn, Schedule):
        return list(node.params)
    fields = getattr(node.fn.params, "model_fields", {})
    out = []
    for key, value in node.params:
        field = fields.get(key)
        if field is None or field.is_required() or field.default != value:
            out.append((key, value))
    return out


def label(node: ir.Node, name: str | None = None) -> str:
    """How the tree shows ``node`` (without its kind); ``name``: its log name, if it has one.

    Operations are named by their rows in the function tables (``add``, ``multiply``, ``pow``,
    ``neg``, ``mean``, ...), with the parameters that differ from their defaults.

    >>> from lossdsl.resolve import resolve_text
    >>> [label(n) for n in resolve_text("sum(mean(abs(pred - target), dim=0))").nodes()]
    ['pred  (input)', 'target  (input)', 'add (+ -)', 'abs', 'mean(dim=0)', 'sum']
    """
    if isinstance(node, ir.Term):
        return f"{name or node.label}  (term {node.spec.name})"
    if isinstance(node, ir.Const):
        return value_text(node.value)
    if isinstance(node, ir.ListConst):
        return value_text(list(node.values))
    if isinstance(node, ir.Input):
        return ".".join(node.path) + "  (input)"
    if isinstance(node, ir.Named):
        return f"{name or node.label} =  (named)"
    if isinstance(node, ir.Balance):
        extra = params_text((k, v) for k, v in node.params if k != "method")
        return f"balance(method={node.method.name}{', ' + extra if extra else ''})"
    if isinstance(node, ir.Call):
        text = node.name
        if node.name == "add" and any(s < 0 for s in node.param("signs", ())):
            text += " (" + " ".join("+" if s > 0 else "-" for s in node.param("signs")) + ")"
        elif node.name == "multiply" and "/" in node.param("ops", ()):
            text += " (" + " ".join(("*",) + tuple(node.param("ops"))) + ")"
        elif node.name == "index":
            text += _index_text(node.param("items", ()))
        elif node.name not in _OPERATORS:
            params = _changed_params(node)
            if params or isinstance(node.fn, Schedule):
                text += f"({params_text(params)})"
        return text + (f"  (logged as {name})" if name else "")
    return type(node).__name__


class _Tree:
    """The operation tree's lines: the root's tree, then each shared node under its heading.

    A line is ``[text, mark, prefix segments]``; the segments (innermost first) are added as
    a node's lines move into its parent's, and joined once at the end. ``mark`` is
    ``("term", node)`` for a term (a term drawn again is marked ``(again)``) or
    ``("ref", node)`` where a shared node is named (its heading follows the tree).
    """

    def __init__(self, resolved: ir.IR) -> None:
        self.root = resolved.root
        self.nodes = walk(self.root)
        self.uses: Counter = Counter(id(c) for n in self.nodes for c in n.children)
        self.logged = logged_names(resolved)
        spans = binding_names(resolved.source)
        self.names: dict[int, str] = {}  # shared nodes with operands -> the name they are shown by
        unnamed = 0
        for node in self.nodes:
            if node.children and self.uses[id(node)] > 1:
                name = self.logged.get(id(node)) or spans.get(node.span)
                if name is None and isinstance(node, ir.Named):
                    name = node.label
                if name is None:
                    unnamed += 1
                    name = f"#{unnamed}"
                self.names[id(node)] = name
        # where a tensor's shape is decided: the call inputs under it (sets: a few names each)
        self.shaped_by: dict[int, frozenset] = {}
        for node in self.nodes:
            own = {".".join(node.path)} if isinstance(node, ir.Input) else set()
            if isinstance(node, ir.Term):
                own = {".".join(r.path) for r in node.routes if r.required}
            self.shaped_by[id(node)] = frozenset(own).union(*(self.shaped_by[id(c)] for c in node.children))
        self.blocks: dict[int, list[list]] = {}
        for node in self.nodes:  # children first: a node's children's lines are ready
            if node.children:
                self.blocks[id(node)] = self._block(node)

    def _line(self, node: ir.Node) -> list:
        text = f"{label(node, self.logged.get(id(node)))} : {node.kind}"
        if node.kind == "tensor" and not isinstance(node, (ir.Input, ir.ListConst)) and self.shaped_by[id(node)]:
            text += f", shaped by {', '.join(sorted(self.shaped_by[id(node)]))} at the call"
        return [text, ("term", node) if isinstance(node, ir.Term) else None, []]

    def _block(self, node: ir.Node) -> list[list]:
        lines = [self._line(node)]
        kids = node.children
        for i, child in enumerate(kids):
            last = i == len(kids) - 1
            lines += _indent(self._drawn(child), last)
        return lines

    def _drawn(self, child: ir.Node) -> list[list]:
        """The lines that stand for ``child`` under its parent: its own, a reference, or a leaf's line."""
        if not child.children:
            return [self._line(child)]
        if id(child) in self.names:
            return [[f"{self.names[id(child)]}  (shared, shown below)", ("ref", child), []]]
        return self.blocks.pop(id(child))  # used once: its lines move into the parent's

    def lines(self) -> list[str]:
        """The tree, then the headings of the shared nodes in the order they are first named."""
        out: list[str] = []
        seen_terms: set[int] = set()
        queue, queued = [self.root], {id(self.root)}
        for node in queue:  # grows while it is read: shared nodes inside shared nodes
            if node is self.root:
                block = self.blocks.get(id(node)) or [self._line(node)]
            else:
                kind = "named" if isinstance(node, ir.Named) else "binding"
                out.append(f"{self.names[id(node)]} =  ({kind}, used {self.uses[id(node)]} times)")
                # a named composite shows its value; another shared node shows itself
                block = self.blocks[id(node)][1:] if isinstance(node, ir.Named) else _indent(self.blocks[id(node)], True)
            for text, mark, segments in block:
                if mark is not None and mark[0] == "term":
                    if id(mark[1]) in seen_terms:
                        text += "  (again)"
                    seen_terms.add(id(mark[1]))
                elif mark is not None and id(mark[1]) not in queued:
                    queued.add(id(mark[1]))
                    queue.append(mark[1])
                out.append("".join(reversed(segments)) + text)
        return out


def _indent(lines: list[list], last: bool) -> list[list]:
    """``lines`` as a child's: the branch on the first line, the rail on the others (in place)."""
    lines[0][2].append("`-- " if last else "|-- ")
    rail = "    " if last else "|   "
    for line in lines[1:]:
        line[2].append(rail)
    return lines


def _inputs(term: ir.Term) -> str:
    parts = []
    for route in term.routes:
        text = route.param if route.path == (route.param,) else f"{route.param}<-{'.'.join(route.path)}"
        parts.append(text + ("" if route.required else "?"))
    return ", ".join(parts)


def _expression_inputs(node: ir.Node) -> str:
    """The inputs an inline term (a tensor expression) reads, in the order the walk meets them."""
    paths: dict[str, bool] = {}  # path -> read only when given
    for inner in walk(node):
        read = [(r.path, not r.required) for r in inner.routes] if isinstance(inner, ir.Term) else []
        read += [(inner.path, False)] if isinstance(inner, ir.Input) else []
        for path, optional in read:
            key = ".".join(path)
            paths[key] = paths.get(key, True) and optional  # required anywhere: required
    return ", ".join(p + ("?" if optional else "") for p, optional in paths.items()) or "-"


def _term_table(crit) -> list[str]:
    resolved: ir.IR = crit.ir
    weights = weight_descriptions(crit)
    rows = [("term", "function", "weight", "hyperparameters", "inputs")]
    for item in resolved.logged:
        node = item.node
        if isinstance(node, ir.Term):
            hyper = ", ".join(f"{k}={value_text(v)}" for k, v in node.hyper) or "-"
            rows.append((item.name, node.spec.name, weights[item.name], hyper, _inputs(node)))
        elif isinstance(node, ir.Named):
            rows.append((item.name, "(composite)", weights[item.name], "-", "-"))
        else:
            rows.append((item.name, "(expression)", weights[item.name], "-", _expression_inputs(node)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
