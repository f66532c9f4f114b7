"""Resolution of calls to built-in functions: math, ``detach``/``watch``, schedules, ``balance``.

A mixin of the resolver (``resolve.py``): it uses the resolver's ``expr``, ``_apply``,
``_const_arg`` and ``_literal`` for operands and argument values.
"""

from __future__ import annotations

from typing import Any

from . import ast, ir
from .builtins import BALANCE_METHODS, BALANCE_PARAMS, Builtin
from .errors import LossArgumentError, LossTypeError, did_you_mean
from .resolve_facts import Facts
from .resolve_values import show, validate

__all__ = ["BuiltinCalls"]


class BuiltinCalls:
    """The built-in half of the resolver (``self.facts`` is the resolver's :class:`Facts`)."""

    facts: Facts

    def _refuse_watch_inside(self, args) -> None:
        """watch(...) adds exactly 0 and only logs; inside a calculation it would be a hidden 0
        (``log(watch(a))``, ``mse / watch(a)``), so it may only be added to the loss."""
        for arg in args:
            if self.facts.of(arg).watch_only:
                raise LossTypeError(
                    "watch(...) only logs a term; it cannot be part of a calculation",
                    span=arg.span,
                    hint="add it to the loss on its own, e.g. mse + watch(mae)",
                )

    def _builtin(self, node: ast.Call, builtin: Builtin) -> Any:
        low, high = builtin.operands
        n_operands = len(node.args) if high is None else min(len(node.args), high)
        if n_operands < low:
            what = "an operand" if low == 1 else f"at least {low} operands"
            raise LossArgumentError(
                f"{builtin.name} needs {what}, got {len(node.args)}",
                span=node.offsets,
                hint=builtin.summary,
            )
        model = builtin.params
        fields = list(model.model_fields)
        extra_args = node.args[n_operands:]
        if builtin.category == "balance" and extra_args:
            raise LossArgumentError(
                f"balance combines at most {high} terms, got {len(node.args)}",
                span=extra_args[0].offsets,
                hint="balance groups of terms separately, e.g. balance(balance(a, b, ...), c, ...)",
            )
        if len(extra_args) > len(fields):
            raise LossArgumentError(
                f"{builtin.name} takes {high if high is not None else 'any number of'} operand(s)"
                + (f" and at most {len(fields)} more arguments" if fields else ""),
                span=extra_args[len(fields)].offsets,
                hint=builtin.summary,
            )
        operands = tuple(self.expr(a) for a in node.args[:n_operands])
        if builtin.category == "balance":
            return self._balance(node, operands)
        values: dict[str, Any] = {}
        places: dict[str, tuple[int, int] | None] = {}
        for field_name, arg in zip(fields, extra_args):
            values[field_name] = self._const_arg(arg, builtin.name, field_name)
            places[field_name] = arg.offsets
        for kw in node.kwargs:
            if kw.name not in fields:
                close = did_you_mean(kw.name, fields)
                raise LossArgumentError(
                    f"{builtin.name} has no parameter '{kw.name}'",
                    span=kw.offsets,
                    hint=(close + " " if close else "") + builtin.summary,
                )
            self._keyword_value(builtin.name, kw, values, places)
        params = tuple(validate(builtin.name, model, values, places, node.offsets).items())
        if builtin.category == "schedule":
            return ir.Schedule(builtin.name, params, node.offsets)
        if builtin.category == "special":
            (operand,) = operands
            if builtin.name == "watch" and operand.kind != "loss":
                raise LossTypeError(
                    "watch needs a loss term to log",
                    span=node.offsets,
                    hint="watch a term such as watch(mae)",
                )
            if operand.kind == "const":
                return operand
            self._refuse_watch_inside(operands)
            return ir.Apply(builtin.name, operands, (), node.offsets, operand.kind)
        return self._apply(builtin.name, operands, params, node.offsets)

    def _balance(self, node: ast.Call, operands: tuple) -> ir.Balance:
        self._refuse_watch_inside(operands)
        for arg, operand in zip(node.args, operands):
            if operand.kind != "loss":
                raise LossTypeError(
                    "balance combines loss terms; this operand is a number",
                    span=arg.offsets,
                    hint="put weights outside: 0.5*balance(a, b, method=\"ema\")",
                )
        kwargs = {kw.name: kw for kw in node.kwargs}
        if "method" not in kwargs:
            raise LossArgumentError(
                "balance needs method=...",
                span=node.offsets,
                hint="methods: " + ", ".join(f'"{m}"' for m in BALANCE_METHODS),
            )
        method_kw = kwargs["method"]
        method = method_kw.value.value if isinstance(method_kw.value, ast.String) else None
        if method not in BALANCE_PARAMS:
            close = did_you_mean(str(method), BALANCE_METHODS) if method else None
            raise LossArgumentError(
                f"unknown balance method {show(method_kw.value)}",
                span=method_kw.offsets,
                hint=(close + " " if close else "")
                + "methods: "
                + ", ".join(f'"{m}"' for m in BALANCE_METHODS),
            )
        model = BALANCE_PARAMS[method]
        values: dict[str, Any] = {}
        places: dict[str, tuple[int, int] | None] = {}
        for kw in node.kwargs:
            if kw.name not in model.model_fields:
                close = did_you_mean(kw.name, list(model.model_fields))
                allowed = ", ".join(f for f in model.model_fields if f != "method") or "nothing else"
                raise LossArgumentError(
                    f'balance(method="{method}") has no parameter \'{kw.name}\'',
                    span=kw.offsets,
                    hint=(close + " " if close else "") + f"it takes {allowed}",
                )
            values[kw.name] = self._literal(kw.value, "balance", kw.name, kw.offsets)
            places[kw.name] = kw.offsets
        params = validate("balance", model, values, places, node.offsets)
        params.pop("method", None)
        return ir.Balance(method, operands, tuple(params.items()), node.offsets)

    # --- argument values ------------------------------------------------------------------
