"""The grammar (``grammar/lossdsl.lark``, the one definition of the language) and its parser.

>>> "binding" in grammar_text()
True
"""

from __future__ import annotations

import functools
from importlib import resources

from lark import Lark

from .lexing import NewlinesInBrackets
from .transform import ToAST

__all__ = ["grammar_text", "parser"]


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


