"""The grammar (``grammar/lossdsl.lark``, the one definition of the language), its parser, and
the post-lexer that decides where a new line continues a statement: inside brackets, or after
an operator, ``=`` or ``,``, so long expressions can be wrapped.

>>> "binding" in grammar_text()
True
"""

from __future__ import annotations

import functools
from importlib import resources

from lark import Lark

from .transform import ToAST

__all__ = ["grammar_text", "parser", "CONTINUES", "CONTINUING_WORDS", "NewlinesInBrackets"]


# Tokens after which a newline continues the expression instead of ending the statement.
CONTINUES = frozenset({"+", "-", "*", "/", "^", "**", "=", ",", "<", "<=", ">", ">=", "==", "!="})
# Word operators continue a line only where the parser took them as operators: the same word
# after a '.' is a key of an input path (`out.or`) and ends nothing.
CONTINUING_WORDS = {"AND": "and", "OR": "or", "NOT": "not"}


class NewlinesInBrackets:
    """Post-lexer: a newline inside brackets or after an operator continues the line."""

    always_accept = ("_SEP",)

    def process(self, stream):
        depth = 0
        previous = None
        for token in stream:
            kind = token.type
            if kind == "_SEP":
                if token.value != ";" and (
                    depth > 0
                    or previous is None
                    or previous.value in CONTINUES
                    or previous.type in CONTINUING_WORDS
                ):
                    continue
            elif kind in ("LPAR", "LSQB"):
                depth += 1
            elif kind in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
            previous = None if kind == "_SEP" else token
            yield token


@functools.cache
def grammar_text() -> str:
    """The text of ``grammar/lossdsl.lark``, the one definition of the language."""
    return resources.files("lossdsl.grammar").joinpath("lossdsl.lark").read_text("utf-8")


@functools.cache
def parser() -> Lark:
    return Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        keep_all_tokens=True,
        maybe_placeholders=True,
        postlex=NewlinesInBrackets(),
        transformer=ToAST(),
    )


