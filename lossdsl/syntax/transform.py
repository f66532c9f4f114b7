"""Lark parse results to AST nodes, built bottom-up while the LALR parser reduces.

Building nodes in the parser's callbacks (no tree walk afterwards) means deep or long input
never recurses; the nesting depth of each node is recorded for the limit of DESIGN.md §8.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading

from lark import Token, Transformer

from . import ast
from ..errors import LossSyntaxError

__all__ = ["ToAST", "node_depth", "recording_depths"]


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

    def build(self) -> ast.Node:
        node = self.cls(
            operands=tuple(self.operands), ops=tuple(self.ops), span=ast.Span(start=self.start, end=self.end)
        )
        return _with_depth(node, self.depth)


def _tok_span(token: Token) -> ast.Span:
    return ast.Span(start=token.start_pos, end=token.end_pos)


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


def _number(token: Token) -> ast.Number:
    text = token.value
    try:
        value: int | float = int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
        if isinstance(value, int) and abs(value) > 2**53:
            value = float(value)
        node = ast.Number(value=value, span=_tok_span(token))
    except (ValueError, OverflowError):
        shown = text if len(text) <= 24 else text[:20] + "..."
        raise LossSyntaxError(
            f"number '{shown}' is out of range",
            span=(token.start_pos, token.end_pos),
            hint="numbers must be finite double-precision values",
        ) from None
    return node


def _as_json_string(quoted: str) -> str:
    """A single-quoted string literal rewritten as the double-quoted JSON literal it means.

    Both quote styles take JSON's escapes; inside single quotes ``\\'`` is a quote and ``"``
    needs no escape. One pass over the text.
    """
    if quoted[0] == '"':
        return quoted
    out = ['"']
    body, i, n = quoted[1:-1], 0, len(quoted) - 2
    while i < n:
        ch = body[i]
        if ch == "\\" and i + 1 < n:
            nxt = body[i + 1]
            out.append("'" if nxt == "'" else "\\" + nxt)
            i += 2
            continue
        out.append('\\"' if ch == '"' else ch)
        i += 1
    out.append('"')
    return "".join(out)


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
        *bindings, expr = nodes
        depth = max([_depth(c) for c in nodes] + [0])
        program = ast.Program(bindings=tuple(bindings), expr=expr, span=_span(nodes))
        return _with_depth(program, depth)

    def binding(self, children):
        name, value = children[0], _nodes(children)[0]
        node = ast.Binding(name=name.value, value=value, span=_span(children))
        return _with_depth(node, _depth(value))

    def _chain(self, cls, op, children):
        left, right = [c for c in children if not isinstance(c, Token)]
        (right,) = _nodes([right])
        place = _span(children)
        if isinstance(left, _PendingChain) and left.cls is cls:
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

    def pow(self, children):
        base, exponent = _nodes(children)
        node = ast.Power(base=base, exponent=exponent, span=_span(children))
        return _with_depth(node, 1 + max(_depth(base), _depth(exponent)))

    def neg(self, children):
        (operand,) = _nodes(children)
        return _with_depth(ast.Neg(operand=operand, span=_span(children)), 1 + _depth(operand))

    def number(self, children):
        return _number(children[0])

    def paren(self, children):
        (inner,) = _nodes(children)
        # `(a + b) + c` stays a sum inside a sum: the built node is no pending chain to extend
        return _with_depth(inner, 1 + _depth(inner))

    def call(self, children):
        name = children[0]
        found = [c for c in children[1:] if isinstance(c, _Arguments)]
        arguments = found[0] if found else None
        args, kwargs = (arguments.args, arguments.kwargs) if arguments else ((), ())
        depth = 1 + (arguments.depth if arguments else 0)
        node = ast.Call(name=name.value, args=args, kwargs=kwargs, span=_span(children))
        return _with_depth(node, depth)

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
        name, value = children[0], _nodes(children)[0]
        node = ast.Keyword(name=name.value, value=value, span=_span(children))
        return _with_depth(node, _depth(value))

    def string(self, children):
        token = children[0]
        try:
            # strict=False: a raw tab or other control character inside quotes is kept as is.
            value = json.loads(_as_json_string(token.value), strict=False)
        except ValueError:
            raise LossSyntaxError(
                "bad escape in string",
                span=(token.start_pos, token.end_pos),
                hint='strings use JSON escapes: \\" \\\\ \\n \\t \\uXXXX',
            ) from None
        return ast.String(value=value, span=_tok_span(token))

    def true(self, children):
        return ast.Bool(value=True, span=_tok_span(children[0]))

    def false(self, children):
        return ast.Bool(value=False, span=_tok_span(children[0]))

    def none(self, children):
        return ast.NoneValue(span=_tok_span(children[0]))

    def list(self, children):
        items = tuple(c for c in _nodes(children) if c is not None)
        node = ast.ListValue(items=items, span=_span(children))
        return _with_depth(node, 1 + max([_depth(i) for i in items] + [0]))

    def reference(self, children):
        names = [t for t in children if isinstance(t, Token) and t.type == "NAME"]
        return ast.InputRef(path=tuple(t.value for t in names), span=_span(children))


ToAST = _ToAST
node_depth = _depth
