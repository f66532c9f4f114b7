"""Resolving tensor expressions (DESIGN.md §3.1): input names, list literals, indexing,
comparisons and conditions. Functions of the resolver they are given (``r``).
"""

from __future__ import annotations

from typing import Any

from ..errors import LossNameError, LossTypeError, did_you_mean
from ..language.functions import OPERATORS
from ..language.registry import BUILTIN_NAMES
from ..syntax import ast
from . import ir
from .arguments import CALL_PARAMETERS, TENSOR_INPUTS, check_input_path, is_int_literal

__all__ = [
    "IMPLICIT_INPUTS", "RESERVED_NAME", "declare", "input_node", "list_const", "index", "compare", "boolop", "negation",
]

# always the call's inputs, never declared
IMPLICIT_INPUTS = TENSOR_INPUTS

# the monitor's column of the whole loss (`loss/total`, `stats()["total"]`): no binding or
# input may take it, or its statistics would hide the total's
RESERVED_NAME = "total"


def declare(r, program: ast.Program) -> None:
    """Take the ``input`` declarations: each name may not be a function, term or binding."""
    bindings = {b.name for b in program.bindings}
    for declaration in program.declarations:
        for i, name in enumerate(declaration.names):
            clash = None
            if name in BUILTIN_NAMES:
                clash = "a built-in function"
            elif r.term_spec(name) is not None:
                clash = "a loss term"
            elif name in bindings:
                clash = "a binding of this program"
            elif name == RESERVED_NAME:
                clash = "the name the monitor logs the whole loss under"
            elif name in CALL_PARAMETERS:
                clash = "the loss call's own argument"
            elif name in r.declared or name in IMPLICIT_INPUTS:
                clash = "declared already" if name in r.declared else "always an input"
            if clash is not None:
                raise LossNameError(
                    f"input '{name}' clashes: '{name}' is {clash}",
                    span=declaration.name_span(i),
                    hint=f"call the input something else (e.g. {name}_in) and pass it as {name}_in=..."
                    if clash != "always an input"
                    else f"'{name}' needs no declaration; remove it from the input line",
                )
            r.declared[name] = declaration.name_span(i)


def input_node(r, path: tuple[str, ...], span) -> ir.Input:
    """A call input read by an expression: ``pred``, a declared name, or a dotted path."""
    check_input_path(path, span)
    if len(path) > 1 and path[0] in r.bindings:
        raise LossNameError(
            f"'{'.'.join(path)}' reads into the binding '{path[0]}'",
            span=span,
            hint="a dotted name reads a call input (out.depth reads inputs['out']['depth']); rename the binding",
        )
    return ir.Input(path, span=span)


def undeclared(r, node: ast.Call) -> LossNameError:
    """An unknown name: the nearest known one, and how to declare an input."""
    name = node.name
    candidates = list(r.bindings) + list(r.registry) + list(r.local) + list(BUILTIN_NAMES)
    candidates += list(r.declared) + list(IMPLICIT_INPUTS)
    close = did_you_mean(name, candidates)
    hint = (close + " " if close else "") + f"if '{name}' is an input of the call, declare it: input {name}"
    return LossNameError(f"unknown name '{name}'", span=node.name_span, hint=hint)


def list_const(r, node: ast.ListValue) -> ir.ListConst:
    values = []
    for item in node.items:
        if not isinstance(item, ast.Number):
            raise LossTypeError(
                "a list in an expression holds numbers",
                span=item.offsets,
                hint="write the numbers themselves, e.g. [1, 2, 0.5] * abs(pred - target)",
            )
        values.append(float(item.value))
    if not values:
        raise LossTypeError("an empty list has no value", span=node.offsets, hint="give it one number per element")
    return ir.ListConst(tuple(values), span=node.offsets)


def _whole(r, node: ast.Node | None, what: str) -> int | None:
    if node is None:
        return None
    value = r.expr(node)
    if not isinstance(value, ir.Const) or not float(value.value).is_integer() or not _int_written(node):
        raise LossTypeError(
            f"{what} must be a whole number written in the text",
            span=node.offsets,
            hint="index with integers, slices a:b:c, ... and none; no tensor indexing",
        )
    return int(value.value)


def _int_written(node: ast.Node) -> bool:
    return is_int_literal(node) or isinstance(node, (ast.Sum, ast.Product, ast.Power))


def index(r, node: ast.Index) -> ir.Node:
    base = r.expr(node.base)
    items: list[Any] = []
    for item in node.items:
        if isinstance(item, ast.EllipsisItem):
            items.append(Ellipsis)
        elif isinstance(item, ast.NewAxis):
            items.append(None)
        elif isinstance(item, ast.Slice):
            step = _whole(r, item.step, "a slice's step")
            if step is not None and step <= 0:
                raise LossTypeError("a slice's step must be positive", span=item.step.offsets, hint="as in PyTorch")
            items.append(slice(_whole(r, item.start, "a slice bound"), _whole(r, item.stop, "a slice bound"), step))
        else:
            items.append(_whole(r, item, "an index"))
    if sum(1 for i in items if i is Ellipsis) > 1:
        raise LossTypeError("an index holds at most one '...'", span=node.offsets, hint="as in PyTorch")
    return r.apply(OPERATORS["index"], (base,), {"items": tuple(items)}, node.offsets)


def compare(r, node: ast.Compare) -> ir.Node:
    return r.apply(OPERATORS[node.op], (r.expr(node.left), r.expr(node.right)), {}, node.offsets)


def boolop(r, node: ast.BoolOp) -> ir.Node:
    fn = OPERATORS[node.op]
    out = r.expr(node.operands[0])
    for operand in node.operands[1:]:
        out = r.apply(fn, (out, r.expr(operand)), {}, node.offsets)
    return out


def negation(r, node: ast.Not) -> ir.Node:
    return r.apply(OPERATORS["not"], (r.expr(node.operand),), {}, node.offsets)
