"""Resolving calls: term calls, built-in functions, schedules and ``balance``; operator
chains; argument values. Functions of the :class:`~lossdsl.resolve.resolver.Resolver` they
are given (``r``), which resolves the operands.
"""

from __future__ import annotations

from typing import Any

from ..errors import LossArgumentError, LossTypeError, did_you_mean
from ..language.balancers import MAX_BALANCED, METHODS
from ..language.functions import FUNCTIONS, OPERATORS, KindError
from ..language.gradient_methods import MTL_EXTRA, missing_modules
from ..language.registry import BALANCE
from ..language.registry import TermSpec
from ..language.schedules import SCHEDULES
from ..syntax import ast
from . import ir
from .arguments import check_input_path, fold, is_int_literal, show, validate

__all__ = ["chain", "term", "builtin", "refuse_watch_inside", "argument_error", "KindError", "is_condition", "may_be_condition"]


def argument_error(message: str, *, span, hint: str) -> LossArgumentError:
    return LossArgumentError(message, span=span, hint=hint)


def refuse_watch_inside(r, args) -> None:
    """watch(...) adds exactly 0 and only logs; inside a calculation it would be a hidden 0
    (``log(watch(a))``, ``mse / watch(a)``), so it may only be added to the loss."""
    for arg in args:
        if r.watch_only(arg):
            raise LossTypeError(
                "watch(...) only logs a term; it cannot be part of a calculation",
                span=arg.span,
                hint="add it to the loss on its own, e.g. mse + watch(mae)",
            )


# --- operator chains ----------------------------------------------------------------------


def is_condition(node: ir.Node) -> bool:
    """Whether ``node`` computes a condition when the loss is called: a comparison or
    ``and``/``or``/``not`` that is not folded to ``true``/``false`` when compiling."""
    return isinstance(node, ir.Call) and getattr(node.fn, "boolean", False) and node.kind != "const"


def may_be_condition(node: ir.Node) -> bool:
    """Whether ``node`` can hold a condition: a comparison or ``and``/``or``/``not`` (through
    indexing, ``detach`` and ``where``), ``true``/``false``, or an input other than ``pred``
    (a mask's dtype is the call's to decide). Numbers, losses and arithmetic never can."""
    if isinstance(node, ir.Const):
        return isinstance(node.value, bool)
    if isinstance(node, ir.Input):
        return node.path != ("pred",)
    if isinstance(node, ir.Call):
        if getattr(node.fn, "boolean", False):
            return True
        if node.name in ("index", "detach"):
            return may_be_condition(node.args[0])
        if node.name == "where":
            return any(may_be_condition(a) for a in node.args[1:])
    return False


def chain(r, node: ast.Node, fn) -> ir.Node:
    """``a + b - c`` or ``a * b / c``: constant operands folded into one number first, so a
    long chain of constants costs one operation (and its weights stay linear to compute)."""
    operands = [r.expr(o) for o in node.operands]
    is_sum = fn.name == "add"
    marks = (1,) + tuple(1 if op == "+" else -1 for op in node.ops) if is_sum else ("*",) + tuple(node.ops)
    consts = [(m, o) for m, o in zip(marks, operands) if isinstance(o, ir.Const)]
    if not is_sum and len(consts) < len(operands):
        for mark, operand in zip(marks[1:], operands[1:]):
            if mark == "/" and isinstance(operand, ir.Const) and operand.value == 0:
                # `mse/0` would only show up as inf at the first call; say so when compiling
                raise LossArgumentError(
                    "division by zero",
                    span=operand.span or node.offsets,
                    hint="divide by a non-zero number, or multiply by a weight instead",
                )
    if len(consts) < 2 or len(consts) == len(operands):
        items = list(zip(marks, operands))  # as written: nothing to gain from reordering
        if len(consts) == len(operands):
            params = {"signs": marks} if is_sum else {"ops": marks[1:]}
            return ir.Const(fold(fn, [o.value for o in operands], params, node.offsets), span=node.offsets)
    else:
        # several numbers: folded into one, written first (`0.5 * mse` for `mse*1*0.5`)
        values = [o.value for _, o in consts]
        if is_sum:
            folded = fold(fn, values, {"signs": tuple(m for m, _ in consts)}, node.offsets)
        else:
            folded = fold(fn, [1.0] + values, {"ops": tuple(m for m, _ in consts)}, node.offsets)
        rest = [(m, o) for m, o in zip(marks, operands) if not isinstance(o, ir.Const)]
        neutral = 0.0 if is_sum else 1.0
        items = ([] if folded == neutral else [(1 if is_sum else "*", ir.Const(folded, span=node.offsets))]) + rest
        if not is_sum and items[0][0] == "/":  # `1/mse`: keep the numerator
            items = [("*", ir.Const(1.0, span=node.offsets))] + items
    if not is_sum and len(items) > len({id(o) for _, o in items}) + REPEATS_AS_POWERS:
        items = _powers(r, items, node.offsets)
    if len(items) == 1 and items[0][0] in (1, "*"):
        return items[0][1]
    args = tuple(o for _, o in items)
    params = {"signs": tuple(m for m, _ in items)} if is_sum else {"ops": tuple(m for m, _ in items[1:])}
    return r.apply(fn, args, params, node.offsets)


# A product that repeats operands this many times more than it has distinct ones
# (`a*a*...*a`, a binding used thousands of times) is made of powers: one operation (and one
# derivative) per distinct operand instead of one per operand.
REPEATS_AS_POWERS = 8


def _powers(r, items: list, span) -> list:
    """``[(op, operand)]`` of a product as ``x^m`` times and ``x^d`` divided per distinct
    ``x`` (``m``, ``d``: how often ``x`` multiplies and divides), in order of first use;
    numerator and denominator apart, so ``0/0`` stays NaN as written."""
    counts: dict[int, list] = {}
    for op, operand in items:
        entry = counts.setdefault(id(operand), [operand, 0, 0])
        entry[1 if op == "*" else 2] += 1
    out = []
    for operand, up, down in counts.values():
        for op, times in (("*", up), ("/", down)):
            if times:
                power = operand if times == 1 else r.apply(
                    OPERATORS["pow"], (operand, ir.Const(float(times), span=span)), {}, span
                )
                out.append((op, power))
    if out[0][0] == "/":
        out.insert(0, ("*", ir.Const(1.0, span=span)))
    return out


# --- term calls ---------------------------------------------------------------------------


def term(r, node: ast.Call, spec: TermSpec, label: str) -> ir.Term:
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
    places: dict[str, Any] = {}
    for param, arg in zip(hyper_names, node.args):
        values[param] = const_arg(r, arg, spec.name, param)
        places[param] = arg.offsets
    routes: dict[str, ir.Route] = {}
    for kw in node.kwargs:
        if kw.name in spec.input_names:
            routes[kw.name] = ir.Route(kw.name, _route_path(kw, spec), required=True)
        elif kw.name in hyper_names:
            keyword_value(r, spec.name, kw, values, places)
        else:
            known = list(hyper_names) + list(spec.input_names)
            close = did_you_mean(kw.name, known)
            takes = ", ".join(hyper_names) or "no hyperparameters"
            raise LossArgumentError(
                f"{spec.name} has no parameter '{kw.name}'",
                span=kw.offsets,
                hint=(close + " " if close else "") + f"{spec.name} takes {takes}; inputs: {', '.join(spec.input_names)}",
            )
    hyper = validate(spec.name, spec.model, values, places, node.offsets, spec.hyper)
    for p in spec.inputs:
        routes.setdefault(p.name, ir.Route(p.name, (p.name,), required=p.required))
    # reduction="none" makes a tensor of per-element losses: a term only once reduced (§3.1)
    kind = "tensor" if hyper.get("reduction") == "none" else "loss"
    made = ir.Term(
        label, spec, tuple(hyper.items()), tuple(routes[p.name] for p in spec.inputs), span=node.offsets, kind=kind
    )
    r.add_term(label, made, named=label != spec.name or label in r.all_bindings)
    return made


def _route_path(kw: ast.Keyword, spec: TermSpec) -> tuple[str, ...]:
    if not isinstance(kw.value, ast.InputRef):
        raise LossArgumentError(
            f"'{kw.name}' is a tensor input of {spec.name}; it needs an input name, not a value",
            span=kw.offsets,
            hint=f"name the input to read, e.g. {kw.name}={kw.name} or {kw.name}=outputs.{kw.name}",
        )
    check_input_path(kw.value.path, kw.value.offsets)
    return kw.value.path


# --- built-in functions, schedules, balance -----------------------------------------------


def builtin(r, node: ast.Call) -> ir.Node:
    name = node.name
    if name == BALANCE:
        return _balance(r, node)
    if name in SCHEDULES:
        row = SCHEDULES[name]
        params = _parameters(r, node, name, row.params, node.args, row.summary)
        return r.node(ir.Call, row, (), tuple(params.items()), span=node.offsets, kind="schedule")
    fn = FUNCTIONS[name]
    low, high = fn.operands
    n_operands = len(node.args) if high is None else min(len(node.args), high)
    if n_operands < low:
        what = "an operand" if low == 1 else f"at least {low} operands"
        raise LossArgumentError(f"{name} needs {what}, got {len(node.args)}", span=node.offsets, hint=fn.summary)
    operands = tuple(r.expr(a) for a in node.args[:n_operands])
    params = _parameters(r, node, name, fn.params, node.args[n_operands:], fn.summary, high)
    if name == "watch":
        (operand,) = operands
        if operand.kind not in ("loss", "tensor"):
            raise LossTypeError("watch needs a loss term to log", span=node.offsets, hint="watch a term such as watch(mae)")
        refuse_watch_inside(r, operands)
    if name in ("watch", "detach") and operands[0].kind == "const":
        return operands[0]
    return r.apply(fn, operands, params, node.offsets)


def _parameters(r, node: ast.Call, owner: str, model, extra_args, summary: str, high: int | None = 0) -> dict:
    fields = list(model.model_fields)
    if len(extra_args) > len(fields):
        raise LossArgumentError(
            f"{owner} takes {high if high is not None else 'any number of'} operand(s)"
            + (f" and at most {len(fields)} more arguments" if fields else ""),
            span=extra_args[len(fields)].offsets,
            hint=summary,
        )
    values: dict[str, Any] = {}
    places: dict[str, Any] = {}
    for field_name, arg in zip(fields, extra_args):
        values[field_name] = const_arg(r, arg, owner, field_name)
        places[field_name] = arg.offsets
    for kw in node.kwargs:
        if kw.name not in fields:
            close = did_you_mean(kw.name, fields)
            raise LossArgumentError(
                f"{owner} has no parameter '{kw.name}'", span=kw.offsets, hint=(close + " " if close else "") + summary
            )
        keyword_value(r, owner, kw, values, places)
    return validate(owner, model, values, places, node.offsets)


def _balance(r, node: ast.Call) -> ir.Balance:
    if len(node.args) > MAX_BALANCED:
        raise LossArgumentError(
            f"balance combines at most {MAX_BALANCED} terms, got {len(node.args)}",
            span=node.args[MAX_BALANCED].offsets,
            hint="balance groups of terms separately, e.g. balance(balance(a, b, ...), c, ...)",
        )
    if len(node.args) < 2:
        raise LossArgumentError(
            f"balance needs at least 2 operands, got {len(node.args)}",
            span=node.offsets,
            hint="balance(a, b, ..., method=...)",
        )
    operands = tuple(r.expr(a) for a in node.args)
    refuse_watch_inside(r, operands)
    for arg, operand in zip(node.args, operands):
        if operand.kind != "loss":
            raise LossTypeError(
                "balance combines loss terms; this operand is a number"
                if operand.kind in ("const", "schedule")
                else "balance combines loss terms; this operand is a tensor",
                span=arg.offsets,
                hint="put weights outside: 0.5*balance(a, b, method=\"ema\")",
            )
    kwargs = {kw.name: kw for kw in node.kwargs}
    if "method" not in kwargs:
        raise LossArgumentError(
            "balance needs method=...", span=node.offsets, hint="methods: " + ", ".join(f'"{m}"' for m in METHODS)
        )
    method_kw = kwargs["method"]
    method = method_kw.value.value if isinstance(method_kw.value, ast.String) else None
    if method not in METHODS:
        close = did_you_mean(str(method), METHODS) if method else None
        raise LossArgumentError(
            f"unknown balance method {show(method_kw.value)}",
            span=method_kw.offsets,
            hint=(close + " " if close else "") + "methods: " + ", ".join(f'"{m}"' for m in METHODS),
        )
    row = METHODS[method]
    model = row.params
    values: dict[str, Any] = {}
    places: dict[str, Any] = {}
    for kw in node.kwargs:
        if kw.name not in model.model_fields:
            close = did_you_mean(kw.name, list(model.model_fields))
            allowed = ", ".join(f for f in model.model_fields if f != "method") or "nothing else"
            raise LossArgumentError(
                f'balance(method="{method}") has no parameter \'{kw.name}\'',
                span=kw.offsets,
                hint=(close + " " if close else "") + f"it takes {allowed}",
            )
        values[kw.name] = literal(r, kw.value, "balance", kw.name, kw.offsets)
        places[kw.name] = kw.offsets
    params = validate("balance", model, values, places, node.offsets)
    params.pop("method", None)
    _check_installed(row, method_kw)
    if row.gradients is not None:
        _refuse_nested_aggregator(r, method, operands)
    return r.node(ir.Balance, row, operands, tuple(params.items()), span=node.offsets)


def _refuse_nested_aggregator(r, method: str, operands: tuple) -> None:
    """An aggregating balance inside another gradient balance: the inner aggregate is put in
    by a correction of the outer one's gradient, and the two corrections add up to weights
    neither method gives (negative ones among them), so the nesting is refused. Linear: what
    lies below each node is found once (``r.aggregator_below``)."""
    below = r.aggregator_below
    for n in ir.walk(*operands, descend=lambda n: n not in below):
        if n not in below:
            inner = isinstance(n, ir.Balance) and n.method.gradients == "aggregate"
            below[n] = n if inner else next((below[c] for c in n.children if below.get(c) is not None), None)
    inner = next((below[o] for o in operands if below[o] is not None), None)
    if inner is not None:
        flat = method if METHODS[method].gradients == "aggregate" else inner.method.name
        raise LossTypeError(
            f'balance(method="{inner.method.name}") aggregates gradients and cannot sit inside another '
            f'gradient balance (method="{method}"): the two would weigh terms negatively',
            span=inner.span,
            hint=f'flatten: one aggregator over all the terms, e.g. balance(a, b, c, method="{flat}")',
        )


def _check_installed(row, method_kw: ast.Keyword) -> None:
    """An aggregator of the optional TorchJD needs it (and the solvers it uses) installed:
    said when compiling, not at the first ``crit.backward``."""
    missing = missing_modules(row.aggregation.modules) if row.aggregation is not None else []
    if missing:
        raise LossArgumentError(
            f'balance(method="{row.name}") needs TorchJD and the solvers it uses; not installed: {", ".join(missing)}',
            span=method_kw.offsets,
            hint=f"install the multi-task extra: {MTL_EXTRA}",
        )


# --- argument values ----------------------------------------------------------------------


def keyword_value(r, owner: str, kw: ast.Keyword, values: dict, places: dict) -> None:
    """Take ``kw``'s literal value for a parameter not given by position already."""
    if kw.name in values:
        raise LossArgumentError(f"{owner} got '{kw.name}' both by position and by keyword", span=kw.offsets, hint="give it once")
    values[kw.name] = literal(r, kw.value, owner, kw.name, kw.offsets)
    places[kw.name] = kw.offsets


def const_arg(r, arg: ast.Node, owner: str, param: str) -> Any:
    node = r.expr(arg)
    if node.kind != "const":
        raise LossTypeError(
            f"'{param}' of {owner} must be a number, not a {node.kind}",
            span=arg.offsets,
            hint=f"give {param} a number, e.g. {owner}({param}=1)",
        )
    value = node.value
    return int(value) if float(value).is_integer() and is_int_literal(arg) else value


def literal(r, value: ast.Node, owner: str, param: str, span) -> Any:
    if isinstance(value, ast.Number):
        return value.value
    if isinstance(value, (ast.String, ast.Bool)):
        return value.value
    if isinstance(value, ast.NoneValue):
        return None
    if isinstance(value, ast.ListValue):
        return [literal(r, item, owner, param, item.offsets) for item in value.items]
    if isinstance(value, ast.InputRef):
        if len(value.path) == 1 and value.path[0] in r.resolved:
            r.used.add(value.path[0])
            bound = r.resolved[value.path[0]]
            if bound.kind == "const":
                return int(bound.value) if float(bound.value).is_integer() else bound.value
        raise LossArgumentError(
            f"'{param}' of {owner} is a hyperparameter; it needs a value, not an input name",
            span=span,
            hint=f"write a literal such as {param}=1, or bind a number first: k = 1; ...({param}=k)",
        )
    raise LossArgumentError(f"bad value for '{param}'", span=span)


__all__ += ["keyword_value", "const_arg", "literal", "OPERATORS", "fold"]
