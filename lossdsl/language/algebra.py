"""Arithmetic that works alike on Python numbers, tensors and ``torch.fx`` proxies.

The function table's computations and derivative rules are written with these helpers, so
the same rule folds constants when compiling (Python numbers), runs on tensors, and records
itself into a program's graph when called with proxies. Numbers are folded and identities
skipped (``1 * x`` is ``x``), so a rule adds no node for a factor that is known to be 1.

>>> times(2, 3), times(1, "x"), plus(0, "y"), minus(5, 2)
(6, 'x', 'y', 3)
"""

from __future__ import annotations

import math
import operator
from numbers import Number
from typing import Any, Sequence

from .lazy import T

__all__ = [
    "is_number",
    "plus",
    "minus",
    "times",
    "divide",
    "negate",
    "log_of",
    "indicator",
    "signed_sum",
    "product",
    "extreme",
    "smallest",
    "largest",
    "clamp_within",
]


def is_number(x: Any) -> bool:
    """A Python number (bool included), as opposed to a tensor or a graph proxy."""
    return isinstance(x, Number)


def plus(a: Any, b: Any) -> Any:
    if is_number(a) and a == 0:
        return b
    if is_number(b) and b == 0:
        return a
    return a + b


def minus(a: Any, b: Any) -> Any:
    if is_number(b) and b == 0:
        return a
    return a - b


def times(a: Any, b: Any) -> Any:
    if is_number(a) and is_number(b):
        return a * b
    if is_number(a) and a == 1:
        return b
    if is_number(b) and b == 1:
        return a
    if is_number(a) and a == -1:
        return -b
    if is_number(b) and b == -1:
        return -a
    return a * b


def divide(a: Any, b: Any) -> Any:
    if is_number(b) and b == 1:
        return a
    return a / b


def negate(a: Any) -> Any:
    return -a


def log_of(x: Any) -> Any:
    """``log(x)``; a non-positive number gives NaN (its derivative path then says so)."""
    if is_number(x):
        return math.log(x) if x > 0 else math.nan
    return T.log(x)


def indicator(condition: Any, like: Any) -> Any:
    """``condition`` as 0/1 in the dtype of ``like`` (a Python bool stays a number)."""
    if is_number(condition):
        return 1.0 if condition else 0.0
    if is_number(like):
        return condition.float()
    return condition.type_as(like)


def signed_sum(*values: Any, signs: Sequence[int], fold: bool = True) -> Any:
    """``s_0 v_0 + s_1 v_1 + ...`` with signs ±1, left to right (``a + b - c``). ``fold``:
    drop additions of 0 (not for tensors, where ``+ 0.0`` makes class indices floats)."""
    add, sub = (plus, minus) if fold else (operator.add, operator.sub)
    total = values[0] if signs[0] > 0 else negate(values[0])
    for sign, value in zip(signs[1:], values[1:]):
        total = add(total, value) if sign > 0 else sub(total, value)
    return total


def product(*values: Any, ops: Sequence[str], fold: bool = True) -> Any:
    """``v_0 op_1 v_1 op_2 ...`` with ops ``*`` or ``/``, left to right. ``fold``: drop
    factors of 1 (as :func:`signed_sum`)."""
    mul, div = (times, divide) if fold else (operator.mul, operator.truediv)
    out = values[0]
    for op, value in zip(ops, values[1:]):
        out = mul(out, value) if op == "*" else div(out, value)
    return out


def clamp_within(x: Any, min: Any = None, max: Any = None) -> Any:  # noqa: A002
    """``x`` limited to ``[min, max]``; a bound beyond ``x``'s dtype is infinite there
    (``clamp(mse, max=1e300)`` of a float32 loss has no upper bound, never an overflow error)."""
    if is_number(x):
        low = x if min is None else (x if x > min else min)
        return low if max is None else (low if low < max else max)
    if not x.is_floating_point():  # class indices and a number: floats, as torch promotes them
        x = x.to(T.get_default_dtype())
    # new_tensor rounds a bound beyond the dtype to inf (new_full would refuse it)
    low = None if min is None else x.new_tensor(min)
    high = None if max is None else x.new_tensor(max)
    return x.clamp(min=low, max=high)


def _pair_extreme(a: Any, b: Any, smaller: bool) -> Any:
    if is_number(a) and is_number(b):
        return min(a, b) if smaller else max(a, b)
    if is_number(a):
        a, b = b, a
    if is_number(b):  # a number bounds the tensor
        return clamp_within(a, max=b) if smaller else clamp_within(a, min=b)
    return T.minimum(a, b) if smaller else T.maximum(a, b)


def extreme(*values: Any, smaller: bool) -> Any:
    """The smallest (``smaller``) or largest of the operands, elementwise."""
    out = values[0]
    for value in values[1:]:
        out = _pair_extreme(out, value, smaller)
    return out


# min/max are calls of the program, not recorded operations: whether an operand is a number
# (a schedule's value) is known only when the program runs.
def smallest(*values: Any) -> Any:
    """The smallest of the operands, elementwise: ``smallest(2.0, 3.0)`` is ``2.0``."""
    return extreme(*values, smaller=True)


def largest(*values: Any) -> Any:
    """The largest of the operands, elementwise: ``largest(2.0, 3.0)`` is ``3.0``."""
    return extreme(*values, smaller=False)


# The operators of comparisons, by the symbol the language writes.
COMPARE = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
