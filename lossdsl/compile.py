"""The public entry point: text in, :class:`~lossdsl.Loss` out.

Parsing and resolution are cached by source text (and the registry's version), so compiling
the same text again only builds a fresh module.

>>> import torch, lossdsl
>>> crit = lossdsl.compile("0.7*huber(delta=1) + 0.3*temporal_diff")
>>> pred, target = torch.zeros(2, 5, 1), torch.ones(2, 5, 1)
>>> round(float(crit(pred, target)), 4)
0.35
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping

from . import ir
from .errors import LossDSLError
from .module import Loss
from .registry import TermSpec, registry, spec_from_function
from .resolve import resolve
from .syntax import parse

__all__ = ["compile", "check"]


@functools.lru_cache(maxsize=512)
def _resolve_registered(source: str, version: int) -> ir.Resolved:
    return resolve(parse(source), source)


def _resolve_cached(source: str, terms: Mapping[str, Callable] | None = None) -> ir.Resolved:
    """Resolve ``source``; errors carry the source text and a caret."""
    if not isinstance(source, str):  # before the caches, which cannot hash e.g. a list
        raise LossDSLError(
            f"a loss program is text, got {type(source).__name__}",
            hint='pass a string such as "0.7*huber(delta=1) + 0.3*temporal_diff"',
        )
    try:
        if not terms:
            return _resolve_registered(source, registry.version)
        local = _local_specs(terms)
        return resolve(parse(source), source, terms=local)
    except LossDSLError as err:
        raise err.located(source if isinstance(source, str) else "", err.span) from None


def _local_specs(terms: Mapping[str, Callable]) -> dict[str, TermSpec]:
    from .builtins import BUILTINS

    specs = {}
    for name, func in terms.items():
        if name in BUILTINS:
            raise LossDSLError(
                f"'{name}' is a built-in function and cannot be a term name",
                hint="pick another name in terms=",
            )
        specs[name] = func if isinstance(func, TermSpec) else spec_from_function(func, name)
    return specs


def compile(
    source: str,
    *,
    terms: Mapping[str, Callable] | None = None,
    strict: bool = True,
    nonfinite: str = "raise",
    fuse: bool = False,
) -> Loss:
    """Compile a loss program into a :class:`~lossdsl.Loss` module.

    ``terms``: extra ``{name: function}`` for this loss only. ``strict``: a keyword input
    that no term reads is an error. ``nonfinite``: ``"raise" | "warn" | "zero_term" |
    "skip_batch"``. ``fuse``: compute an elementwise program's value and gradient in one pass
    (``lossdsl/fused.py``); ``crit.fused`` says whether it does. Every problem in the text
    raises a :class:`~lossdsl.LossDSLError` here, before training starts.

    >>> import lossdsl
    >>> lossdsl.compile("recon = huber(delta=1)\\n0.7*recon + 0.3*mae").term_names
    ['recon', 'mae']
    """
    resolved = _resolve_cached(source, terms)
    return Loss(
        resolved,
        strict=strict,
        nonfinite=nonfinite,
        compile_args={"terms": dict(terms) if terms else None},
        fuse=fuse,
    )


def check(source: str, *, terms: Mapping[str, Callable] | None = None) -> ir.Resolved:
    """Parse and resolve without building a module; raises :class:`~lossdsl.LossDSLError`."""
    return _resolve_cached(source, terms)
