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
from .grammar import CONTINUES
from .tokens import RESERVED, reserved_word_error

__all__ = ["syntax_error"]
# Lark terminal names in user words; literal terminals are shown as their text.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "SIGNED_NUMBER": "a number",
    "STRING": "a string",
    "COMPARE": "a comparison",
    "_SEP": "a new line or ';'",
    "$END": "end of input",
}
_OPERAND_STARTS = {"NAME", "NUMBER"}
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "CIRCUMFLEX", "COMPARE", "AND", "OR"}
# what each word or symbol a line may end with expects after it (DESIGN.md §3.1)
_OPERATOR_WORDS = ("and", "or", "not")
_TWO_CHAR = ("**", "<=", ">=", "==", "!=")
_CHARACTER_HINTS = {
    "!": "'!=' means not equal; to negate a condition write not",
    "&": "join conditions with and",
    "|": "join conditions with or",
    "~": "negate a condition with not",
}
_HINTS = {
    "term": "a term is a name such as mse, a call such as huber(delta=1), or a number",
    "value": 'a keyword value is a number, "string", true/false/none, [list] or an input name',
    "number": "a list in an expression holds numbers, e.g. [1, 2, 0.5]",
    "index": "an index holds integers, slices a:b:c, ... and none, e.g. x[..., 0], x[:, 1:3], x[:, none]",
    "declaration": "an input statement names the call's inputs that expressions read: input w, mask",
    "wrapped": "a new line ends the statement; to go on, end the line before with the operator",
}


def _words(name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    pattern = _terminal_patterns().get(name)
    return f"'{pattern}'" if pattern is not None else name.lower()


@functools.cache
def _terminal_patterns() -> dict[str, str]:
    return {t.name: t.pattern.value for t in parser().terminals if t.pattern.type == "str"}


def _previous_symbol(text: str, pos: int) -> str:
    """The operator, word or character just before ``pos``."""
    before = text[:pos].rstrip()
    if before.endswith(_TWO_CHAR):
        return before[-2:]
    start = _trailing_name(before)
    if start is not None and before[start:] in RESERVED:
        return before[start:]
    return before[-1:] if before else ""


def _misused_word(text: str, pos: int, expected: set[str], found: str) -> tuple[str, tuple[int, int]] | None:
    """A reserved word just before ``pos`` that the parser took where a name stands.

    ``true = 1``, ``f(true=1)``, ``true(x)``: a truth value cannot be named or called;
    ``a + not b``: after an operator, ``not`` was read as a name (it binds looser than '+').
    """
    end = len(text[:pos].rstrip())
    start = _trailing_name(text[:end])
    if start is None or text[start:end] not in RESERVED or text[:start].rstrip().endswith("."):
        return None
    word = text[start:end]
    named = found in ("'='", "'('", "'.'")
    taken_as_name = word not in ("true", "false", "none") and "NAME" not in expected
    return (word, (start, end)) if named or taken_as_name else None


def _syntax_error(text: str, err: UnexpectedInput) -> LossSyntaxError:
    """Turn a lark error into a message in user words with a caret."""
    if isinstance(err, UnexpectedCharacters):
        pos = err.pos_in_stream
        ch = text[pos]
        message = f"unexpected character {ch!r}"
        hint = _CHARACTER_HINTS.get(
            ch, "a program is made of names, numbers, operators (+ - * / ^ < <= > >= == != and or not), "
            "brackets, ',' ':' '=' and ';'"
        )
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
    misused = _misused_word(text, pos, expected, found)
    if misused is not None:
        err = reserved_word_error(*misused)
        return err.located(text, err.span)
    previous = _previous_symbol(text, pos)
    stack = _open_brackets(text, pos)
    inner = stack[-1] if stack else None
    expected = _possible(text, pos, expected, stack)
    if "STRING" in expected:  # only a keyword value can be a string
        want = f"a value after '{previous}'" if previous == "=" else "a value"
        hint = _HINTS["value"]
    elif "SIGNED_NUMBER" in expected:
        want, hint = "a number", _HINTS["number"]
    elif previous == "." and "NAME" in expected:
        want = "a name after '.'"
        hint = "an input reference is a dotted name such as out.depth"
    elif expected - {"_SEP"} == {"NAME"} and previous in ("input", ","):
        want, hint = f"a name after '{previous}'", _HINTS["declaration"]
    elif expected & _OPERAND_STARTS:
        want = "a term"
        if previous in CONTINUES or previous in ("(", "[") or previous in _OPERATOR_WORDS:
            want = f"a term after '{previous}'"
        hint = _HINTS["index"] if inner == "index" else _HINTS["term"]
        if token is not None and token.type == "STRING":
            hint = 'a string can only be a keyword value, e.g. balance(a, b, method="ema")'
        elif _is_operator(token) and _after_statement(text, pos):
            hint = _HINTS["wrapped"]
    elif at_end and not stack:
        # every statement is complete, and no expression follows them
        want = "the loss expression after the last statement"
        hint = (
            "a program ends with the expression whose value is the loss, "
            "e.g. recon = huber; 0.7*recon + 0.3*mae"
        )
    elif expected <= {"_SEP", "$END"} and _after_statement(text, pos):
        # `mse` then `mae` on the next line: only the last statement may be an expression.
        want = "the end of the program"
        hint = (
            "statements before the last must be bindings such as recon = mse; "
            "join terms with an operator such as '+'"
        )
        if _is_operator(token):
            hint = _HINTS["wrapped"]
        elif token is not None and token.value == "input":
            hint = "input statements stand before the expression, e.g. input w; mean(w * (pred - target)^2)"
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
        hint = _hint_for(expected, found, inner)
        path = _trailing_path(text, pos) if found == "'('" else None
        if path is not None:
            hint = (
                f"{_shortened(path)} is an input path (a key or attribute of an input); "
                "only a term or function is called"
            )
    return LossSyntaxError(f"expected {want}, found {found}", source=text, span=span, hint=hint)


def _is_operator(token) -> bool:
    if token is None:
        return False
    return token.value in ("+", "*", "/", "^", "and", "or", *_TWO_CHAR) or token.type in _OPERATORS


def _shortened(text: str) -> str:
    # a message quotes a token, not 60 KiB of one
    return text if len(text) <= 40 else text[:30] + "..."


def _after_statement(text: str, pos: int) -> bool:
    before = re.sub(r"#[^\n]*", "", text[:pos]).rstrip(" \t\f\r")
    return before.endswith(("\n", ";"))


def _open_brackets(text: str, pos: int) -> list[str]:
    """The brackets open before ``pos``, innermost last: ``call``, ``group``, ``list`` or
    ``index``."""
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
            stack.append("index" if last.isalnum() or last in "_)]" else "list")
        elif ch in ")]" and stack:
            stack.pop()
        if not ch.isspace():
            last = ch
    return stack


def _possible(text: str, pos: int, expected: set[str], stack: list[str]) -> set[str]:
    """Drop what LALR state merging lists but this place cannot take.

    A ')' only closes an open call or group, a ']' an open list or index, ',' separates only
    inside a call, list or index, the statement ends only outside brackets, and '=' follows
    only a name that starts a statement or a call argument.
    """
    inner = stack[-1] if stack else None
    drop = set()
    if inner not in ("call", "group"):
        drop.add("RPAR")
    if inner not in ("list", "index"):
        drop.add("RSQB")
    if inner not in ("call", "list", "index"):
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


def _trailing_path(text: str, pos: int) -> str | None:
    """The dotted name (``out.depth``) that ends just before ``pos``, or None.

    One scan back over its characters (no slicing per segment: a long path stays linear)."""
    end = len(text[:pos].rstrip())
    start = end
    while True:
        i = start
        while i > 0 and text[i - 1] in _NAME_CHARS:
            i -= 1
        if i == start:  # no name here: a dot without a name before it
            return None
        if i == 0 or text[i - 1] != ".":
            start = i
            break
        start = i - 1
    dotted = text[start:end]
    return dotted if "." in dotted else None


def _hint_for(expected: set[str], found: str, inner: str | None) -> str:
    if found in ("')'", "']'") and not expected & {"RPAR", "RSQB"}:
        return f"this {found} has no opening bracket to close; remove it or add the opening one"
    if "RPAR" in expected and (found == "end of input" or "COMMA" not in expected):
        return "close the bracket with ')'"
    if "RPAR" in expected:
        return "separate arguments with ',' and close the call with ')'"
    if "RSQB" in expected and inner == "index":
        return "separate index items with ',' and close the index with ']'"
    if "RSQB" in expected:
        return "separate list items with ',' and close the list with ']'"
    if "_SEP" in expected:
        return "join terms with an operator such as '+', or start a new statement on a new line"
    return "check the operators and brackets around this place"


syntax_error = _syntax_error
