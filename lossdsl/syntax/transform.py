"""Lark parse results to AST nodes, built bottom-up while the LALR parser reduces.

Building nodes in the parser's callbacks (no tree walk afterwards) means deep or long input
never recurses; the nesting depth of each node is recorded for the limit of DESIGN.md §8.
"""

from __future__ import annotations

import contextlib
import json
import threading

from lark import Token, Transformer

from . import ast
from ..errors import LossSyntaxError
from .tokens import as_json_string, name_of, number, tok_span
from .unparse import unparse

__all__ = ["ToAST", "node_depth", "recording_depths", "MAX_DEPTH"]

MAX_DEPTH = 64


def _pos(item) -> tuple[int, int] | None:
    if isinstance(item, Token):
        return (item.start_pos, item.end_pos)
    if isinstance(item, (_Arguments, _PendingChain)):
        return (item.start, item.end)
    span = getattr(item, "span", None)
    return None if span is None else (span.start, span.end)


def _span(children) -> ast.Span | None:
    """The span from the first to the last positioned child (tokens are kept for this)."""
    places = [p for p in map(_pos, children) if p is not None]
    if not places:
        return None
    return ast.Span(start=places[0][0], end=places[-1][1])


def _nodes(children) -> list:
    """The AST nodes among ``children``, with any chain still being built finished."""
    return [c.build() if isinstance(c, _PendingChain) else c for c in children if not isinstance(c, Token)]


class _PendingChain:
    """A flat ``a + b - c`` chain while the parser is still adding operands to it.

    Building the pydantic node once, when a parent takes it, keeps a long chain linear in
    its length (rebuilding the node per operand would be quadratic).
    """

    __slots__ = ("cls", "operands", "ops", "start", "end", "depth")

    def __init__(self, cls, operands, ops, start, end, depth) -> None:
        self.cls, self.operands, self.ops = cls, operands, ops
        self.start, self.end, self.depth = start, end, depth

    def extends(self, cls, op: str) -> bool:
        # `and` and `or` are both BoolOp chains but never one chain
        return self.cls is cls and (cls is not ast.BoolOp or self.ops[0] == op)

    def build(self) -> ast.Node:
        span = ast.Span(start=self.start, end=self.end)
        if self.cls is ast.BoolOp:
            node = ast.BoolOp(op=self.ops[0], operands=tuple(self.operands), span=span)
        else:
            node = self.cls(operands=tuple(self.operands), ops=tuple(self.ops), span=span)
        return _with_depth(node, self.depth)


class _Depths(threading.local):
    """The nesting depth of the nodes built by the parse running in this thread.

    Kept beside the nodes rather than on them: a private attribute on every pydantic node
    costs a fifth of the parse. The table holds the nodes too, so no id is reused while it
    lives.
    """

    table: dict[int, tuple[ast.Node, int]] | None = None


_DEPTHS = _Depths()


@contextlib.contextmanager
def recording_depths():
    """Record the nesting depth of the nodes built inside the block (see :func:`node_depth`)."""
    _DEPTHS.table = {}
    try:
        yield
    finally:
        _DEPTHS.table = None


def _with_depth(node: ast.Node, depth: int) -> ast.Node:
    _DEPTHS.table[id(node)] = (node, depth)
    return node


def _depth(node) -> int:
    """The nesting depth of a node built in this block: brackets, calls, unary operators."""
    known = _DEPTHS.table.get(id(node))
    return 0 if known is None else known[1]


def _chained(operands: list, ops: list[Token]) -> LossSyntaxError:
    """``a < b < c`` is refused (it reads as Python's chain and as C's nesting alike), with
    the rewrite that means Python's ``a < b and b < c``."""
    pairs = zip(operands, (t.value for t in ops), operands[1:])
    rewrite = None
    if max(_depth(o) for o in operands) <= MAX_DEPTH:  # unparse recurses
        rewrite = " and ".join(f"{unparse(a)} {op} {unparse(b)}" for a, op, b in pairs)
    if rewrite is None or len(rewrite) > 120:
        rewrite = "a < b and b < c"
    second = ops[1]
    return LossSyntaxError(
        "comparisons cannot be chained",
        span=(second.start_pos, second.end_pos),
        hint=f"join the comparisons with 'and': {rewrite}",
    )


class _Arguments:
    """The arguments of a call while the call is being built."""

    __slots__ = ("args", "kwargs", "start", "end", "depth")

    def __init__(self, args, kwargs, start, end, depth):
        self.args, self.kwargs, self.start, self.end, self.depth = args, kwargs, start, end, depth


class _ToAST(Transformer):
    """Builds AST nodes bottom-up as the LALR parser reduces (no recursion on deep input).

    The parser keeps every token so that spans can be taken from them.
    """

    def start(self, children):
        nodes = _nodes(children)
        *statements, expr = nodes
        declarations = tuple(s for s in statements if isinstance(s, ast.Declaration))
        bindings = tuple(s for s in statements if isinstance(s, ast.Binding))
        depth = max([_depth(c) for c in nodes] + [0])
        program = ast.Program(declarations=declarations, bindings=bindings, expr=expr, span=_span(nodes))
        return _with_depth(program, depth)

    def binding(self, children):
        name, value = name_of(children[0]), _nodes(children)[0]
        node = ast.Binding(name=name, value=value, span=_span(children))
        return _with_depth(node, _depth(value))

    def declaration(self, children):
        tokens = [t for t in children[1:] if isinstance(t, Token) and t.type == "NAME"]
        node = ast.Declaration(names=tuple(name_of(t) for t in tokens), span=_span(children))
        node._name_spans = tuple((t.start_pos, t.end_pos) for t in tokens)
        return node

    def _chain(self, cls, op, children):
        left, right = [c for c in children if not isinstance(c, Token)]
        (right,) = _nodes([right])
        place = _span(children)
        if isinstance(left, _PendingChain) and left.extends(cls, op):
            left.operands.append(right)
            left.ops.append(op)
            left.end = place.end
            left.depth = max(left.depth, _depth(right))
            return left
        (left,) = _nodes([left])
        depth = max(_depth(left), _depth(right))
        return _PendingChain(cls, [left, right], [op], place.start, place.end, depth)

    def add(self, children):
        return self._chain(ast.Sum, "+", children)

    def sub(self, children):
        return self._chain(ast.Sum, "-", children)

    def mul(self, children):
        return self._chain(ast.Product, "*", children)

    def div(self, children):
        return self._chain(ast.Product, "/", children)

    def or_(self, children):
        return self._chain(ast.BoolOp, "or", children)

    def and_(self, children):
        return self._chain(ast.BoolOp, "and", children)

    def not_(self, children):
        (operand,) = _nodes(children)
        return _with_depth(ast.Not(operand=operand, span=_span(children)), 1 + _depth(operand))

    def compare(self, children):
        operands = _nodes(children)
        ops = [c for c in children if isinstance(c, Token)]
        if len(ops) > 1:
            raise _chained(operands, ops)
        left, right = operands
        node = ast.Compare(op=ops[0].value, left=left, right=right, span=_span(children))
        return _with_depth(node, max(_depth(left), _depth(right)))

    def pow(self, children):
        base, exponent = _nodes(children)
        node = ast.Power(base=base, exponent=exponent, span=_span(children))
        return _with_depth(node, 1 + max(_depth(base), _depth(exponent)))

    def neg(self, children):
        (operand,) = _nodes(children)
        return _with_depth(ast.Neg(operand=operand, span=_span(children)), 1 + _depth(operand))

    def number(self, children):
        return number(children[0])

    def paren(self, children):
        (inner,) = _nodes(children)
        # `(a + b) + c` stays a sum inside a sum: the built node is no pending chain to extend
        return _with_depth(inner, 1 + _depth(inner))

    def call(self, children):
        name = name_of(children[0])
        found = [c for c in children[1:] if isinstance(c, _Arguments)]
        arguments = found[0] if found else None
        args, kwargs = (arguments.args, arguments.kwargs) if arguments else ((), ())
        depth = 1 + (arguments.depth if arguments else 0)
        node = ast.Call(name=name, args=args, kwargs=kwargs, span=_span(children))
        return _with_depth(node, depth)

    def path(self, children):
        names = [t for t in children if isinstance(t, Token) and t.type == "NAME"]
        # keys after the first may be any word: `out.none` reads inputs["out"]["none"]
        path = (name_of(names[0]),) + tuple(t.value for t in names[1:])
        return ast.InputRef(path=path, span=_span(children))

    def numbers(self, children):
        items = tuple(number(t) for t in children if isinstance(t, Token) and t.type == "SIGNED_NUMBER")
        return _with_depth(ast.ListValue(items=items, span=_span(children)), 1)

    def index(self, children):
        base, *items = [c for c in _nodes(children) if c is not None]
        node = ast.Index(base=base, items=tuple(items), span=_span(children))
        return _with_depth(node, 1 + max(_depth(c) for c in (base, *items)))

    def slice(self, children):
        parts: list = [None, None, None]
        part = 0
        for child in children:
            if isinstance(child, Token):
                if child.type == "COLON":
                    part += 1
            elif child is not None:
                (parts[part],) = _nodes([child])
        start, stop, step = parts
        node = ast.Slice(start=start, stop=stop, step=step, span=_span(children))
        return _with_depth(node, max(_depth(p) for p in parts))

    def ellipsis(self, children):
        return ast.EllipsisItem(span=tok_span(children[0]))

    def newaxis(self, children):
        return ast.NewAxis(span=tok_span(children[0]))

    def arguments(self, children):
        items = [c for c in _nodes(children) if c is not None]
        args = tuple(c for c in items if not isinstance(c, ast.Keyword))
        kwargs = tuple(c for c in items if isinstance(c, ast.Keyword))
        seen_keyword = False
        for item in items:
            if isinstance(item, ast.Keyword):
                seen_keyword = True
            elif seen_keyword:
                raise LossSyntaxError(
                    "positional argument after a keyword argument",
                    span=item.offsets,
                    hint="put positional arguments first, e.g. clamp(x, min=0)",
                )
        seen: set[str] = set()
        for k in kwargs:
            if k.name in seen:  # the second time it is given
                raise LossSyntaxError(
                    f"keyword argument '{k.name}' is given twice",
                    span=k.offsets,
                    hint="give each keyword once",
                )
            seen.add(k.name)
        place = _span(children)
        depth = max([_depth(c) for c in items] + [0])
        return _Arguments(args, kwargs, place.start, place.end, depth)

    def positional(self, children):
        return _nodes(children)[0]

    def keyword(self, children):
        name, value = name_of(children[0]), _nodes(children)[0]
        node = ast.Keyword(name=name, value=value, span=_span(children))
        return _with_depth(node, _depth(value))

    def string(self, children):
        token = children[0]
        try:
            # strict=False: a raw tab or other control character inside quotes is kept as is.
            value = json.loads(as_json_string(token.value), strict=False)
        except ValueError:
            raise LossSyntaxError(
                "bad escape in string",
                span=(token.start_pos, token.end_pos),
                hint='strings use JSON escapes: \\" \\\\ \\n \\t \\uXXXX',
            ) from None
        return ast.String(value=value, span=tok_span(token))

    def true(self, children):
        return ast.Bool(value=True, span=tok_span(children[0]))

    def false(self, children):
        return ast.Bool(value=False, span=tok_span(children[0]))

    def none(self, children):
        return ast.NoneValue(span=tok_span(children[0]))

    def list(self, children):
        items = tuple(c for c in _nodes(children) if c is not None)
        node = ast.ListValue(items=items, span=_span(children))
        return _with_depth(node, 1 + max([_depth(i) for i in items] + [0]))

    def reference(self, children):
        return self.path(children)


ToAST = _ToAST
node_depth = _depth
