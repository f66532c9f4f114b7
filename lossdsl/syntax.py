"""Text to AST: the lark parser, friendly syntax errors and the size limits of DESIGN.md §8.

>>> from lossdsl.syntax import parse
>>> program = parse("recon = huber(delta=1)\\n0.7*recon + 0.3*temporal_diff")
>>> [b.name for b in program.bindings]
['recon']
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from . import ast
from .errors import LossDSLError, LossSyntaxError

__all__ = ["parse", "MAX_SOURCE_BYTES", "MAX_DEPTH", "grammar_text"]

MAX_SOURCE_BYTES = 64 * 1024
MAX_DEPTH = 64

# Tokens after which a newline continues the expression instead of ending the statement.
_CONTINUES = frozenset({"+", "-", "*", "/", "^", "**", "=", ","})

# Lark terminal names in user words; literal terminals are shown as their text.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "SIGNED_NUMBER": "a number",
    "STRING": "a string",
    "TRUE": "true",
    "FALSE": "false",
    "NONE": "none",
    "_SEP": "a new line or ';'",
    "$END": "end of input",
}
_OPERAND_STARTS = {"NAME", "NUMBER"}
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "CIRCUMFLEX"}
_VALUE_STARTS = {"SIGNED_NUMBER", "STRING", "TRUE", "FALSE", "NONE", "LSQB"}


@functools.cache
def grammar_text() -> str:
    """The text of ``grammar/lossdsl.lark``, the one definition of the language."""
    return resources.files("lossdsl.grammar").joinpath("lossdsl.lark").read_text("utf-8")


class _NewlinesInBrackets:
    """Post-lexer: a newline inside brackets or after an operator continues the line."""

    always_accept = ("_SEP",)

    def process(self, stream):
        depth = 0
        previous = None
        for token in stream:
            kind = token.type
            if kind == "_SEP":
                if token.value != ";" and (
                    depth > 0 or previous is None or previous.value in _CONTINUES
                ):
                    continue
            elif kind in ("LPAR", "LSQB"):
                depth += 1
            elif kind in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
            previous = None if kind == "_SEP" else token
            yield token


def _pos(item) -> tuple[int, int] | None:
    if isinstance(item, Token):
        return (item.start_pos, item.end_pos)
    if isinstance(item, _Arguments):
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
    return [c for c in children if not isinstance(c, Token)]


def _tok_span(token: Token) -> ast.Span:
    return ast.Span(start=token.start_pos, end=token.end_pos)


def _with_depth(node: ast.Node, depth: int) -> ast.Node:
    node._depth = depth
    return node


def _depth(node) -> int:
    return getattr(node, "_depth", 0)


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
        left, right = _nodes(children)
        if isinstance(left, cls) and not left._bracketed:
            operands, ops = left.operands + (right,), left.ops + (op,)
        else:
            operands, ops = (left, right), (op,)
        node = cls(operands=operands, ops=ops, span=_span(children))
        return _with_depth(node, max(_depth(left), _depth(right)))

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
        # Remember the brackets: `(a + b) + c` is a sum inside a sum, not one flat chain.
        inner._bracketed = True
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
        names = [k.name for k in kwargs]
        for k in kwargs:
            if names.count(k.name) > 1:
                dup = [kw for kw in kwargs if kw.name == k.name][1]
                raise LossSyntaxError(
                    f"keyword argument '{k.name}' is given twice",
                    span=dup.offsets,
                    hint="give each keyword once",
                )
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
            value = json.loads(token.value, strict=False)
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


@functools.cache
def _parser() -> Lark:
    return Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        keep_all_tokens=True,
        maybe_placeholders=True,
        postlex=_NewlinesInBrackets(),
        transformer=_ToAST(),
    )


def parse(text: str) -> ast.Program:
    """Parse program text into a :class:`~lossdsl.ast.Program`; cached by text.

    Raises :class:`~lossdsl.LossSyntaxError` (or another :class:`~lossdsl.LossDSLError` for
    the size limits) with the line, column and a caret.

    >>> import lossdsl
    >>> lossdsl.unparse(lossdsl.parse("0.7*huber(delta=1)+0.3*temporal_diff"))
    '0.7 * huber(delta=1) + 0.3 * temporal_diff'
    """
    if not isinstance(text, str):
        raise LossDSLError(
            f"a loss program is text, got {type(text).__name__}",
            hint='pass a string such as "0.7*huber(delta=1) + 0.3*temporal_diff"',
        )
    return _parse_text(text)


@functools.lru_cache(maxsize=1024)
def _parse_text(text: str) -> ast.Program:
    # checked for being text first: the cache cannot hash a list
    try:
        size = len(text.encode("utf-8", "surrogatepass"))
    except UnicodeError:
        size = len(text) * 4
    if size > MAX_SOURCE_BYTES:
        raise LossDSLError(
            f"the program is {size} bytes long; the limit is {MAX_SOURCE_BYTES} bytes (64 KiB)",
            source=text,
            span=(MAX_SOURCE_BYTES, MAX_SOURCE_BYTES + 1) if len(text) > MAX_SOURCE_BYTES else None,
            hint="split the loss into named bindings or shorten it",
        )
    if not text.strip() or _only_comments(text):
        raise LossSyntaxError(
            "the program is empty",
            source=text,
            span=(0, 1),
            hint="write an expression such as mse or 0.7*huber(delta=1) + 0.3*temporal_diff",
        )
    try:
        program = _parser().parse(text)
    except LossDSLError as err:
        raise err.located(text, err.span) from None
    except UnexpectedInput as err:
        raise _syntax_error(text, err) from None
    depth = _depth(program)
    if depth > MAX_DEPTH:
        raise LossDSLError(
            f"the program nests {depth} levels deep; the limit is {MAX_DEPTH}",
            source=text,
            span=_deepest_span(text),
            hint="flatten the expression or name parts of it with bindings",
        )
    return program


def _only_comments(text: str) -> bool:
    # A '#' ends the line, so text that is only comments, blanks and ';' has no statement.
    return not re.sub(r"#[^\n]*", "", text).strip(" \t\f\r\n;")


def _deepest_span(text: str) -> tuple[int, int]:
    """Where the bracket nesting is deepest, for the caret of a depth error."""
    depth = best = where = 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
            if depth > best:
                best, where = depth, i
        elif ch in ")]":
            depth -= 1
    return (where, where + 1)


def _words(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    pattern = _terminal_patterns().get(name)
    return f"'{pattern}'" if pattern is not None else name.lower()


@functools.cache
def _terminal_patterns() -> dict[str, str]:
    parser = _parser()
    return {t.name: t.pattern.value for t in parser.terminals if t.pattern.type == "str"}


def _previous_symbol(text: str, pos: int) -> str:
    before = text[:pos].rstrip()
    if before.endswith("**"):
        return "**"
    return before[-1:] if before else ""


def _syntax_error(text: str, err: UnexpectedInput) -> LossSyntaxError:
    """Turn a lark error into a message in user words with a caret."""
    if isinstance(err, UnexpectedCharacters):
        pos = err.pos_in_stream
        ch = text[pos]
        message = f"unexpected character {ch!r}"
        hint = "a program is made of names, numbers, + - * / ^, brackets, ',' '=' and ';'"
        if ch == "'":
            hint = 'strings use double quotes, e.g. method="ema"'
        elif ch == '"':
            message = "unterminated string"
            hint = 'close the string with " on the same line'
        elif ch == "\n":
            hint = "a new line cannot stand here"
        return LossSyntaxError(message, source=text, span=(pos, pos + 1), hint=hint)
    expected = set(getattr(err, "expected", None) or getattr(err, "accepts", None) or ())
    token = getattr(err, "token", None)
    at_end = isinstance(err, UnexpectedEOF) or token is None or token.type == "$END"
    if at_end:
        pos = len(text.rstrip())
        found, span = "end of input", (pos, pos + 1)
    else:
        found = "a new line" if token.type == "_SEP" and token.value != ";" else f"'{token.value}'"
        span = (token.start_pos, max(token.end_pos, token.start_pos + 1))
        pos = token.start_pos
    previous = _previous_symbol(text, pos)
    expected = _possible(text, pos, expected)
    if expected & _VALUE_STARTS:
        want = f"a value after '{previous}'" if previous == "=" else "a value"
        hint = 'a keyword value is a number, "string", true/false/none, [list] or an input name'
    elif previous == "." and "NAME" in expected:
        want = "a name after '.'"
        hint = "an input reference is a dotted name such as out.depth"
    elif expected & _OPERAND_STARTS:
        want = "a term"
        if previous in _CONTINUES or previous in ("(", "["):
            want = f"a term after '{previous}'"
        hint = "a term is a name such as mse, a call such as huber(delta=1), or a number"
        if found.startswith("'\""):
            hint = 'a string can only be a keyword value, e.g. balance(a, b, method="ema")'
        elif found in ("'+'", "'*'", "'/'", "'^'", "'**'") and _after_statement(text, pos):
            hint = "a new line ends the statement; to go on, end the line before with the operator"
    elif expected <= {"_SEP", "$END"} and _after_statement(text, pos):
        # `mse` then `mae` on the next line: only the last statement may be an expression.
        want = "the end of the program"
        hint = (
            "statements before the last must be bindings such as recon = mse; "
            "join terms with an operator such as '+'"
        )
    else:
        words = []
        if expected & _OPERATORS:
            words.append("an operator")
        for name, word in (("RPAR", "')'"), ("RSQB", "']'"), ("COMMA", "','"), ("EQUAL", "'='")):
            if name in expected:
                words.append(word)
        if expected & {"_SEP", "$END"}:
            words.append("the end of the statement")
        if not words:
            words = sorted({_words(name) for name in expected})
        want = ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]
        hint = _hint_for(expected, found)
    return LossSyntaxError(f"expected {want}, found {found}", source=text, span=span, hint=hint)


def _after_statement(text: str, pos: int) -> bool:
    before = re.sub(r"#[^\n]*", "", text[:pos]).rstrip(" \t\f\r")
    return before.endswith(("\n", ";"))


def _open_brackets(text: str, pos: int) -> list[str]:
    """The brackets open before ``pos``, innermost last: ``call``, ``group`` or ``list``."""
    stack: list[str] = []
    in_string = escaped = in_comment = False
    last = ""  # the last character outside strings, comments and blanks
    for ch in text[:pos]:
        if in_comment:
            in_comment = ch != "\n"
            continue
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
                last = ch
            continue
        if ch == "#":
            in_comment = True
        elif ch == '"':
            in_string = True
        elif ch == "(":
            stack.append("call" if last.isalnum() or last == "_" else "group")
        elif ch == "[":
            stack.append("list")
        elif ch in ")]" and stack:
            stack.pop()
        if not ch.isspace():
            last = ch
    return stack


def _possible(text: str, pos: int, expected: set[str]) -> set[str]:
    """Drop what LALR state merging lists but this place cannot take.

    A ')' only closes an open call or group, a ']' an open list, ',' separates only inside a
    call or list, the statement ends only outside brackets, and '=' follows only a name that
    starts a statement or a call argument.
    """
    stack = _open_brackets(text, pos)
    inner = stack[-1] if stack else None
    drop = set()
    if inner not in ("call", "group"):
        drop.add("RPAR")
    if inner != "list":
        drop.add("RSQB")
    if inner not in ("call", "list"):
        drop.add("COMMA")
    if stack:
        drop |= {"_SEP", "$END"}
    if not _name_may_take_equal(text[:pos], inner):
        drop.add("EQUAL")
    kept = expected - drop
    return kept or expected


def _name_may_take_equal(before: str, inner: str | None) -> bool:
    before = before.rstrip()
    name = re.search(r"[A-Za-z_][A-Za-z_0-9]*$", before)
    if name is None:
        return False
    ahead = before[: name.start()].rstrip(" \t\f\r")
    if inner is None:
        return not ahead or ahead.endswith(("\n", ";"))
    return inner == "call" and ahead.rstrip().endswith(("(", ","))


def _hint_for(expected: set[str], found: str) -> str:
    if found in ("')'", "']'") and not expected & {"RPAR", "RSQB"}:
        return f"this {found} has no opening bracket to close; remove it or add the opening one"
    if "RPAR" in expected and (found == "end of input" or "COMMA" not in expected):
        return "close the bracket with ')'"
    if "RPAR" in expected:
        return "separate arguments with ',' and close the call with ')'"
    if "RSQB" in expected:
        return "separate list items with ',' and close the list with ']'"
    if "_SEP" in expected:
        return "join terms with an operator such as '+', or start a new statement on a new line"
    return "check the operators and brackets around this place"
