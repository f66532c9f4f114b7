"""Resolution: AST to IR (DESIGN.md §2). Imports no torch.

>>> import lossdsl
>>> lossdsl.check("0.7*huber + 0.3*mae").names()
['huber', 'mae']
"""

from __future__ import annotations

from typing import Mapping

from ..language.registry import Registry, TermSpec, registry as default_registry
from ..syntax import ast, parse
from . import ir
from .resolver import MAX_OPERATION_DEPTH, MAX_TERMS, Resolver

__all__ = ["resolve", "resolve_text", "ir", "MAX_TERMS", "MAX_OPERATION_DEPTH"]


def resolve(
    program: ast.Program,
    source: str | None = None,
    *,
    terms: Mapping[str, TermSpec] | None = None,
    registry: Registry | None = None,
) -> ir.IR:
    """Bind every name of ``program`` and check kinds and arguments.

    ``terms``: extra term specs for this program only. Errors carry spans but not the
    source; the public entry point (:func:`lossdsl.compile`) attaches it.
    """
    return Resolver(terms or {}, registry or default_registry).run(program, source)


def resolve_text(source: str, **kwargs) -> ir.IR:
    """Parse and resolve ``source`` (no caching, no source context on errors)."""
    return resolve(parse(source), source, **kwargs)
