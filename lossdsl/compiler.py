"""The public entry points: text in, :class:`~lossdsl.Loss` out (DESIGN.md §2, §4).

Each form of a loss is made once from the one before and cached: the AST by text, the IR by
text (and the registry's version), the :class:`~lossdsl.program.Program` by canonical text
and non-finite policy, shared by every ``Loss`` compiled from it. This is the one place that
adds the source text to compile-time errors.

>>> import torch, lossdsl
>>> crit = lossdsl.compile("0.7*huber(delta=1) + 0.3*temporal_diff")
>>> pred, target = torch.zeros(2, 5, 1), torch.ones(2, 5, 1)
>>> round(float(crit(pred, target)), 4)
0.35
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Mapping

import torch

from .errors import LossDSLError
from .language.registry import BUILTIN_NAMES, FIXED_NAMES, RESERVED_WORDS
from .language.registry import TermSpec, registry, spec_from_function
from .loss import Loss
from .program import Program
from .resolve import ir, resolve
from .syntax import parse
from .terms import CATALOGUE

__all__ = ["compile", "check", "registry"]

registry.include(CATALOGUE)


def _not_text(source: object) -> LossDSLError:
    return LossDSLError(
        f"a loss program is text, got {type(source).__name__}",
        hint='pass a string such as "0.7*huber(delta=1) + 0.3*temporal_diff"',
    )


@functools.lru_cache(maxsize=512)
def _resolve_registered(source: str, version: int) -> ir.IR:
    return resolve(parse(source), source)


def resolve_source(source: str, terms: Mapping[str, Callable] | None = None) -> ir.IR:
    """The IR of ``source``; errors carry the source text and a caret."""
    if not isinstance(source, str):  # before the caches, which cannot hash e.g. a list
        raise _not_text(source)
    try:
        if not terms:
            return _resolve_registered(source, registry.version)
        return resolve(parse(source), source, terms=_local_specs(terms))
    except LossDSLError as err:
        raise err.located(source, err.span) from None


def _local_specs(terms: Mapping[str, Callable]) -> dict[str, TermSpec]:
    if not isinstance(terms, Mapping):
        raise LossDSLError(
            f"terms= takes a mapping {{name: function}}, got {type(terms).__name__}",
            hint="pass e.g. terms={'my_l1': my_l1}",
        )
    specs = {}
    for name, func in terms.items():
        if name in BUILTIN_NAMES or name in RESERVED_WORDS:
            raise LossDSLError(
                f"'{name}' is a built-in function and cannot be a term name", hint="pick another name in terms="
            )
        if name in FIXED_NAMES:
            raise LossDSLError(
                f"'{name}' has a fixed meaning in lossdsl programs and cannot be a term name",
                hint="pick another name in terms=",
            )
        specs[name] = func if isinstance(func, TermSpec) else spec_from_function(func, name)
    return specs


class _Keyed:
    """Wraps the IR so that the program cache keys on the canonical text, not on the IR."""

    __slots__ = ("ir",)

    def __init__(self, resolved: ir.IR) -> None:
        self.ir = resolved

    def __hash__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Keyed)


@functools.lru_cache(maxsize=512)
def _shared_program(canonical: str, policy: str, version: int, local: tuple, keyed: _Keyed) -> Program:
    return Program(keyed.ir, policy)


def program_for(resolved: ir.IR, policy: str, terms: Mapping[str, Callable] | None = None) -> Program:
    """The shared :class:`~lossdsl.program.Program` of a resolved program."""
    local = tuple(sorted((name, id(func)) for name, func in (terms or {}).items()))
    try:
        return _shared_program(resolved.canonical, policy, registry.version, local, _Keyed(resolved))
    except LossDSLError as err:
        raise err.located(resolved.source, err.span) from None


def compile(
    source: str,
    *,
    terms: Mapping[str, Callable] | None = None,
    strict: bool = True,
    nonfinite: str = "raise",
    fuse: bool | None = None,
) -> Loss:
    """Compile a loss program into a :class:`~lossdsl.Loss` module.

    ``terms``: extra ``{name: function}`` for this loss only. ``strict``: a keyword input
    that no term reads is an error. ``nonfinite``: ``"raise" | "warn" | "zero_term" |
    "skip_batch"``. Every problem in the text raises a :class:`~lossdsl.LossDSLError` here,
    before training starts.

    >>> import lossdsl
    >>> lossdsl.compile("recon = huber(delta=1)\\n0.7*recon + 0.3*mae").term_names
    ['recon', 'mae']
    """
    if fuse is not None:
        warnings.warn(
            "compile(fuse=...) is gone: torch.compile(crit) fuses elementwise programs faster "
            "(see BENCHMARKS.md); the argument is ignored",
            FutureWarning,
            stacklevel=2,
        )
    if not (isinstance(strict, int) and strict in (0, 1)):  # "false" from a config is true to bool()
        raise LossDSLError(f"strict={strict!r}: strict is True or False", hint="strict=False lets a call pass "
                           "keyword inputs that no term reads")
    resolved = resolve_source(source, terms)
    program = program_for(resolved, nonfinite, terms)
    with torch.inference_mode(False):  # state made in an inference_mode block must stay writable
        return Loss(resolved, program, strict=strict, nonfinite=nonfinite)


def check(source: str, *, terms: Mapping[str, Callable] | None = None) -> ir.IR:
    """Parse and resolve without building a module; raises :class:`~lossdsl.LossDSLError`.

    >>> import lossdsl
    >>> lossdsl.check("0.7*huber(delta=1)+0.3*mae").canonical
    '0.7 * huber(delta=1) + 0.3 * mae'
    >>> try:
    ...     lossdsl.check("0.7*hubr(delta=1)")
    ... except lossdsl.LossNameError as err:
    ...     print(err.column, err.hint)
    5 did you mean 'huber'?
    """
    return resolve_source(source, terms)
