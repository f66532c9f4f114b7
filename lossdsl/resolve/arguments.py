"""Argument values when resolving: pydantic validation with carets, and constant folding.

>>> from lossdsl.language.functions import OPERATORS
>>> fold(OPERATORS["multiply"], [2.0, 0.25], {"ops": ("*",)}, None)
0.5
"""

from __future__ import annotations

import json
import math
from typing import Any

import pydantic

from ..errors import LossArgumentError, LossInputError
from ..language.lazy import T
from ..language.registry import type_words
from ..syntax import ast
from ..syntax.unparse import unparse

__all__ = ["validate", "fold", "is_int_literal", "show", "as_written", "check_input_path", "TENSOR_INPUTS", "CALL_PARAMETERS"]

# the inputs that are always tensors: a path never reads into them
TENSOR_INPUTS = ("pred", "target")


def is_int_literal(arg: ast.Node) -> bool:
    """Whether ``arg`` is written as an integer (``order=1``, not ``order=1.0``)."""
    while isinstance(arg, ast.Neg):
        arg = arg.operand
    return isinstance(arg, ast.Number) and isinstance(arg.value, int)


def show(value: ast.Node) -> str:
    """A keyword value as the program writes it."""
    if isinstance(value, ast.String):
        return f'"{value.value}"'
    return unparse(value)


def validate(owner: str, model, values: dict, places: dict, call_span, hyper=None) -> dict[str, Any]:
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
                    described = f" ({h.name}: {type_words(h.annotation)})"
        if first["type"] == "missing":
            raise LossArgumentError(
                f"{owner} needs '{key}'",
                span=call_span,
                hint=f"give it as {owner}({key}=...){described}",
            ) from None
        reason = msg.removeprefix("Value error, ")
        bound = _BOUNDS.get(first["type"])
        if bound is not None and isinstance((first.get("ctx") or {}).get(bound[0]), float):
            reason = f"Input should be {bound[1]} {first['ctx'][bound[0]]:g}"  # 1e-12, not 0.000000000001
        if key is None or key not in values:
            raise LossArgumentError(f"bad arguments for {owner}", span=call_span, hint=reason) from None
        reason = reason.replace("Input should be", f"{key} must be", 1)
        raise LossArgumentError(
            f"{owner}: {key}={as_written(values[key])} is not allowed",
            span=places.get(key) or call_span,
            hint=reason + described,
        ) from None
    return {name: getattr(validated, name) for name in type(validated).model_fields}


# pydantic's error types of a range, with the key of their bound and the words for it
_BOUNDS = {
    "greater_than": ("gt", "greater than"),
    "greater_than_equal": ("ge", "greater than or equal to"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "less than or equal to"),
}


def as_written(value: Any) -> str:
    """A literal as the program writes it (``true``, ``none``, ``"ema"``, ``[1, 2]``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(as_written(v) for v in value) + "]"
    return str(value)


def fold(fn, values: list, params: dict, span) -> float | bool:
    """Evaluate a built-in on numbers when compiling: rows written with operators run on
    the Python numbers, torch functions on float64 scalars. A result that is not a finite
    real number is an error here, not a NaN at the first call."""
    try:
        if fn.inline:
            result = fn.run(*values, **params)
        else:
            wide = [T.tensor(float(v), dtype=T.float64.resolve()) for v in values]
            result = fn.run(*wide, **params)
            result = result.item() if hasattr(result, "item") else result
        if isinstance(result, bool) or fn.boolean:
            return bool(result)
        if isinstance(result, complex) or not math.isfinite(result):
            raise ValueError("not a finite real number")
    except (ArithmeticError, ValueError, TypeError) as exc:
        # in user words, not Python's ("math domain error", "float division by zero")
        if isinstance(exc, ZeroDivisionError):
            reason = "it divides by zero"
        elif isinstance(exc, OverflowError) or str(exc) == "not a finite real number":
            reason = "it overflows or is not a real number"
        else:
            reason = f"{fn.name} is not defined there"
        raise LossArgumentError(
            f"this constant expression has no finite value: {reason}",
            span=span,
            hint="check for division by zero, log of a negative number or overflow",
        ) from None
    return float(result)


# the names ``Loss.forward`` takes for itself: an input of that name could never be passed
CALL_PARAMETERS = ("step", "self")


def check_input_path(path: tuple[str, ...], span: Any) -> None:
    """An input path reads mapping keys or public attributes of the call's objects: never a
    private name, never an attribute of a tensor (``pred.grad``)."""
    for part in path:
        if part.startswith("_"):
            raise LossArgumentError(
                f"input reference '{'.'.join(path)}' reads a private name '{part}'",
                span=span,
                hint="input references read mapping keys or public attributes only",
            )
    if path[0] in CALL_PARAMETERS:
        raise LossInputError(
            f"no input can be called '{path[0]}': it is the loss call's own argument",
            span=span,
            hint="call the input something else (e.g. " + path[0] + "_in) and pass it as " + path[0] + "_in=...",
        )
    if len(path) > 1 and path[0] in TENSOR_INPUTS:
        raise LossInputError(
            f"'{'.'.join(path)}' reads an attribute of the tensor '{path[0]}'",
            span=span,
            hint="a path reads keys or attributes of the objects passed to the loss, not of tensors",
        )
