"""Single tokens to values: numbers, strings, and names (which may not be reserved words).

>>> from lark import Token
>>> name_of(Token("NAME", "recon", start_pos=0, end_pos=5))
'recon'
"""

from __future__ import annotations

import re

from lark import Token

from . import ast
from ..errors import LossSyntaxError

__all__ = ["RESERVED", "reserved_word_error", "name_of", "number", "as_json_string", "tok_span"]

# Words of the language that can never be names (DESIGN.md §3.1), with how each is used.
RESERVED = {
    "true": "true and false are the truth values, not names",
    "false": "true and false are the truth values, not names",
    "none": "none stands as a keyword value (dim=none) or in an index (x[:, none])",
    "and": "'and' joins two conditions: a < b and c < d",
    "or": "'or' joins two conditions: a < b or c < d",
    "not": "'not' negates the condition after it: not a < b; after + - * / ^ put it in brackets: 1 - (not m)",
    "input": "'input' declares inputs in a statement of its own: input w, m",
}


def reserved_word_error(word: str, span: tuple[int, int]) -> LossSyntaxError:
    """The error for a reserved word where a name stands.

    >>> reserved_word_error("and", (0, 3)).message
    "'and' is a reserved word"
    """
    return LossSyntaxError(
        f"'{word}' is a reserved word",
        span=span,
        hint=f"{RESERVED[word]}; as a name write another word, e.g. {word}_",
    )


def name_of(token: Token) -> str:
    """The text of a NAME token that names something; reserved words are refused.

    Where the parser takes only a name, the lexer reads a reserved word as a name, so the
    check is here rather than in the grammar.
    """
    if token.value in RESERVED:
        raise reserved_word_error(token.value, (token.start_pos, token.end_pos))
    return token.value


def tok_span(token: Token) -> ast.Span:
    """Where a token stands in the source."""
    return ast.Span(start=token.start_pos, end=token.end_pos)


def number(token: Token) -> ast.Number:
    """The number a NUMBER or SIGNED_NUMBER token writes; integers stay ``int`` up to 2**53.

    >>> number(Token("SIGNED_NUMBER", "-2", start_pos=0, end_pos=2)).value
    -2
    """
    text = token.value
    try:
        value: int | float = int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
        if isinstance(value, int) and abs(value) > 2**53:
            value = float(value)
        node = ast.Number(value=value, span=tok_span(token))
    except (ValueError, OverflowError):
        shown = text if len(text) <= 24 else text[:20] + "..."
        raise LossSyntaxError(
            f"number '{shown}' is out of range",
            span=(token.start_pos, token.end_pos),
            hint="numbers must be finite double-precision values",
        ) from None
    return node


def as_json_string(quoted: str) -> str:
    """A single-quoted string literal rewritten as the double-quoted JSON literal it means.

    Both quote styles take JSON's escapes; inside single quotes ``\\'`` is a quote and ``"``
    needs no escape. One pass over the text.

    >>> print(as_json_string("'sum'"))
    "sum"
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
