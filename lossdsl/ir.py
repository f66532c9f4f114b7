"""The resolved program: what ``resolve`` hands to ``compile``.

Every name is bound, every hyperparameter validated, every node has a kind
(``const`` < ``schedule`` < ``loss``). Nodes are plain immutable data; a node reached through
a binding used twice is the same object, so it is computed once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .registry import TermSpec

__all__ = ["Route", "Term", "Const", "Apply", "Schedule", "Balance", "Named", "Resolved", "KINDS"]

KINDS = ("const", "schedule", "loss")


def max_kind(*kinds: str) -> str:
    return max(kinds, key=KINDS.index) if kinds else "const"


@dataclass(frozen=True)
class Route:
    """Where a term's tensor parameter comes from: ``path`` into forward's inputs."""

    param: str
    path: tuple[str, ...]
    required: bool


@dataclass(frozen=True, eq=False)
class Term:
    """One call of a registered term; ``name`` is its log name (unique in the program)."""

    name: str
    spec: TermSpec
    hyper: tuple[tuple[str, Any], ...]
    routes: tuple[Route, ...]
    span: tuple[int, int] | None
    kind: str = field(default="loss", init=False)


@dataclass(frozen=True, eq=False)
class Const:
    value: float
    span: tuple[int, int] | None = None
    kind: str = field(default="const", init=False)


@dataclass(frozen=True, eq=False)
class Apply:
    """An operation on other nodes.

    ``fn``: ``sum`` (``params["signs"]`` of +1/-1 per operand), ``product`` (``params["ops"]``
    of ``*``/``/`` between operands), ``pow``, ``neg``, ``log``, ``exp``, ``sqrt``, ``abs``,
    ``min``, ``max``, ``clamp`` (``params["min"]``, ``params["max"]``), ``detach``, ``watch``.
    """

    fn: str
    args: tuple[Any, ...]
    params: tuple[tuple[str, Any], ...]
    span: tuple[int, int] | None
    kind: str

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)


@dataclass(frozen=True, eq=False)
class Schedule:
    """A weight that depends on the step: ``name`` is one of the schedule built-ins."""

    name: str
    params: tuple[tuple[str, Any], ...]
    span: tuple[int, int] | None
    kind: str = field(default="schedule", init=False)


@dataclass(frozen=True, eq=False)
class Balance:
    """``balance(a, b, ..., method=...)``: weights computed by a balancer."""

    method: str
    args: tuple[Any, ...]
    params: tuple[tuple[str, Any], ...]
    span: tuple[int, int] | None
    kind: str = field(default="loss", init=False)


@dataclass(frozen=True, eq=False)
class Named:
    """A composite binding (not exactly one call) of kind loss: logged under its name."""

    name: str
    value: Any
    span: tuple[int, int] | None
    kind: str = field(default="loss", init=False)


@dataclass(frozen=True, eq=False)
class Resolved:
    """The whole resolved program.

    ``logged``: terms and named composites in source order (the keys of ``crit.terms``);
    ``inputs_read``: the top-level input names any term reads (for ``strict``).
    """

    source: str
    canonical: str
    root: Any
    logged: tuple[Term | Named, ...]
    inputs_read: frozenset[str]
