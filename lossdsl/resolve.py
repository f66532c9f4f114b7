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

from typing import Any, Mapping

from . import ast, ir
from .builtins import BUILTINS
from .errors import (
    LossArgumentError,
    LossDSLError,
    LossNameError,
    LossTypeError,
    did_you_mean,
)
from .registry import Registry, TermSpec, registry as default_registry
from .resolve_builtins import BuiltinCalls
from .resolve_facts import Facts
from .resolve_values import fold, fold_addends, fold_factors, is_int_literal, validate
from .unparse import unparse

__all__ = ["resolve", "MAX_TERMS"]

MAX_TERMS = 256


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


class _Resolver(BuiltinCalls):
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
        self.facts = Facts()  # depth and watch facts per node, each computed once

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
        facts = self.facts.of(root)  # the nesting limit, before anything recurses over it
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
        if not facts.contributes:
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
        # Checked binding by binding: a chain of bindings is refused at the first one that
        # nests too deep, before any later phase recurses over it.
        facts = self.facts.of(node)
        # `w = watch(mae)` is an alias: the watched term is logged already, and the watch
        # itself has no value to log.
        if node.kind == "loss" and not isinstance(node, (ir.Term, ir.Named)) and not facts.watch_only:
            node = ir.Named(binding.name, node, binding.offsets)
            self.facts.of(node)
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
            self._refuse_watch_inside(args)
        kind = ir.max_kind(*(a.kind for a in args))
        if kind == "const":
            return ir.Const(fold(fn, [a.value for a in args], dict(params), span), span)
        # `mse*2*0.5*...`, `mse + 1 + 2 + ...`: the numbers become one coefficient or one
        # constant, computed once here instead of once per operand on every call
        if fn == "product":
            args, ops = fold_factors(args, dict(params)["ops"], span)
            params = (("ops", ops),)
        elif fn == "sum":
            args, signs = fold_addends(args, dict(params)["signs"], span)
            params = (("signs", signs),)
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
                self._keyword_value(spec.name, kw, values, places)
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
        hyper = validate(spec.name, spec.model, values, places, node.offsets, spec.hyper)
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

    def _keyword_value(self, owner: str, kw: ast.Keyword, values: dict, places: dict) -> None:
        """Take ``kw``'s literal value for a parameter not given by position already."""
        if kw.name in values:
            raise LossArgumentError(
                f"{owner} got '{kw.name}' both by position and by keyword",
                span=kw.offsets,
                hint="give it once",
            )
        values[kw.name] = self._literal(kw.value, owner, kw.name, kw.offsets)
        places[kw.name] = kw.offsets

    def _const_arg(self, arg: ast.Node, owner: str, param: str) -> Any:
        node = self.expr(arg)
        if node.kind != "const":
            raise LossTypeError(
                f"'{param}' of {owner} must be a number, not a {node.kind}",
                span=arg.offsets,
                hint=f"give {param} a number, e.g. {owner}({param}=1)",
            )
        value = node.value
        return int(value) if float(value).is_integer() and is_int_literal(arg) else value

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
