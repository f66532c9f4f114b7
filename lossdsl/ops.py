"""Runtime math on term values: the operations of the language and their local derivatives.

Values are 0-dim tensors or Python floats (constants). ``partials(fn, args, out, params)``
gives ``d out / d args[i]`` for each argument; the compiler chains them into the effective
weight ``d total / d term`` of every term (DESIGN.md §4, §9) without an autograd pass.

>>> import torch
>>> from lossdsl.ops import apply, partials
>>> x = torch.tensor(4.0)
>>> float(apply("sqrt", [x], {}))
2.0
>>> float(partials("sqrt", [x], apply("sqrt", [x], {}), {})[0])
0.25
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["apply", "divide", "partials", "CONSTANT_PARTIALS"]

Value = Any  # Tensor | float

# Operations whose local derivatives never depend on the values.
CONSTANT_PARTIALS = frozenset({"sum", "neg", "detach", "watch", "named"})


def _extreme(a: Value, b: Value, smaller: bool) -> Value:
    """``min(a, b)`` or ``max(a, b)`` of tensors and constants (a constant clamps the tensor)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.minimum(a, b) if smaller else torch.maximum(a, b)
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        if a != a or b != b:  # NaN wins, as in torch.minimum (Python's min keeps the first)
            return math.nan
        return min(a, b) if smaller else max(a, b)
    tensor, const = (a, b) if isinstance(a, Tensor) else (b, a)
    const = _in_range(const, tensor)
    return torch.clamp(tensor, max=const) if smaller else torch.clamp(tensor, min=const)


# the largest finite value of each floating dtype a loss meets; made once and never changed
# (torch.compile guards on what a traced call reads from it)
_LARGEST = {d: torch.finfo(d).max for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def _in_range(const: float | None, tensor: Tensor) -> float | None:
    """``const`` as the tensor's dtype sees it: a bound beyond the dtype's range is infinite
    (torch.clamp refuses a bound it cannot convert; ``max(mse, 1e300)`` in float32 is inf)."""
    if const is None or not tensor.is_floating_point():
        return const
    largest = _LARGEST.get(tensor.dtype)
    if largest is None:
        largest = torch.finfo(tensor.dtype).max
    if abs(const) > largest and const == const:
        return math.copysign(math.inf, const)
    return const


def _host(fn: str, args: Sequence[float]) -> float:
    """An operation on Python numbers (schedule values, constants) with IEEE results: where
    Python raises (``1/0``, ``log(0)``, ``exp(1000)``) or turns complex (``(-1)**0.5``), the
    value is what the same operation on float64 tensors gives (inf, nan), never an exception."""
    try:
        if fn == "log":
            out = math.log(args[0])
        elif fn == "exp":
            out = math.exp(args[0])
        elif fn == "sqrt":
            out = math.sqrt(args[0])
        elif fn == "pow":
            out = args[0] ** args[1]
        else:  # "/"
            out = args[0] / args[1]
        if not isinstance(out, complex):
            return out
    except (ArithmeticError, ValueError):
        pass
    x = [torch.tensor(float(a), dtype=torch.float64) for a in args]
    if fn in ("log", "exp", "sqrt"):
        return float(getattr(torch, fn)(x[0]))
    return float(x[0] ** x[1] if fn == "pow" else x[0] / x[1])


def divide(a: Value, b: Value) -> Value:
    """``a / b``; two Python numbers divide as tensors would (``1/0`` is inf, ``0/0`` nan).

    >>> divide(1.0, 0.0), divide(-2.0, 4.0)
    (inf, -0.5)
    """
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return a / b
    return _host("/", (a, b))


def _unary(fn: str, x: Value) -> Value:
    if not isinstance(x, Tensor):
        return abs(x) if fn == "abs" else _host(fn, (x,))
    if fn == "log":
        return torch.log(x)
    if fn == "exp":
        return torch.exp(x)
    if fn == "sqrt":
        return torch.sqrt(x)
    return torch.abs(x)


def apply(fn: str, args: Sequence[Value], params: dict) -> Value:
    """Compute one operation of the language on term values.

    Python numbers (constants, schedule values read on the host) follow IEEE arithmetic as
    tensors do, and a constant bound beyond a tensor's dtype is infinite, so a call gives
    inf or NaN for the non-finite policy to handle instead of raising:

    >>> apply("log", [0.0], {}), apply("product", [1.0, 0.0], {"ops": ("/",)})
    (-inf, inf)
    >>> float(apply("max", [torch.tensor(1.0), 1e300], {}))
    inf
    """
    if fn == "sum":
        total = None
        for sign, a in zip(params["signs"], args):
            if total is None:
                total = a if sign > 0 else -a
            else:
                total = total + a if sign > 0 else total - a
        return total
    if fn == "product":
        out = args[0]
        for op, a in zip(params["ops"], args[1:]):
            out = out * a if op == "*" else divide(out, a)
        return out
    if fn == "pow":
        base, exponent = args
        if isinstance(base, Tensor) or isinstance(exponent, Tensor):
            return base**exponent
        return _host("pow", (base, exponent))
    if fn == "neg":
        return -args[0]
    if fn in ("log", "exp", "sqrt", "abs"):
        return _unary(fn, args[0])
    if fn == "min":
        out = args[0]
        for a in args[1:]:
            out = _extreme(out, a, smaller=True)
        return out
    if fn == "max":
        out = args[0]
        for a in args[1:]:
            out = _extreme(out, a, smaller=False)
        return out
    if fn == "clamp":
        low, high = params.get("min"), params.get("max")
        if not isinstance(args[0], Tensor):  # a schedule's value computed on the host
            x = args[0] if low is None or args[0] != args[0] else max(args[0], low)
            return x if high is None or x != x else min(x, high)
        return torch.clamp(args[0], min=_in_range(low, args[0]), max=_in_range(high, args[0]))
    if fn == "detach":
        return args[0].detach() if isinstance(args[0], Tensor) else args[0]
    if fn == "watch":
        return 0.0
    if fn == "named":
        return args[0]
    raise ValueError(f"unknown operation {fn!r}")


def partials(fn: str, args: Sequence[Value], out: Value, params: dict) -> list[Value]:
    """``d out / d args[i]`` for each argument, from detached values."""
    if fn == "sum":
        return [float(s) for s in params["signs"]]
    if fn == "neg":
        return [-1.0]
    if fn in ("detach", "watch"):
        return [0.0]
    if fn == "named":
        return [1.0]
    if fn == "product":
        return _product_partials(args, ("*",) + tuple(params["ops"]))
    if fn == "pow":
        base, exponent = args
        d_base = exponent * base ** (exponent - 1)
        d_exp = out * (torch.log(base) if isinstance(base, Tensor) else math.log(base)) if _positive(base) else 0.0
        return [d_base, d_exp]
    if fn == "log":
        return [1.0 / args[0]]
    if fn == "exp":
        return [out]
    if fn == "sqrt":
        return [0.5 / out]
    if fn == "abs":
        x = args[0]
        return [torch.sign(x) if isinstance(x, Tensor) else math.copysign(1.0, x) if x else 0.0]
    if fn in ("min", "max", "clamp"):
        # The derivative flows to the argument that was selected (ties: all of them).
        return [_selected(a, out) for a in args]
    raise ValueError(f"unknown operation {fn!r}")


def _product_partials(args: Sequence[Value], ops: Sequence[str]) -> list[Value]:
    """``d/d args[i]`` of ``args[0] op args[1] op ...``: the product of the other operands,
    from prefix and suffix products (linear in the operands, and no division by the operand
    itself, which may be 0); a divided operand also gets ``d(1/x)/dx = -1/x^2``."""
    n = len(args)
    prefix: list[Value] = [1.0] * (n + 1)
    for i, (a, op) in enumerate(zip(args, ops)):
        prefix[i + 1] = prefix[i] * a if op == "*" else _divide(prefix[i], a)
    result: list[Value] = [0.0] * n
    suffix: Value = 1.0
    for i in range(n - 1, -1, -1):
        a, others = args[i], prefix[i] * suffix
        result[i] = others if ops[i] == "*" else _divide(-others, a * a)
        suffix = suffix * a if ops[i] == "*" else _divide(suffix, a)
    return result


def _divide(a: Value, b: Value) -> Value:
    """``a / b``, where Python floats divided by 0 give infinity or NaN as tensors do."""
    if isinstance(a, Tensor) or isinstance(b, Tensor) or b != 0:
        return a / b
    return math.copysign(math.inf, a) * math.copysign(1.0, b) if a else math.nan


def _positive(x: Value) -> bool:
    return isinstance(x, Tensor) or x > 0


def _selected(a: Value, out: Value) -> Value:
    if isinstance(a, Tensor) or isinstance(out, Tensor):
        return torch.as_tensor(a == out).to(out.dtype if isinstance(out, Tensor) else torch.float32)
    return 1.0 if a == out else 0.0
