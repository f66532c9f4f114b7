"""Lark's parse errors in user words: what was expected at the caret, never terminal names.

>>> import lossdsl
>>> try:
...     lossdsl.parse("0.7*huber + ")
... except lossdsl.LossSyntaxError as err:
...     print(err.message)
expected a term after '+', found end of input
"""

from __future__ import annotations

import functools
import re

from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput

from ..errors import LossSyntaxError
from .grammar import parser
from .lexing import CONTINUES

__all__ = ["syntax_error"]
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


def _words(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    pattern = _terminal_patterns().get(name)
    return f"'{pattern}'" if pattern is not None else name.lower()


@functools.cache
def _terminal_patterns() -> dict[str, str]:
    return {t.name: t.pattern.value for t in parser().terminals if t.pattern.type == "str"}


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
        if ch in "\"'":
            message = "unterminated string"
            hint = f"close the string with {ch} on the same line"
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
        if token.type == "_SEP" and token.value != ";":
            found = "a new line"
        elif token.type == "STRING":
            found = f"the string {_shortened(token.value)}"
        else:
            found = f"'{_shortened(token.value)}'"
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
        if previous in CONTINUES or previous in ("(", "["):
            want = f"a term after '{previous}'"
        hint = "a term is a name such as mse, a call such as huber(delta=1), or a number"
        if token is not None and token.type == "STRING":
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


def _shortened(text: str) -> str:
    # a message quotes a token, not 60 KiB of one
    return text if len(text) <= 40 else text[:30] + "..."


def _after_statement(text: str, pos: int) -> bool:
    before = re.sub(r"#[^\n]*", "", text[:pos]).rstrip(" \t\f\r")
    return before.endswith(("\n", ";"))


def _open_brackets(text: str, pos: int) -> list[str]:
    """The brackets open before ``pos``, innermost last: ``call``, ``group`` or ``list``."""
    stack: list[str] = []
    quote = ""  # the quote of the string we are in, if any
    escaped = in_comment = False
    last = ""  # the last character outside strings, comments and blanks
    for ch in text[:pos]:
        if in_comment:
            in_comment = ch != "\n"
            continue
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote or ch == "\n":
                quote = ""
                last = ch
            continue
        if ch == "#":
            in_comment = True
        elif ch in "\"'":
            quote = ch
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
    start = _trailing_name(before)
    if start is None:
        return False
    ahead = before[:start].rstrip(" \t\f\r")
    if inner is None:
        return not ahead or ahead.endswith(("\n", ";"))
    return inner == "call" and ahead.rstrip().endswith(("(", ","))


_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def _trailing_name(text: str) -> int | None:
    """Where the name that ends ``text`` starts, or None.

    A scan back over the name's characters: a regular expression anchored at the end would
    try every start position and take time quadratic in a long run of letters.
    """
    start = len(text)
    while start > 0 and text[start - 1] in _NAME_CHARS:
        start -= 1
    while start < len(text) and text[start].isdigit():  # a name starts with a letter or '_'
        start += 1
    return start if start < len(text) else None


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


syntax_error = _syntax_error
