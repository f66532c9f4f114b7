"""Where in the text an error raised by a call belongs (DESIGN.md §8).

A call fails inside a term, an operation or while reading an input; the error knows a
name, a node or an input path, and the caret needs a span. The IR answers that question
here, once, for the loss and its non-finite report alike.

>>> import lossdsl
>>> from lossdsl.errors import LossInputError
>>> resolved = lossdsl.check("0.5*mse + mae")
>>> spans_by_name(resolved)
{'mse': (4, 7), 'mae': (10, 13)}
>>> err = locate(LossInputError("bad input", term="mae"), resolved)
>>> (err.line, err.column)
(1, 11)
"""

from __future__ import annotations

from ..errors import LossDSLError
from . import ir

__all__ = ["spans_by_name", "locate"]


def spans_by_name(resolved: ir.IR) -> dict[str, tuple[int, int]]:
    """The span of every name an error may give: each logged item under its log name, and a
    term that is not logged (one inside a tensor expression) under its label."""
    unlogged = {n.label: n.span for n in resolved.nodes() if isinstance(n, ir.Term)}
    return {**unlogged, **{item.name: item.node.span for item in resolved.logged}}


def locate(err: LossDSLError, resolved: ir.IR) -> LossDSLError:
    """``err`` with the program's source and the place of what failed: its own span, else the
    span of the term it names, of the operation it carries the index of, or of the term that
    reads the input it failed to read (whose message then names that term and parameter)."""
    span = err.span
    if span is None and err.term is not None:
        span = spans_by_name(resolved).get(err.term)
    index = getattr(err, "node_index", None)
    if span is None and index is not None:
        span = resolved.nodes()[index].span
    path = getattr(err, "input_path", None)
    if path is not None and err.term is None:  # an input that raised while being read
        reader = resolved.reader_of(path)
        if reader is not None and reader[1] is not None:
            term, param = reader
            name = next((i.name for i in resolved.logged if i.node is term), term.label)
            cause = err.__cause__
            err.message = (
                f"term '{name}' could not read its input '{'.'.join(path)}' for its '{param}': "
                f"{type(cause).__name__}: {cause}"
            )
            err.term, span = name, term.span
    return err.located(resolved.source, span, err.term)
