"""AST to IR: names, kinds, hyperparameters and input routes (DESIGN.md §3).

Name resolution order: binding -> registered term -> built-in function -> error with
suggestions. Each binding is resolved once, so a binding used many times is one node;
constant sub-expressions are folded (``2*0.5*mse`` costs one multiply, ``mse*1*...*1`` none).
Limits are checked as each node is made, before any work that could grow with them.

>>> import lossdsl
>>> from lossdsl.resolve import resolve_text
>>> [item.name for item in resolve_text("recon = huber(delta=2); 0.7*recon + 0.3*mae").logged]
['recon', 'mae']
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import LossDSLError, LossNameError, LossTypeError, did_you_mean
from ..language.functions import OPERATORS, article
from ..language.registry import BUILTIN_NAMES
from ..language.registry import Registry, TermSpec
from ..syntax import ast
from ..syntax.unparse import unparse
from . import calls, ir, tensors
from .arguments import fold
from .logged import check_root, is_leaf, logged_items, scalar_top

__all__ = ["Resolver", "MAX_TERMS", "MAX_OPERATION_DEPTH"]

MAX_TERMS = 256
# Bindings compose: `a2 = exp(a1)` puts a1 inside a2 without a bracket in the text, so a chain
# of bindings nests deeper than the parser's bracket limit. One expression within that limit
# reaches about 130 operations; this bounds what bindings inside bindings may add.
MAX_OPERATION_DEPTH = 256


class Resolver:
    """Resolves one program. ``local``: extra term specs for this program only."""

    def __init__(self, local: Mapping[str, TermSpec], registry: Registry) -> None:
        self.local = local
        self.registry = registry
        self.bindings: dict[str, ast.Binding] = {}
        self.all_bindings: set[str] = set()
        self.resolved: dict[str, ir.Node] = {}
        self.used: set[str] = set()
        self.order: list[tuple[str, ir.Node, bool]] = []  # (label, node, named by a binding)
        self.term_count = 0
        self.declared: dict[str, Any] = {}  # input name -> where it is declared
        self._watch_only: dict[ir.Node, bool] = {}  # by identity: IR nodes compare by identity
        self.aggregator_below: dict[ir.Node, ir.Node | None] = {}  # the first aggregating balance under a node

    # --- program --------------------------------------------------------------------------

    def run(self, program: ast.Program, source: str | None) -> ir.IR:
        # every binding name, so that a use above the definition says so instead of "unknown"
        self.all_bindings = {b.name for b in program.bindings}
        tensors.declare(self, program)
        for binding in program.bindings:
            if binding.name in self.bindings:
                raise LossNameError(
                    f"'{binding.name}' is bound twice",
                    span=binding.name_span,
                    hint="give each binding its own name",
                )
            if binding.name in BUILTIN_NAMES:
                raise LossNameError(
                    f"'{binding.name}' is a built-in function and cannot be rebound",
                    span=binding.name_span,
                    hint=f"pick another name, e.g. '{binding.name}_term'",
                )
            if binding.name in tensors.IMPLICIT_INPUTS:
                raise LossNameError(
                    f"'{binding.name}' always names the call's input and cannot be rebound",
                    span=binding.name_span,
                    hint=f"pick another name, e.g. '{binding.name}_term'",
                )
            if binding.name == tensors.RESERVED_NAME:
                raise LossNameError(
                    f"'{binding.name}' is the name the monitor logs the whole loss under",
                    span=binding.name_span,
                    hint=f"rename the binding, e.g. '{binding.name}_term'",
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
        check_root(self, root, program.expr)
        top = scalar_top(root)
        logged = logged_items([entry for entry in self.order if id(entry[1]) in top], self.all_bindings)
        read = set()
        for node in ir.walk(root, *(item.node for item in logged)):
            if isinstance(node, ir.Term):
                read.update(route.path[0] for route in node.routes)
            elif isinstance(node, ir.Input):
                read.add(node.path[0])
            elif isinstance(node, ir.Balance) and node.method.gradients is not None:
                read.add("shared")  # the parameters whose gradients it reads (§6.1)
        canonical = unparse(program)
        return ir.IR(
            source=source if source is not None else canonical,
            canonical=canonical,
            root=root,
            logged=logged,
            inputs_read=frozenset(read),
            declared=tuple(self.declared),
        )

    def _binding_value(self, binding: ast.Binding) -> ir.Node:
        value = binding.value
        if isinstance(value, ast.Call) and self.term_spec(value.name) is not None and (
            value.name not in self.bindings or value.name == binding.name
        ):
            # a binding that is exactly one term call: the term is logged under the binding's name
            return self.call(value, label=binding.name)
        node = self.expr(value)
        if isinstance(value, ast.Call) and self.order and self.order[-1][1] is node and not self.order[-1][2]:
            # a binding that is exactly one inline term (`s = mean(pred)`): one term, its name
            self.order[-1] = (binding.name, node, True)
            return node
        # `w = watch(mae)` and `t = s` (s one term) are aliases: the term is logged already,
        # and a watch itself has no value to log
        if node.kind == "loss" and not isinstance(node, ir.Named) and not is_leaf(node) and not self.watch_only(node):
            node = self.node(ir.Named, binding.name, node, span=binding.offsets)
            self.order.append((binding.name, node, True))
        return node

    # --- nodes ----------------------------------------------------------------------------

    def node(self, cls, *fields: Any, span=None, **kw: Any) -> Any:
        """Make an IR node, counting its depth (bindings inside bindings included)."""
        children = [f for f in fields if isinstance(f, ir.Node)]
        for f in fields:
            if isinstance(f, tuple):
                children.extend(x for x in f if isinstance(x, ir.Node))
        depth = 1 + max((c.depth for c in children), default=0)
        if depth > MAX_OPERATION_DEPTH:
            raise LossDSLError(
                f"the program nests more than {MAX_OPERATION_DEPTH} operations deep "
                "(counting the bindings used inside bindings)",
                span=span,
                hint="use fewer levels of bindings inside bindings, or flatten the expression",
            )
        made = cls(*fields, span=span, depth=depth, **kw)
        self._watch_only[made] = self._is_watch_only(made)
        return made

    def apply(self, fn, args: tuple, params: dict, span) -> ir.Node:
        """A call of a function row: folded when every operand is a number. A condition in
        arithmetic counts as 0/1 (``true - mse`` is ``1 - mse``)."""
        if fn.group != "logical":
            keep = 0 if fn.name == "where" else -1  # where's condition stays a condition
            args = tuple(
                ir.Const(float(a.value), span=a.span) if i != keep and isinstance(a, ir.Const) and isinstance(a.value, bool) else a
                for i, a in enumerate(args)
            )
        if fn.name != "add":
            calls.refuse_watch_inside(self, args)
        if fn.name == "where" and not calls.may_be_condition(args[0]):
            raise LossTypeError(
                f"where needs a condition first, not {article(args[0].kind)}",
                span=args[0].span or span,
                hint="compare it, e.g. where(pred > 0, a, b); conditions come from < <= > >= == != and, or, not",
            )
        kinds = tuple(a.kind for a in args)
        try:
            kind = fn.result_kind(kinds, params)
        except calls.KindError as err:
            where = args[err.operand].span if err.operand is not None else span
            raise LossTypeError(err.message, span=where or span, hint=err.hint) from None
        if kind == "const" and all(isinstance(a, ir.Const) for a in args):
            return ir.Const(fold(fn, [a.value for a in args], params, span), span=span)
        if fn.name == "where" and isinstance(args[0], ir.Const):
            return args[1] if args[0].value else args[2]  # a condition known when compiling
        made = self.node(ir.Call, fn, args, tuple(params.items()), span=span, kind=kind)
        if kind == "loss" and any(a.kind == "tensor" for a in args):
            self.add_term(fn.name, made, False)  # an inline term, if it is in the top
        return made

    def watch_only(self, node: ir.Node) -> bool:
        """Whether ``node`` is a watch, or a sum of watches only. Known for every node when it
        is made (its operands were made before it), so this is a lookup, never a descent."""
        known = self._watch_only.get(node)
        if known is None:  # a node made outside node(): a constant, an input
            known = self._watch_only[node] = self._is_watch_only(node)
        return known

    def _is_watch_only(self, node: ir.Node) -> bool:
        if isinstance(node, ir.Named):
            return self._watch_only.get(node.value, False)
        if isinstance(node, ir.Call) and node.name == "watch":
            return True
        if isinstance(node, ir.Call) and node.name == "add":
            return all(self._watch_only.get(a, False) for a in node.args)
        return False

    # --- expressions ----------------------------------------------------------------------

    def expr(self, node: ast.Node) -> ir.Node:
        if isinstance(node, ast.Number):
            return ir.Const(float(node.value), span=node.offsets)
        if isinstance(node, ast.Neg):
            return self.apply(OPERATORS["neg"], (self.expr(node.operand),), {}, node.offsets)
        if isinstance(node, ast.Sum):
            return calls.chain(self, node, OPERATORS["add"])
        if isinstance(node, ast.Product):
            return calls.chain(self, node, OPERATORS["multiply"])
        if isinstance(node, ast.Power):
            base, exponent = self.expr(node.base), self.expr(node.exponent)
            return self.apply(OPERATORS["pow"], (base, exponent), {}, node.offsets)
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Compare):
            return tensors.compare(self, node)
        if isinstance(node, ast.BoolOp):
            return tensors.boolop(self, node)
        if isinstance(node, ast.Not):
            return tensors.negation(self, node)
        if isinstance(node, ast.Index):
            return tensors.index(self, node)
        if isinstance(node, ast.ListValue):
            return tensors.list_const(self, node)
        if isinstance(node, ast.InputRef):
            return tensors.input_node(self, node.path, node.offsets)
        if isinstance(node, ast.Bool):
            return ir.Const(node.value, span=node.offsets)
        raise LossTypeError(f"unexpected {type(node).__name__} here", span=node.offsets)

    def call(self, node: ast.Call, label: str | None = None) -> ir.Node:
        name = node.name
        if name in self.bindings and label is None:
            return self.binding_ref(node)
        spec = self.term_spec(name)
        if spec is not None:
            return calls.term(self, node, spec, label or name)
        if name in BUILTIN_NAMES:
            return calls.builtin(self, node)
        if name in self.all_bindings:  # used before its definition
            return self.binding_ref(node)
        if name in self.declared or name in tensors.IMPLICIT_INPUTS:
            if node.args or node.kwargs:
                raise calls.argument_error(
                    f"'{name}' is an input of the call and takes no arguments",
                    span=node.offsets,
                    hint=f"write '{name}' alone",
                )
            return tensors.input_node(self, (name,), node.offsets)
        candidates = list(self.bindings) + list(self.registry) + list(self.local) + list(BUILTIN_NAMES)
        close = did_you_mean(name, candidates + list(self.declared) + list(tensors.IMPLICIT_INPUTS))
        hint = close or "see `lossdsl terms` for the catalogue, or register one with @lossdsl.term"
        if self.declared or not close or not did_you_mean(name, candidates):
            hint += f"; if '{name}' is an input of the call, declare it: input {name}"
        raise LossNameError(f"unknown loss term '{name}'", span=node.name_span, hint=hint)

    def binding_ref(self, node: ast.Call) -> ir.Node:
        name = node.name
        if node.args or node.kwargs:
            raise calls.argument_error(
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

    def term_spec(self, name: str) -> TermSpec | None:
        if name in self.local:
            return self.local[name]
        if name in self.registry:
            return self.registry[name]
        return None

    def add_term(self, label: str, node: ir.Node, named: bool) -> None:
        self.term_count += 1
        if self.term_count > MAX_TERMS:
            raise LossDSLError(
                f"the program has more than {MAX_TERMS} terms",
                span=node.span,
                hint="combine terms into fewer calls or split the loss",
            )
        self.order.append((label, node, named))
