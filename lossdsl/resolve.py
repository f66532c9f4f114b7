"""AST to resolved program: names, kinds, hyperparameters and input routes (DESIGN.md §3).

Name resolution order: binding -> registered term -> built-in function -> error with
suggestions. Constant sub-expressions are folded here, so ``2*0.5*mse`` costs one multiply.

>>> import lossdsl
>>> from lossdsl.resolve import resolve
>>> r = resolve(lossdsl.parse("recon = huber(delta=2); 0.7*recon + 0.3*mae"))
>>> [t.name for t in r.logged]
['recon', 'mae']
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import pydantic

from . import ast, ir
from .builtins import BALANCE_METHODS, BALANCE_PARAMS, BUILTINS, Builtin
from .errors import (
    LossArgumentError,
    LossDSLError,
    LossNameError,
    LossTypeError,
    did_you_mean,
)
from .registry import Registry, TermSpec, _type_words, registry as default_registry
from .unparse import unparse

__all__ = ["resolve", "MAX_TERMS"]

MAX_TERMS = 256
_UNARY_MATH = {
    "log": math.log,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "abs": abs,
}


def resolve(
    program: ast.Program,
    source: str | None = None,
    *,
    terms: Mapping[str, TermSpec] | None = None,
    registry: Registry | None = None,
) -> ir.Resolved:
    """Bind every name of ``program`` and check kinds and arguments.

    ``terms`` are extra term specs for this program only. Errors carry spans but not the
    source; the public entry point (:func:`lossdsl.compile`) attaches it.
    """
    return _Resolver(terms or {}, registry or default_registry).run(program, source)


class _Resolver:
    def __init__(self, local: Mapping[str, TermSpec], reg: Registry) -> None:
        self.local = local
        self.registry = reg
        self.bindings: dict[str, ast.Binding] = {}
        self.all_bindings: set[str] = set()
        self.resolved: dict[str, Any] = {}
        self.used: set[str] = set()
        self.terms: list[ir.Term] = []
        self.named: list[ir.Named] = []
        self.order: list[Any] = []  # terms and named composites as they appear

    # --- program --------------------------------------------------------------------------

    def run(self, program: ast.Program, source: str | None) -> ir.Resolved:
        # Every binding name, so that a use above the definition says so instead of "unknown".
        self.all_bindings = {b.name for b in program.bindings}
        for binding in program.bindings:
            if binding.name in self.bindings:
                raise LossNameError(
                    f"'{binding.name}' is bound twice",
                    span=binding.name_span,
                    hint="give each binding its own name",
                )
            if binding.name in BUILTINS:
                raise LossNameError(
                    f"'{binding.name}' is a built-in function and cannot be rebound",
                    span=binding.name_span,
                    hint=f"pick another name, e.g. '{binding.name}_term'",
                )
            self.bindings[binding.name] = binding
            self.resolved[binding.name] = self._binding_value(binding)
        root = self.expr(program.expr)
        for binding in program.bindings:
            if binding.name not in self.used:
                raise LossNameError(
                    f"binding '{binding.name}' is never used",
                    span=binding.name_span,
                    hint=f"use it in the expression, or write watch({binding.name}) to only log it",
                )
        if root.kind != "loss":
            raise LossTypeError(
                "the expression has no loss term",
                span=program.expr.offsets,
                hint="a program needs at least one term, e.g. mse or 0.5*huber(delta=1)",
            )
        if not _contributes(root):
            raise LossTypeError(
                "every term is inside watch(...), so the loss is always 0",
                span=program.expr.offsets,
                hint="add a term outside watch, e.g. mse + watch(mae)",
            )
        self._name_terms()
        read = frozenset(route.path[0] for t in self.terms for route in t.routes)
        return ir.Resolved(
            source=source if source is not None else unparse(program),
            canonical=unparse(program),
            root=root,
            logged=tuple(self.order),
            inputs_read=read,
        )

    def _binding_value(self, binding: ast.Binding) -> Any:
        value = binding.value
        if isinstance(value, ast.Call) and self._term_spec(value.name) is not None and (
            value.name not in self.bindings or value.name == binding.name
        ):
            # A binding that is exactly one term call: the term is logged under the binding's name.
            return self.call(value, log_name=binding.name)
        node = self.expr(value)
        # `w = watch(mae)` is an alias: the watched term is logged already, and the watch
        # itself has no value to log.
        if node.kind == "loss" and not isinstance(node, (ir.Term, ir.Named)) and not _only_watches(node):
            node = ir.Named(binding.name, node, binding.offsets)
            self.named.append(node)
            self.order.append(node)
        return node

    def _name_terms(self) -> None:
        # Binding names are the user's and stay as written (each is logged once); repeats of
        # a function name get _2, _3, ... in source order, skipping names already taken.
        taken = {item.name for item in self.order if item.name in self.all_bindings}
        counts: dict[str, int] = {}
        for item in self.order:
            base = item.name
            if base in self.all_bindings:
                continue
            count = counts.get(base, 0) + 1
            name = base if count == 1 else f"{base}_{count}"
            while name in taken:
                count += 1
                name = f"{base}_{count}"
            counts[base] = count
            taken.add(name)
            object.__setattr__(item, "name", name)

    # --- expressions ----------------------------------------------------------------------

    def expr(self, node: ast.Node) -> Any:
        if isinstance(node, ast.Number):
            return ir.Const(float(node.value), node.offsets)
        if isinstance(node, ast.Neg):
            inner = self.expr(node.operand)
            return self._apply("neg", (inner,), (), node.offsets)
        if isinstance(node, ast.Sum):
            operands = tuple(self.expr(o) for o in node.operands)
            signs = (1,) + tuple(1 if op == "+" else -1 for op in node.ops)
            return self._apply("sum", operands, (("signs", signs),), node.offsets)
        if isinstance(node, ast.Product):
            operands = tuple(self.expr(o) for o in node.operands)
            return self._apply("product", operands, (("ops", node.ops),), node.offsets)
        if isinstance(node, ast.Power):
            base, exponent = self.expr(node.base), self.expr(node.exponent)
            return self._apply("pow", (base, exponent), (), node.offsets)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise LossTypeError(f"unexpected {type(node).__name__} here", span=node.offsets)

    def _apply(self, fn: str, args: tuple, params: tuple, span) -> Any:
        if fn != "sum":
            _refuse_watch_inside(args)
        kind = ir.max_kind(*(a.kind for a in args))
        if kind == "const":
            return ir.Const(_fold(fn, [a.value for a in args], dict(params), span), span)
        return ir.Apply(fn, args, params, span, kind)

    def call(self, node: ast.Call, log_name: str | None = None) -> Any:
        name = node.name
        if name in self.bindings and log_name is None:
            return self._binding_ref(node)
        spec = self._term_spec(name)
        if spec is not None:
            return self._term(node, spec, log_name or name)
        if name in BUILTINS:
            return self._builtin(node, BUILTINS[name])
        if name in self.all_bindings:  # used before its definition
            return self._binding_ref(node)
        candidates = list(self.bindings) + list(self.registry) + list(self.local) + list(BUILTINS)
        raise LossNameError(
            f"unknown loss term '{name}'",
            span=node.name_span,
            hint=did_you_mean(name, candidates)
            or "see `lossdsl terms` for the catalogue, or register one with @lossdsl.term",
        )

    def _binding_ref(self, node: ast.Call) -> Any:
        name = node.name
        if node.args or node.kwargs:
            raise LossArgumentError(
                f"'{name}' is a binding and takes no arguments",
                span=node.offsets,
                hint=f"write '{name}' alone, or put the arguments in its definition",
            )
        if name not in self.resolved:
            raise LossNameError(
                f"'{name}' is used before it is defined",
                span=node.name_span,
                hint="define a binding on an earlier line than its first use",
            )
        self.used.add(name)
        return self.resolved[name]

    def _term_spec(self, name: str) -> TermSpec | None:
        if name in self.local:
            return self.local[name]
        if name in self.registry:
            return self.registry[name]
        return None

    # --- term calls -----------------------------------------------------------------------

    def _term(self, node: ast.Call, spec: TermSpec, log_name: str) -> ir.Term:
        if len(self.terms) >= MAX_TERMS:
            raise LossDSLError(
                f"the program has more than {MAX_TERMS} terms",
                span=node.offsets,
                hint="combine terms into fewer calls or split the loss",
            )
        hyper_names = spec.hyper_names
        if len(node.args) > len(hyper_names):
            extra = node.args[len(hyper_names)]
            raise LossArgumentError(
                f"{spec.name} takes at most {len(hyper_names)} positional "
                f"argument{'' if len(hyper_names) == 1 else 's'}, got {len(node.args)}",
                span=extra.offsets,
                hint=f"{spec.signature()}",
            )
        values: dict[str, Any] = {}
        places: dict[str, tuple[int, int] | None] = {}
        for param, arg in zip(hyper_names, node.args):
            values[param] = self._const_arg(arg, spec.name, param)
            places[param] = arg.offsets
        routes: dict[str, ir.Route] = {}
        for kw in node.kwargs:
            if kw.name in spec.input_names:
                routes[kw.name] = ir.Route(kw.name, self._route_path(kw, spec), required=True)
            elif kw.name in hyper_names:
                if kw.name in values:
                    raise LossArgumentError(
                        f"{spec.name} got '{kw.name}' both by position and by keyword",
                        span=kw.offsets,
                        hint="give it once",
                    )
                values[kw.name] = self._literal(kw.value, spec.name, kw.name, kw.offsets)
                places[kw.name] = kw.offsets
            else:
                known = list(hyper_names) + list(spec.input_names)
                close = did_you_mean(kw.name, known)
                takes = ", ".join(hyper_names) or "no hyperparameters"
                raise LossArgumentError(
                    f"{spec.name} has no parameter '{kw.name}'",
                    span=kw.offsets,
                    hint=(close + " " if close else "")
                    + f"{spec.name} takes {takes}; inputs: {', '.join(spec.input_names)}",
                )
        hyper = _validate(spec.name, spec.model, values, places, node.offsets, spec.hyper)
        for p in spec.inputs:
            routes.setdefault(p.name, ir.Route(p.name, (p.name,), required=p.required))
        term = ir.Term(
            name=log_name,
            spec=spec,
            hyper=tuple(hyper.items()),
            routes=tuple(routes[p.name] for p in spec.inputs),
            span=node.offsets,
        )
        self.terms.append(term)
        self.order.append(term)
        return term

    def _route_path(self, kw: ast.Keyword, spec: TermSpec) -> tuple[str, ...]:
        if not isinstance(kw.value, ast.InputRef):
            raise LossArgumentError(
                f"'{kw.name}' is a tensor input of {spec.name}; it needs an input name, not a value",
                span=kw.offsets,
                hint=f"name the input to read, e.g. {kw.name}={kw.name} or {kw.name}=outputs.{kw.name}",
            )
        for part in kw.value.path:
            if part.startswith("_"):
                raise LossArgumentError(
                    f"input reference '{'.'.join(kw.value.path)}' reads a private name '{part}'",
                    span=kw.value.offsets,
                    hint="input references read mapping keys or public attributes only",
                )
        return kw.value.path

    # --- built-ins ------------------------------------------------------------------------

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
        operands = tuple(self.expr(a) for a in node.args[:n_operands])
        if builtin.category == "balance":
            return self._balance(node, operands)
        model = builtin.params
        fields = list(model.model_fields)
        extra_args = node.args[n_operands:]
        if len(extra_args) > len(fields):
            raise LossArgumentError(
                f"{builtin.name} takes {high if high is not None else 'any number of'} operand(s)"
                + (f" and at most {len(fields)} more arguments" if fields else ""),
                span=extra_args[len(fields)].offsets,
                hint=builtin.summary,
            )
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
            if kw.name in values:
                raise LossArgumentError(
                    f"{builtin.name} got '{kw.name}' both by position and by keyword",
                    span=kw.offsets,
                    hint="give it once",
                )
            values[kw.name] = self._literal(kw.value, builtin.name, kw.name, kw.offsets)
            places[kw.name] = kw.offsets
        params = tuple(_validate(builtin.name, model, values, places, node.offsets).items())
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
            _refuse_watch_inside(operands)
            return ir.Apply(builtin.name, operands, (), node.offsets, operand.kind)
        return self._apply(builtin.name, operands, params, node.offsets)

    def _balance(self, node: ast.Call, operands: tuple) -> ir.Balance:
        _refuse_watch_inside(operands)
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
                f"unknown balance method {_show(method_kw.value)}",
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
        params = _validate("balance", model, values, places, node.offsets)
        params.pop("method", None)
        return ir.Balance(method, operands, tuple(params.items()), node.offsets)

    # --- argument values ------------------------------------------------------------------

    def _const_arg(self, arg: ast.Node, owner: str, param: str) -> Any:
        node = self.expr(arg)
        if node.kind != "const":
            raise LossTypeError(
                f"'{param}' of {owner} must be a number, not a {node.kind}",
                span=arg.offsets,
                hint=f"give {param} a number, e.g. {owner}({param}=1)",
            )
        value = node.value
        return int(value) if float(value).is_integer() and _is_int_literal(arg) else value

    def _literal(self, value: ast.Node, owner: str, param: str, span) -> Any:
        if isinstance(value, ast.Number):
            return value.value
        if isinstance(value, (ast.String, ast.Bool)):
            return value.value
        if isinstance(value, ast.NoneValue):
            return None
        if isinstance(value, ast.ListValue):
            return [self._literal(item, owner, param, item.offsets) for item in value.items]
        if isinstance(value, ast.InputRef):
            if len(value.path) == 1 and value.path[0] in self.resolved:
                self.used.add(value.path[0])
                bound = self.resolved[value.path[0]]
                if bound.kind == "const":
                    return int(bound.value) if float(bound.value).is_integer() else bound.value
            raise LossArgumentError(
                f"'{param}' of {owner} is a hyperparameter; it needs a value, not an input name",
                span=span,
                hint=f"write a literal such as {param}=1, or bind a number first: k = 1; ...({param}=k)",
            )
        raise LossArgumentError(f"bad value for '{param}'", span=span)


def _only_watches(node: Any) -> bool:
    while isinstance(node, ir.Named):
        node = node.value
    if isinstance(node, ir.Apply) and node.fn == "sum":
        return all(_only_watches(a) for a in node.args)
    return isinstance(node, ir.Apply) and node.fn == "watch"


def _refuse_watch_inside(args) -> None:
    """watch(...) adds exactly 0 and only logs; inside a calculation it would be a hidden 0
    (``log(watch(a))``, ``mse / watch(a)``), so it may only be added to the loss."""
    for arg in args:
        if _only_watches(arg):
            raise LossTypeError(
                "watch(...) only logs a term; it cannot be part of a calculation",
                span=arg.span,
                hint="add it to the loss on its own, e.g. mse + watch(mae)",
            )


def _contributes(node: Any) -> bool:
    """Whether a term outside ``watch(...)`` reaches ``node`` (so the loss trains something)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, (ir.Term, ir.Balance)):
            return True
        if isinstance(item, ir.Named):
            stack.append(item.value)
        elif isinstance(item, ir.Apply) and item.fn != "watch":
            stack.extend(item.args)
    return False


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
        shown = _as_written(values[key])
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
