"""The built-in functions of the language: one row each (DESIGN.md §2, §3, §3.1).

A row says everything about a function: its name, group, how many operands it takes, its
parameter model, what it runs (a torch function through :data:`~lossdsl.language.lazy.T`,
or a rule written with :mod:`~lossdsl.language.algebra`), its derivative rule, and a
summary. Resolution reads the name, operands, parameters and kinds; the program runs
``run``; the effective weights chain ``grad``. Adding a function is adding a row here.

``grad(args, out, **params)`` returns ``d out / d args[i]`` for every operand, written with
the algebra helpers so that it folds numbers, runs on tensors and records itself into a
graph; a row without ``grad`` passes no gradient (comparisons, ``sign``, ``detach``).
``inline`` rows are written with operators only: the program records their operations
instead of calling them as one function.

>>> FUNCTIONS["log"].run
LazyAttribute('torch.log')
>>> FUNCTIONS["mean"].group, FUNCTIONS["clamp"].params.__name__
('reduction', 'ClampParams')
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from pydantic import BaseModel

from . import algebra as A
from .lazy import T
from .params import (
    ClampParams,
    DiffParams,
    NoParams,
    NormParams,
    ReduceParams,
    SizeParams,
    SoftmaxParams,
    SoftplusParams,
    VarianceParams,
)

__all__ = ["Function", "FUNCTIONS", "OPERATORS", "KindError", "KINDS", "SCALAR_KINDS", "join_kinds", "article"]


class KindError(Exception):
    """An operand of the wrong kind; ``operand`` is its index (None: the call as a whole)."""

    def __init__(self, message: str, hint: str, operand: int | None = None) -> None:
        super().__init__(message)
        self.message, self.hint, self.operand = message, hint, operand


@dataclass(frozen=True)
class Function:
    """One built-in function. ``group``: ``operator``, ``elementwise``, ``comparison``,
    ``logical``, ``reduction``, ``shape``, ``size`` or ``special``."""

    name: str
    group: str
    run: Any
    operands: tuple[int, int | None] = (1, 1)
    params: type[BaseModel] = NoParams
    grad: Callable[..., tuple] | None = None
    summary: str = ""
    inline: bool = False

    def __reduce__(self):
        return (_row_named, (self.name,))

    @property
    def broadcasts(self) -> bool:
        """Whether operands of different shapes are broadcast against each other."""
        return self.group in ("operator", "comparison", "logical") or (
            self.group == "elementwise" and self.operands[1] != 1
        )

    @property
    def boolean(self) -> bool:
        """Whether the value is a condition (true/false) rather than a number."""
        return self.group in ("comparison", "logical")

    def result_kind(self, kinds: tuple[str, ...], params: dict) -> str:
        """The kind of a call on operands of ``kinds``; :class:`KindError` when not allowed."""
        widest = join_kinds(kinds)
        if self.group in ("reduction", "shape", "size"):
            for i, kind in enumerate(kinds):
                if kind in ("const", "schedule"):
                    raise KindError(
                        f"{self.name} needs a tensor, not {article(kind)}",
                        hint=f"{self.name} works on tensors such as pred or pred - target",
                        operand=i,
                    )
            if self.group == "size":
                return "schedule"
            if self.group == "shape":
                if "tensor" not in kinds:
                    raise KindError(
                        f"{self.name} needs a tensor with an axis, not a loss",
                        hint=f"apply {self.name} to a tensor before reducing it",
                        operand=0,
                    )
                return "tensor"
            # keepdim keeps every reduced axis at length 1: a tensor, even with no dim
            return "loss" if params.get("dim") is None and not params.get("keepdim") else "tensor"
        if self.name == "watch":
            if kinds[0] == "tensor":
                raise KindError(
                    "watch needs a loss, not a tensor",
                    hint="reduce it first, e.g. watch(mean(...))",
                    operand=0,
                )
            return "loss"
        return widest


# Kinds of values (DESIGN.md §3.1): const (a number known when compiling) < schedule (a
# number known at call time, no gradient) < loss (a 0-dim differentiable tensor) < tensor
# (any shape). An operation on several operands has the widest of their kinds.
KINDS = ("const", "schedule", "loss", "tensor")
# the kinds of the program's scalar top: where only losses and numbers meet
SCALAR_KINDS = frozenset({"const", "schedule", "loss"})


def join_kinds(kinds: Iterable[str]) -> str:
    """The kind of an operation on operands of these kinds: the widest of them.

    >>> join_kinds(["const", "loss"]), join_kinds(["loss", "tensor"]), join_kinds([])
    ('loss', 'tensor', 'const')
    """
    best = 0
    for kind in kinds:
        best = max(best, KINDS.index(kind))
    return KINDS[best]


def article(kind: str) -> str:
    """``"a loss"``, ``"a tensor"``, ...: a kind in a sentence."""
    return {"const": "a number", "schedule": "a schedule", "loss": "a loss", "tensor": "a tensor"}[kind]


# --- derivative rules (d out / d operand) ----------------------------------------------


def _product_grad(args: tuple, out: Any, ops: tuple) -> tuple:
    # With f_i = x_i (or 1/x_i after '/'), out = prod f; d out / d x_i = prod_{j != i} f_j
    # times 1 (or -f_i^2): prefix and suffix products keep it linear in the operands.
    factors = [a if op == "*" else A.divide(1.0, a) for a, op in zip(args, ("*",) + tuple(ops))]
    prefix = [1.0]
    for f in factors[:-1]:
        prefix.append(A.times(prefix[-1], f))
    partials = [None] * len(factors)
    suffix: Any = 1.0
    for i in range(len(factors) - 1, -1, -1):
        others = A.times(prefix[i], suffix)
        op = "*" if i == 0 else ops[i - 1]
        partials[i] = others if op == "*" else A.times(others, A.negate(A.times(factors[i], factors[i])))
        suffix = A.times(suffix, factors[i])
    return tuple(partials)


def _pow_grad(args: tuple, out: Any) -> tuple:
    # at the limits where the products would give 0 * inf: a^0 is 1 for every a (d/da = 0),
    # and 0^b is 0 for every b > 0 (d/db = 0), as autograd of the power has them
    base, exponent = args
    d_base = d_exponent = 0.0
    if not A.is_number(base) and not (A.is_number(exponent) and exponent == 0):
        d_base = _zero_where(exponent, A.times(exponent, base ** A.minus(exponent, 1)))
    if not A.is_number(exponent):
        d_exponent = _zero_where(out, A.times(out, A.log_of(base)))
    return d_base, d_exponent


def _zero_where(zero: Any, value: Any) -> Any:
    """``value``, and 0 where ``zero`` is 0."""
    if A.is_number(zero):
        return 0.0 if zero == 0 else value
    return T.where(zero == 0, 0.0, value)


def _selected(args: tuple, out: Any) -> tuple:
    # the derivative flows to the operand chosen; tensors tied for it share it evenly, as
    # torch.maximum's backward splits a tie of two (so max(r, r) passes 1 to r), and a number
    # bound tied with a tensor leaves it to the tensor, as a clamp does
    chosen = [0.0 if A.is_number(a) else A.indicator(a == out, out) for a in args]
    tied = [c for c in chosen if not A.is_number(c)]
    if not tied:
        return tuple(chosen)
    count = tied[0]
    for c in tied[1:]:
        count = A.plus(count, c)
    count = count if len(tied) == 1 else T.clamp(count, min=1.0)  # 0 where a number was chosen
    return tuple(c if A.is_number(c) or len(tied) == 1 else A.divide(c, count) for c in chosen)


def _clamp_grad(args: tuple, out: Any, min=None, max=None) -> tuple:  # noqa: A002
    x = args[0]
    inside = None
    if min is not None:
        inside = x >= min
    if max is not None:
        inside = (x <= max) if inside is None else inside & (x <= max)
    return (A.indicator(inside, out),)


def _where_grad(args: tuple, out: Any) -> tuple:
    cond = args[0]
    if A.is_number(cond):
        return (0.0, 1.0 if cond else 0.0, 0.0 if cond else 1.0)
    return (0.0, A.indicator(cond, out), A.indicator(~cond, out))


def _unary(rule: Callable[[Any, Any], Any]) -> Callable[..., tuple]:
    return lambda args, out, **params: (rule(args[0], out, **params),)


# --- computations that need a little logic around torch ---------------------------------


# These run inside a program, on tensors: tensor methods only (no torch import here).


def _all_dims(x: Any, dim: Any) -> Any:
    return tuple(range(x.dim())) if dim is None else dim


def _amax(x, dim=None, keepdim=False):
    return x.amax(dim=_all_dims(x, dim), keepdim=keepdim)


def _amin(x, dim=None, keepdim=False):
    return x.amin(dim=_all_dims(x, dim), keepdim=keepdim)


def _logsumexp(x, dim=None, keepdim=False):
    return x.logsumexp(dim=_all_dims(x, dim), keepdim=keepdim)


def _norm(x, dim=None, keepdim=False, p=2.0):
    return x.norm(p=p, dim=dim, keepdim=keepdim)


def _size(x, dim):
    return x.shape[dim]


def _index(x, items):
    return x[items]


def _detach(x):
    return x if A.is_number(x) else x.detach()


def _watch(x):
    return 0.0  # logged, never added: the program leaves watched terms out of sums


def _row(name, group, run, operands=(1, 1), params=NoParams, grad=None, summary="", inline=False):
    return name, Function(name, group, run, operands, params, grad, summary, inline)


_ELEMENTWISE = [
    _row("abs", "elementwise", T.abs, grad=_unary(lambda x, out: T.sign(x)), summary="absolute value"),
    _row("sign", "elementwise", T.sign, summary="-1, 0 or 1 (no gradient)"),
    _row("relu", "elementwise", T.relu, grad=_unary(lambda x, out: A.indicator(x > 0, out)), summary="max(x, 0)"),
    _row("sigmoid", "elementwise", T.sigmoid, grad=_unary(lambda x, out: out * (1 - out)), summary="1 / (1 + exp(-x))"),
    _row(
        "softplus", "elementwise", T.nn.functional.softplus, params=SoftplusParams,
        grad=_unary(lambda x, out, beta=1.0: T.sigmoid(A.times(beta, x))),
        summary="softplus(x, beta=1): log(1 + exp(beta x)) / beta",
    ),
    _row("tanh", "elementwise", T.tanh, grad=_unary(lambda x, out: 1 - out * out), summary="hyperbolic tangent"),
    _row("exp", "elementwise", T.exp, grad=_unary(lambda x, out: out), summary="exponential"),
    _row("log", "elementwise", T.log, grad=_unary(lambda x, out: A.divide(1.0, x)), summary="natural logarithm"),
    _row("log1p", "elementwise", T.log1p, grad=_unary(lambda x, out: A.divide(1.0, A.plus(x, 1.0))), summary="log(1 + x)"),
    _row("sqrt", "elementwise", T.sqrt, grad=_unary(lambda x, out: A.divide(0.5, out)), summary="square root"),
    _row("square", "elementwise", T.square, grad=_unary(lambda x, out: A.times(2.0, x)), summary="x^2"),
    _row(
        "clamp", "elementwise", A.clamp_within, params=ClampParams, grad=_clamp_grad,
        summary="clamp(x, min=, max=): x limited to [min, max]",
    ),
    _row(
        "min", "elementwise", A.smallest, operands=(2, None), grad=_selected,
        summary="smallest of its operands, elementwise",
    ),
    _row(
        "max", "elementwise", A.largest, operands=(2, None), grad=_selected,
        summary="largest of its operands, elementwise",
    ),
    _row(
        "where", "elementwise", T.where, operands=(3, 3), grad=_where_grad,
        summary="where(cond, a, b): a where cond holds, else b",
    ),
]

_REDUCTIONS = [
    _row("mean", "reduction", T.mean, params=ReduceParams, summary="mean(x, dim=none, keepdim=false)"),
    _row("sum", "reduction", T.sum, params=ReduceParams, summary="sum(x, dim=none, keepdim=false)"),
    _row("var", "reduction", T.var, params=VarianceParams, summary="var(x, dim=none, correction=1)"),
    _row("std", "reduction", T.std, params=VarianceParams, summary="std(x, dim=none, correction=1)"),
    _row("amax", "reduction", _amax, params=ReduceParams, summary="largest element (along dim)"),
    _row("amin", "reduction", _amin, params=ReduceParams, summary="smallest element (along dim)"),
    _row("logsumexp", "reduction", _logsumexp, params=ReduceParams, summary="log(sum(exp(x))) (along dim)"),
    _row("norm", "reduction", _norm, params=NormParams, summary="norm(x, p=2, dim=none): the vector p-norm"),
]

_SHAPE = [
    _row("diff", "shape", T.diff, params=DiffParams, summary="diff(x, n=1, dim=-1): n-th difference along dim"),
    _row("softmax", "shape", T.softmax, params=SoftmaxParams, summary="softmax(x, dim)"),
    _row("log_softmax", "shape", T.log_softmax, params=SoftmaxParams, summary="log_softmax(x, dim)"),
    _row("size", "size", _size, params=SizeParams, summary="size(x, dim): the length of an axis (a number)"),
]

_SPECIAL = [
    _row("detach", "special", _detach, summary="the value of x without its gradient"),
    _row("watch", "special", _watch, grad=lambda args, out: (0.0,), summary="computed and logged; adds 0 to the total", inline=True),
]

FUNCTIONS: dict[str, Function] = dict(_ELEMENTWISE + _REDUCTIONS + _SHAPE + _SPECIAL)

# Operators, named by what they do; the parser's operators map onto these rows.
OPERATORS: dict[str, Function] = dict(
    [
        _row("add", "operator", A.signed_sum, operands=(2, None), grad=lambda args, out, signs: tuple(float(s) for s in signs), inline=True),
        _row("multiply", "operator", A.product, operands=(2, None), grad=_product_grad, inline=True),
        _row("pow", "operator", operator.pow, operands=(2, 2), grad=_pow_grad, inline=True),
        _row("neg", "operator", operator.neg, grad=lambda args, out: (-1.0,), inline=True),
        *[_row(symbol, "comparison", op, operands=(2, 2), inline=True) for symbol, op in A.COMPARE.items()],
        _row("index", "shape", _index, summary="x[i, a:b, ..., none]: integers, slices, ... and new axes", inline=True),
        _row("and", "logical", T.logical_and, operands=(2, 2)),
        _row("or", "logical", T.logical_or, operands=(2, 2)),
        _row("not", "logical", T.logical_not),
    ]
)


def _row_named(name: str) -> Function:
    """The row of a function by name (how a row is pickled: by reference to this table)."""
    return OPERATORS[name] if name in OPERATORS else FUNCTIONS[name]
