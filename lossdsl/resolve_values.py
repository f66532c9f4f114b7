"""Argument values at resolution: pydantic validation with carets, and constant folding.

>>> from lossdsl.resolve_values import fold
>>> fold("product", [2.0, 0.25], {"ops": ("*",)}, None)
0.5
"""

from __future__ import annotations

import json
import math
from typing import Any

import pydantic

from . import ast, ir
from .errors import LossArgumentError
from .registry import _type_words
from .unparse import unparse

__all__ = ["validate", "fold", "fold_factors", "fold_addends", "is_int_literal", "show"]

_UNARY_MATH = {
    "log": math.log,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "abs": abs,
}


def _is_int_literal(arg: ast.Node) -> bool:
    while isinstance(arg, ast.Neg):
        arg = arg.operand
    return isinstance(arg, ast.Number) and isinstance(arg.value, int)


def _show(value: ast.Node) -> str:
    if isinstance(value, ast.String):
        return f'"{value.value}"'
    return unparse(value)


def _validate(owner, model, values, places, call_span, hyper=None) -> dict[str, Any]:
    """Validate ``values`` with a pydantic model; errors point at the ``key=value``."""
    try:
        validated = model.model_validate(values)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else None
        msg = first["msg"]
        described = ""
        if hyper is not None and key is not None:
            for h in hyper:
                if h.name == key:
                    described = f" ({h.name}: {_type_words(h.annotation)})"
        if first["type"] == "missing":
            raise LossArgumentError(
                f"{owner} needs '{key}'",
                span=call_span,
                hint=f"give it as {owner}({key}=...){described}",
            ) from None
        if key is None or key not in values:
            reason = msg.removeprefix("Value error, ")
            raise LossArgumentError(
                f"bad arguments for {owner}", span=call_span, hint=reason
            ) from None
        reason = msg.removeprefix("Value error, ")
        reason = reason.replace("Input should be", f"{key} must be", 1)
        reason = reason.replace("List should have", f"{key} must have", 1).replace(" after validation", "")
        shown = _as_written(values[key])
        if len(shown) > 40:  # the caret shows the value; the message names it
            shown = shown[:30] + "..."
        raise LossArgumentError(
            f"{owner}: {key}={shown} is not allowed",
            span=places.get(key) or call_span,
            hint=reason + described,
        ) from None
    return {name: getattr(validated, name) for name in type(validated).model_fields}


def _as_written(value: Any) -> str:
    """A literal as the program writes it (``true``, ``none``, ``"ema"``, ``[1, 2]``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_as_written(v) for v in value) + "]"
    return str(value)


def _fold(fn: str, values: list[float], params: dict, span) -> float:
    """Evaluate an operation on constants at compile time."""
    try:
        if fn == "sum":
            result = math.fsum(s * v for s, v in zip(params["signs"], values))
        elif fn == "product":
            result = values[0]
            for op, v in zip(params["ops"], values[1:]):
                result = result * v if op == "*" else result / v
        elif fn == "pow":
            result = values[0] ** values[1]
        elif fn == "neg":
            result = -values[0]
        elif fn in _UNARY_MATH:
            result = _UNARY_MATH[fn](values[0])
        elif fn == "min":
            result = min(values)
        elif fn == "max":
            result = max(values)
        elif fn == "clamp":
            result = values[0]
            if params.get("min") is not None:
                result = max(result, params["min"])
            if params.get("max") is not None:
                result = min(result, params["max"])
        else:
            raise ValueError(fn)
        if isinstance(result, complex) or not math.isfinite(result):
            raise ValueError("not a finite real number")
    except (ArithmeticError, ValueError) as exc:
        # in user words, not Python's ("math domain error", "float division by zero")
        if isinstance(exc, ZeroDivisionError):
            reason = "it divides by zero"
        elif isinstance(exc, OverflowError) or str(exc) == "not a finite real number":
            reason = "it overflows or is not a real number"
        else:
            reason = f"{fn} is not defined there"
        raise LossArgumentError(
            f"this constant expression has no finite value: {reason}",
            span=span,
            hint="check for division by zero, log of a negative number or overflow",
        ) from None
    return float(result)


def fold_factors(args: tuple, ops: tuple[str, ...], span) -> tuple[tuple, tuple[str, ...]]:
    """The operands of a product with two or more numbers among them folded into one
    coefficient in front: ``mse*2*mae/4`` is ``0.5 * mse * mae``.

    A product with one number is left as written (its number is already one multiply, and
    tools that edit the text find it in its place).

    >>> from lossdsl import ir
    >>> x = ir.Schedule("after", (("steps", 1),), None)
    >>> args, ops = fold_factors((x, ir.Const(2.0), ir.Const(4.0)), ("*", "/"), None)
    >>> args[0].value, args[1] is x, ops
    (0.5, True, ('*',))
    """
    signs = ("*",) + tuple(ops)
    numbers = 0
    for arg, op in zip(args, signs):
        if arg.kind == "const":
            numbers += 1
            if op == "/" and arg.value == 0:
                # `mse/0` would only show up as inf at the first call: say so now
                raise LossArgumentError(
                    "division by zero",
                    span=arg.span or span,
                    hint="divide by a non-zero number, or multiply by a weight instead",
                )
    if numbers < 2:
        return args, tuple(ops)
    coefficient = 1.0
    kept, kept_ops = [], []
    for arg, op in zip(args, signs):
        if arg.kind != "const":
            kept.append(arg)
            kept_ops.append(op)
        else:
            coefficient = coefficient * arg.value if op == "*" else coefficient / arg.value
    if not math.isfinite(coefficient):
        raise LossArgumentError(
            "the numbers in this product overflow",
            span=span,
            hint="use numbers whose product is a finite double-precision value",
        )
    return (ir.Const(coefficient, span), *kept), tuple(kept_ops)


def fold_addends(args: tuple, signs: tuple[int, ...], span) -> tuple[tuple, tuple[int, ...]]:
    """The operands of a sum with two or more numbers among them, the numbers added up into
    one constant at the end: ``1 + mse - 0.5 + mae`` is ``mse + mae + 0.5``.

    >>> from lossdsl import ir
    >>> x = ir.Schedule("after", (("steps", 1),), None)
    >>> args, signs = fold_addends((ir.Const(1.0), x, ir.Const(0.25)), (1, -1, -1), None)
    >>> args[0] is x, args[1].value, signs
    (True, 0.75, (-1, 1))
    """
    if sum(1 for a in args if a.kind == "const") < 2:
        return args, signs
    kept = [(a, s) for a, s in zip(args, signs) if a.kind != "const"]
    constant = fold("sum", [a.value for a in args if a.kind == "const"],
                    {"signs": [s for a, s in zip(args, signs) if a.kind == "const"]}, span)
    return (*(a for a, _ in kept), ir.Const(constant, span)), (*(s for _, s in kept), 1)


validate = _validate
fold = _fold
is_int_literal = _is_int_literal
show = _show
