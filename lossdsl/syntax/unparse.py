"""AST to canonical text: ``parse(unparse(p)) == p`` for every program.

The canonical form writes ``input`` declarations first, puts spaces around binary operators,
writes ``^`` for powers, a bare name for a call without arguments, and only the brackets the
precedence needs.

>>> import lossdsl
>>> lossdsl.unparse(lossdsl.parse("0.7*huber(delta=1)+0.3*temporal_diff()"))
'0.7 * huber(delta=1) + 0.3 * temporal_diff'
>>> lossdsl.unparse(lossdsl.parse("not(pred<0)and x[:,none][...,0]<1"))
'not pred < 0 and x[:, none][..., 0] < 1'
"""

from __future__ import annotations

import json

from . import ast

__all__ = ["unparse"]

# Binding strength, lowest first: a child weaker than its context needs brackets.
_OR, _AND, _NOT, _COMPARE, _SUM, _PRODUCT, _UNARY, _POWER, _ATOM = range(1, 10)

_STRENGTH = {
    ast.Compare: _COMPARE,
    ast.Not: _NOT,
    ast.Sum: _SUM,
    ast.Product: _PRODUCT,
    ast.Neg: _UNARY,
    ast.Power: _POWER,
}


def _strength(node: ast.Node) -> int:
    if isinstance(node, ast.BoolOp):
        return _OR if node.op == "or" else _AND
    if isinstance(node, ast.Number) and node.value < 0:
        return _UNARY
    return _STRENGTH.get(type(node), _ATOM)


def _bracket(node: ast.Node, needed: int) -> str:
    text = unparse(node)
    return f"({text})" if _strength(node) < needed else text


def _number(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _value(node: ast.Node) -> str:
    if isinstance(node, ast.Number):
        return _number(node.value)
    if isinstance(node, ast.String):
        return json.dumps(node.value, ensure_ascii=False)
    if isinstance(node, ast.Bool):
        return "true" if node.value else "false"
    if isinstance(node, ast.NoneValue):
        return "none"
    if isinstance(node, ast.ListValue):
        return "[" + ", ".join(_value(item) for item in node.items) + "]"
    if isinstance(node, ast.InputRef):
        return ".".join(node.path)
    raise TypeError(f"not a keyword value: {type(node).__name__}")


def _item(node: ast.Node) -> str:
    """One item of an index: inside its brackets an expression needs none of its own."""
    if isinstance(node, ast.EllipsisItem):
        return "..."
    if isinstance(node, ast.NewAxis):
        return "none"
    if isinstance(node, ast.Slice):
        parts = [node.start, node.stop] + ([node.step] if node.step is not None else [])
        return ":".join("" if p is None else unparse(p) for p in parts)
    return unparse(node)


def _chain(node: ast.Node, needed: int, ops) -> str:
    # Operands of the same chain kind were bracketed in the source (else they would be
    # flat), so `needed` is one above the chain's own strength.
    parts = [_bracket(node.operands[0], needed)]
    for op, operand in zip(ops, node.operands[1:]):
        parts.append(f" {op} {_bracket(operand, needed)}")
    return "".join(parts)


def unparse(node: ast.Node) -> str:
    """Canonical text of a program or of any expression node.

    >>> import lossdsl
    >>> lossdsl.unparse(lossdsl.parse("a = mse; -(a+mae)**2"))
    'a = mse\\n-(a + mae) ^ 2'
    >>> lossdsl.unparse(lossdsl.parse("d = pred[:,none]; input w\\nmean(w*d[::2]^2)"))
    'input w\\nd = pred[:, none]\\nmean(w * d[::2] ^ 2)'
    """
    if not isinstance(node, ast.Node):
        # a str would otherwise reach the keyword-value writer and be called "not a keyword value"
        raise TypeError(
            f"unparse takes a node from lossdsl.parse, got {type(node).__name__}; "
            "for text write lossdsl.unparse(lossdsl.parse(text))"
        )
    if isinstance(node, ast.Program):
        lines = [unparse(d) for d in node.declarations]
        lines += [unparse(b) for b in node.bindings]
        lines.append(unparse(node.expr))
        return "\n".join(lines)
    if isinstance(node, ast.Declaration):
        return "input " + ", ".join(node.names)
    if isinstance(node, ast.Binding):
        return f"{node.name} = {unparse(node.value)}"
    if isinstance(node, ast.Number):
        return _number(node.value)
    if isinstance(node, ast.Call):
        if not node.args and not node.kwargs:
            return node.name
        parts = [unparse(a) for a in node.args]
        parts += [f"{k.name}={_value(k.value)}" for k in node.kwargs]
        return f"{node.name}({', '.join(parts)})"
    if isinstance(node, ast.BoolOp):
        return _chain(node, _strength(node) + 1, [node.op] * (len(node.operands) - 1))
    if isinstance(node, ast.Not):
        return "not " + _bracket(node.operand, _NOT)
    if isinstance(node, ast.Compare):
        # comparisons do not chain: an operand that is one keeps its brackets
        return f"{_bracket(node.left, _SUM)} {node.op} {_bracket(node.right, _SUM)}"
    if isinstance(node, (ast.Sum, ast.Product)):
        return _chain(node, _strength(node) + 1, node.ops)
    if isinstance(node, ast.Power):
        return f"{_bracket(node.base, _ATOM)} ^ {_bracket(node.exponent, _UNARY)}"
    if isinstance(node, ast.Neg):
        return "-" + _bracket(node.operand, _UNARY)
    if isinstance(node, ast.Index):
        return _bracket(node.base, _ATOM) + "[" + ", ".join(_item(i) for i in node.items) + "]"
    if isinstance(node, (ast.Slice, ast.EllipsisItem, ast.NewAxis)):
        return _item(node)
    if isinstance(node, ast.Keyword):
        return f"{node.name}={_value(node.value)}"
    return _value(node)
