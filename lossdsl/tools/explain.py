"""The resolved program as text: an operation tree and a table of its terms.

Used by ``lossdsl explain``. Weights are the effective weights ``d total / d term``: exact
numbers when they are constant, else the factor as written (a schedule, a balancer, or
"depends on the term values" for products of losses and functions such as ``log``).

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

from typing import Any

from . import ir

__all__ = ["explain", "weight_descriptions"]

_SYMBOLS = {"sum": "sum", "product": "product", "pow": "power", "neg": "negate"}


def explain(crit) -> str:
    """The canonical program, its operation tree and its terms, as plain text."""
    resolved: ir.Resolved = crit._resolved
    lines = [resolved.canonical, ""]
    lines += _tree(resolved.root)
    lines.append("")
    lines += _term_table(crit)
    if any(not r.required for t in _terms(resolved) for r in t.routes):
        lines += ["", "inputs marked ? are read when given"]
    return "\n".join(lines)


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


def _tree(root: Any) -> list[str]:
    lines: list[str] = []
    seen: set[int] = set()

    def walk(node: Any, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("`-- " if last else "|-- ")
        again = id(node) in seen and isinstance(node, (ir.Term, ir.Named))
        lines.append(prefix + branch + _label(node) + ("  (again)" if again else ""))
        if again:
            return
        seen.add(id(node))
        kids = _children(node)
        inner = prefix + ("" if top else ("    " if last else "|   "))
        for i, child in enumerate(kids):
            walk(child, inner, i == len(kids) - 1, False)

    walk(root, "", True, True)
    return lines


def weight_descriptions(crit) -> dict[str, str]:
    """``{term name: effective weight in words}`` for every logged term and composite."""
    resolved: ir.Resolved = crit._resolved
    names = [item.name for item in resolved.logged]
    constant = getattr(crit, "_constant_weights", None)
    if constant is not None:
        return {n: _number(float(w)) + (" (only logged)" if float(w) == 0 and _watched(resolved, n) else "")
                for n, w in zip(names, constant.tolist())}
    found: dict[int, list[str]] = {}

    def walk(node: Any, factor: list[str]) -> None:
        if isinstance(node, (ir.Term, ir.Named)):
            found.setdefault(id(node), []).append(" * ".join(factor) or "1")
        if isinstance(node, ir.Named):
            walk(node.value, factor)
        elif isinstance(node, ir.Balance):
            for arg in node.args:
                walk(arg, factor + [f"balance({node.method})"])
        elif isinstance(node, ir.Apply):
            if node.fn == "watch":
                for arg in node.args:
                    walk(arg, ["0 (only logged)"])
            elif node.fn == "detach":
                for arg in node.args:
                    walk(arg, ["0 (detached)"])
            elif node.fn == "sum":
                for sign, arg in zip(node.param("signs"), node.args):
                    walk(arg, factor + ([] if sign > 0 else ["-1"]))
            elif node.fn == "neg":
                walk(node.args[0], factor + ["-1"])
            elif node.fn == "product" and _linear_product(node):
                ops = ("*",) + tuple(node.param("ops"))
                scale = [(_factor_text(a) if op == "*" else f"1/{_factor_text(a)}")
                         for op, a in zip(ops, node.args) if a.kind != "loss"]
                for arg in node.args:
                    if arg.kind == "loss":
                        walk(arg, factor + scale)
            else:
                for arg in node.args:
                    walk(arg, ["depends on the term values"])

    walk(resolved.root, [])
    out = {}
    for item in resolved.logged:
        ways = found.get(id(item), ["0"])
        texts = [w for w in ways if not w.startswith("0 (")] or ways[:1]
        out[item.name] = texts[0] if len(texts) == 1 else " + ".join(f"({w})" for w in texts)
    return out


def _watched(resolved: ir.Resolved, name: str) -> bool:
    def walk(node: Any, inside: bool) -> bool:
        if isinstance(node, (ir.Term, ir.Named)) and node.name == name:
            return inside
        if isinstance(node, ir.Apply) and node.fn == "watch":
            inside = True
        return any(walk(child, inside) for child in _children(node))

    return walk(resolved.root, False)


def _linear_product(node: ir.Apply) -> bool:
    ops = ("*",) + tuple(node.param("ops"))
    losses = [op for op, a in zip(ops, node.args) if a.kind == "loss"]
    return losses == ["*"]


def _factor_text(node: Any) -> str:
    if isinstance(node, ir.Const):
        return _number(node.value)
    if isinstance(node, ir.Schedule):
        return f"{node.name}({_params(node.params)})"
    return "(a schedule expression)"


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
