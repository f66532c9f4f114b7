"""Text to AST: the lark parser, friendly syntax errors and the size limits of DESIGN.md §8.

>>> from lossdsl.syntax import parse
>>> program = parse("recon = huber(delta=1)\\n0.7*recon + 0.3*temporal_diff")
>>> [b.name for b in program.bindings]
['recon']
"""

from __future__ import annotations

import codecs
import functools
import re

from lark.exceptions import UnexpectedInput

from ..errors import LossDSLError, LossSyntaxError
from . import ast
from .grammar import grammar_text, parser
from .messages import syntax_error as _syntax_error
from .transform import MAX_DEPTH
from .transform import node_depth as _depth
from .transform import recording_depths as _recording_depths

__all__ = ["parse", "MAX_SOURCE_BYTES", "MAX_DEPTH", "grammar_text"]


MAX_SOURCE_BYTES = 64 * 1024


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
    size = _utf8_size(text)
    if size > MAX_SOURCE_BYTES:
        at = _limit_crossed_at(text)
        raise LossDSLError(
            f"the program is {size} bytes long; the limit is {MAX_SOURCE_BYTES} bytes (64 KiB)",
            source=text,
            span=(at, at + 1),
            hint=f"the text from here on is past the limit of {MAX_SOURCE_BYTES} bytes of UTF-8; "
            "shorten the program",
        )
    if not text.strip() or _only_comments(text):
        raise LossSyntaxError(
            "the program is empty",
            source=text,
            span=(0, 1),
            hint="write an expression such as mse or 0.7*huber(delta=1) + 0.3*temporal_diff",
        )
    try:
        with _recording_depths():
            program = parser().parse(text)
            depth = _depth(program)
    except LossDSLError as err:
        raise err.located(text, err.span) from None
    except UnexpectedInput as err:
        raise _syntax_error(text, err) from None
    if depth > MAX_DEPTH:
        raise LossDSLError(
            f"the program nests {depth} levels deep; the limit is {MAX_DEPTH}",
            source=text,
            span=_deepest_span(text),
            hint="flatten the expression or name parts of it with bindings",
        )
    return program


def _utf8_size(text: str) -> int:
    if text.isascii():  # known to the string object: no pass over the text
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _limit_crossed_at(text: str) -> int:
    """The index of the first character whose UTF-8 bytes end past the size limit.

    Only the first ``MAX_SOURCE_BYTES + 1`` characters can hold it (a character is at least a
    byte); the decoder keeps back a character cut in two by the limit, so the number of
    characters it gives is that index.
    """
    head = text[: MAX_SOURCE_BYTES + 1].encode("utf-8", "surrogatepass")[:MAX_SOURCE_BYTES]
    decoder = codecs.getincrementaldecoder("utf-8")("surrogatepass")
    return len(decoder.decode(head, final=False))


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
