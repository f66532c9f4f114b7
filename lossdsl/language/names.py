"""The names the language reserves: built-in functions, schedules, ``balance`` and words.

A term, a binding or a declared input may not take one of these names.

>>> "log" in BUILTIN_NAMES, "linear" in BUILTIN_NAMES, "balance" in BUILTIN_NAMES
(True, True, True)
"""

from __future__ import annotations

from .functions import FUNCTIONS
from .schedules import SCHEDULES

__all__ = ["BUILTIN_NAMES", "RESERVED_WORDS", "BALANCE"]

BALANCE = "balance"
BUILTIN_NAMES = frozenset(FUNCTIONS) | frozenset(SCHEDULES) | {BALANCE}
RESERVED_WORDS = frozenset({"true", "false", "none", "and", "or", "not", "input"})
