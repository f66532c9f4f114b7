"""Text to AST and back (DESIGN.md §2, §3): the lark parser, the AST, canonical text, and
syntax errors in user words. Imports no torch.

>>> from lossdsl.syntax import parse, unparse
>>> unparse(parse("0.7*huber(delta=1)+0.3*temporal_diff"))
'0.7 * huber(delta=1) + 0.3 * temporal_diff'
"""

from . import ast
from .ast import Program
from .grammar import grammar_text
from .parser import MAX_DEPTH, MAX_SOURCE_BYTES, parse
from .unparse import unparse

__all__ = ["parse", "unparse", "ast", "Program", "grammar_text", "MAX_SOURCE_BYTES", "MAX_DEPTH"]
