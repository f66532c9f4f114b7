"""The error types of lossdsl and how they render the source with a caret.

Every user error is a :class:`LossDSLError` (a ``ValueError``). It carries the program text,
the 1-based line and column, the ``(start, end)`` character span and a hint, and its message
shows the offending line with a caret under the span::

    >>> import lossdsl
    >>> try:
    ...     lossdsl.compile("0.7*hubr(delta=1) + 0.3*temporal_diff")
    ... except lossdsl.LossNameError as err:
    ...     print(err)
    unknown loss term 'hubr' (line 1, column 5)
      0.7*hubr(delta=1) + 0.3*temporal_diff
          ^^^^
    hint: did you mean 'huber'?
"""

from __future__ import annotations

import difflib
from typing import Iterable

__all__ = [
    "LossDSLError",
    "LossSyntaxError",
    "LossNameError",
    "LossArgumentError",
    "LossTypeError",
    "LossInputError",
    "NonFiniteLossError",
    "did_you_mean",
    "location",
]


def location(source: str, offset: int) -> tuple[int, int]:
    """Return the 1-based ``(line, column)`` of a character offset in ``source``."""
    offset = max(0, min(offset, len(source)))
    line = source.count("\n", 0, offset) + 1
    line_start = source.rfind("\n", 0, offset) + 1
    return line, offset - line_start + 1


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A hint naming the closest candidates to ``name``, or ``None`` when nothing is close.

    >>> did_you_mean("hubr", ["huber", "mse", "mae"])
    "did you mean 'huber'?"
    """
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.6)
    if not close:
        return None
    if len(close) == 1:
        return f"did you mean '{close[0]}'?"
    return "did you mean " + ", ".join(f"'{c}'" for c in close[:-1]) + f" or '{close[-1]}'?"


class LossDSLError(ValueError):
    """A problem with a loss program, reported at the place in the text where it is.

    Attributes: ``message`` (what is wrong), ``source`` (the program text or ``None``),
    ``span`` (``(start, end)`` character offsets or ``None``), ``line`` and ``column``
    (1-based, of ``span[0]``), ``hint`` (how to fix it, or ``None``), ``term`` (the log name
    of the term at fault, for call-time errors).

    >>> import lossdsl
    >>> try:
    ...     lossdsl.compile("0.7*hubr(delta=1)")
    ... except lossdsl.LossDSLError as err:
    ...     print(type(err).__name__, err.line, err.column, err.span, err.hint)
    LossNameError 1 5 (4, 8) did you mean 'huber'?
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        span: tuple[int, int] | None = None,
        hint: str | None = None,
        term: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.span = span
        self.hint = hint
        self.term = term
        super().__init__(message)

    @property
    def line(self) -> int | None:
        if self.source is None or self.span is None:
            return None
        return location(self.source, self.span[0])[0]

    @property
    def column(self) -> int | None:
        if self.source is None or self.span is None:
            return None
        return location(self.source, self.span[0])[1]

    def located(self, source: str, span: tuple[int, int] | None, term: str | None = None):
        """Attach the program text and span where they are not known yet; returns ``self``."""
        if self.source is None:
            self.source = source
            if self.span is None:
                self.span = span
        if self.term is None:
            self.term = term
        self.args = (str(self),)
        return self

    def __str__(self) -> str:
        parts = [self.message]
        if self.source is not None and self.span is not None:
            parts[0] += f" (line {self.line}, column {self.column})"
            parts.extend(_caret_lines(self.source, self.span))
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "\n".join(parts)

    def __reduce__(self):
        kwargs = dict(source=self.source, span=self.span, hint=self.hint, term=self.term)
        return (_rebuild, (type(self), self.message, kwargs))


def _rebuild(cls, message, kwargs):
    return cls(message, **kwargs)


def _caret_lines(source: str, span: tuple[int, int]) -> list[str]:
    """The line holding ``span[0]`` and a caret line under the part of the span on it."""
    start, end = span
    start = max(0, min(start, len(source)))
    line_start = source.rfind("\n", 0, start) + 1
    line_end = source.find("\n", start)
    if line_end == -1:
        line_end = len(source)
    text = source[line_start:line_end].rstrip("\r")
    if len(text) > 160:
        # Very long lines (generated configs) are cut around the caret.
        left = max(0, start - line_start - 60)
        more = left + 120 < len(text)
        text = ("..." if left else "") + text[left : left + 120] + ("..." if more else "")
        line_start += left - (3 if left else 0)
    stop = max(start + 1, min(end, line_end))
    caret_at = start - line_start
    width = max(1, min(stop - start, len(text) - caret_at if caret_at < len(text) else 1))
    visible = "".join(ch if ch == "\t" else " " for ch in text[:caret_at])
    return ["  " + text, "  " + visible + "^" * width]


class LossSyntaxError(LossDSLError):
    """The text is not a well-formed program (bad token, missing bracket, ...).

    >>> import torch, lossdsl
    >>> try:
    ...     lossdsl.parse("mse +")
    ... except lossdsl.LossSyntaxError as err:
    ...     print(err.column, err.message)
    6 expected a term after '+', found end of input
    """


class LossNameError(LossDSLError):
    """A name that is not a binding, a registered term or a built-in function.

    >>> import torch, lossdsl
    >>> try:
    ...     lossdsl.compile("mse + hubr")
    ... except lossdsl.LossNameError as err:
    ...     print(err.hint)
    did you mean 'huber'?
    """


class LossArgumentError(LossDSLError):
    """A bad argument: unknown keyword, value out of range, wrong count of operands.

    >>> import torch, lossdsl
    >>> try:
    ...     lossdsl.compile("huber(delta=-1)")
    ... except lossdsl.LossArgumentError as err:
    ...     print(err.message)
    huber: delta=-1 is not allowed
    """


class LossTypeError(LossDSLError):
    """A kind mismatch: e.g. the program has no loss term, or a loss where a number is needed.

    >>> import torch, lossdsl
    >>> try:
    ...     lossdsl.compile("pred - target")
    ... except lossdsl.LossTypeError as err:
    ...     print(err.message)
    the program's value is a tensor, not a loss
    """


class LossInputError(LossDSLError):
    """A call-time problem with the tensors given to ``forward`` (missing, unread, bad shape).

    >>> import torch, lossdsl
    >>> try:
    ...     lossdsl.compile("mse")(torch.zeros(3), torch.zeros(4))
    ... except lossdsl.LossInputError as err:
    ...     print(err.term, err.message)
    mse term 'mse': pred has shape (3,) but target has shape (4,)
    """


class NonFiniteLossError(LossDSLError, ArithmeticError):
    """A term produced NaN or infinity under ``nonfinite="raise"``.

    >>> import torch, lossdsl
    >>> try:
    ...     lossdsl.compile("mean(log(pred))")(torch.zeros(3))
    ... except lossdsl.NonFiniteLossError as err:
    ...     print(err.message)
    term 'mean' is -inf at step 0
    """


for _cls in (
    LossDSLError,
    LossSyntaxError,
    LossNameError,
    LossArgumentError,
    LossTypeError,
    LossInputError,
    NonFiniteLossError,
):
    # Tracebacks then read `lossdsl.LossNameError: ...`, the name users import.
    _cls.__module__ = "lossdsl"
