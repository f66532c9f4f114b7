"""AST to canonical text: ``parse(unparse(p)) == p`` for every program.

The canonical form puts spaces around binary operators, writes ``^`` for powers, a bare name
for a call without arguments, and only the brackets the precedence needs.

>>> import lossdsl
>>> lossdsl.unparse(lossdsl.parse("0.7*huber(delta=1)+0.3*temporal_diff()"))
'0.7 * huber(delta=1) + 0.3 * temporal_diff'
"""

from __future__ import annotations

import json

from . import ast

__all__ = ["unparse"]

# Binding strength: a child weaker than its context needs brackets.
_SUM, _PRODUCT, _UNARY, _POWER, _ATOM = 1, 2, 3, 4, 5


def _strength(node: ast.Node) -> int:
    if isinstance(node, ast.Sum):
        return _SUM
    if isinstance(node, ast.Product):
        return _PRODUCT
    if isinstance(node, ast.Neg):
        return _UNARY
    if isinstance(node, ast.Power):
        return _POWER
    if isinstance(node, ast.Number) and node.value < 0:
        return _UNARY
    return _ATOM


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


def unparse(node: ast.Node) -> str:
    """Canonical text of a program or of any expression node.

    >>> import lossdsl
    >>> lossdsl.unparse(lossdsl.parse("a = mse; -(a+mae)**2"))
    'a = mse\\n-(a + mae) ^ 2'
    """
    if isinstance(node, ast.Program):
        lines = [unparse(b) for b in node.bindings]
        lines.append(unparse(node.expr))
        return "\n".join(lines)
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
    if isinstance(node, (ast.Sum, ast.Product)):
        # Operands of the same chain kind were bracketed in the source (else they would be
        # flat), so they need brackets to come back as they were.
        needed = _SUM + 1 if isinstance(node, ast.Sum) else _PRODUCT + 1
        parts = [_bracket(node.operands[0], needed)]
        for op, operand in zip(node.ops, node.operands[1:]):
            parts.append(f" {op} {_bracket(operand, needed)}")
        return "".join(parts)
    if isinstance(node, ast.Power):
        return f"{_bracket(node.base, _ATOM)} ^ {_bracket(node.exponent, _UNARY)}"
    if isinstance(node, ast.Neg):
        return "-" + _bracket(node.operand, _UNARY)
    if isinstance(node, ast.Keyword):
        return f"{node.name}={_value(node.value)}"
    return _value(node)
