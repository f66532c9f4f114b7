"""Kinds of values in a loss program (DESIGN.md §3, §3.1) and how operations combine them.

``const`` (a number known when compiling) < ``schedule`` (a number known at call time, no
gradient) < ``loss`` (a 0-dim differentiable tensor) < ``tensor`` (any shape). An operation
on several operands has the widest of their kinds: ``0.7*mse`` is a loss, ``mse*pred`` a tensor.

>>> join_kinds(["const", "loss"]), join_kinds(["loss", "tensor"]), join_kinds([])
('loss', 'tensor', 'const')
"""

from __future__ import annotations

from typing import Iterable

__all__ = ["KINDS", "SCALAR_KINDS", "join_kinds", "article"]

KINDS = ("const", "schedule", "loss", "tensor")
# the kinds of the program's scalar top: where only losses and numbers meet
SCALAR_KINDS = frozenset({"const", "schedule", "loss"})


def join_kinds(kinds: Iterable[str]) -> str:
    """The kind of an operation on operands of these kinds: the widest of them."""
    best = 0
    for kind in kinds:
        best = max(best, KINDS.index(kind))
    return KINDS[best]


def article(kind: str) -> str:
    """``a loss``, ``a tensor``, ``a number`` (const), ``a schedule``: for messages."""
    return {"const": "a number", "schedule": "a schedule", "loss": "a loss", "tensor": "a tensor"}[kind]
