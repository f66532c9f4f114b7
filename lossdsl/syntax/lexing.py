"""Lexing around the grammar: where a new line continues a statement.

A new line inside brackets, or after an operator, ``=`` or ``,``, continues the statement (the
post-lexer drops it), so long expressions can be wrapped.
"""

from __future__ import annotations

__all__ = ["CONTINUES", "CONTINUING_WORDS", "NewlinesInBrackets"]

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
