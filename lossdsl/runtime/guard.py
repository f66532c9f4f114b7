"""What a call does when a term is NaN or infinite (DESIGN.md §8): the gates of
``zero_term`` and ``skip_batch``, which run inside the program without synchronising.

- ``"zero_term"`` replaces a bad term by 0 *before* the terms are combined, and lets exactly
  zero gradient flow out of that term's graph.
- ``"skip_batch"`` returns a zero loss whose gradient is exactly zero everywhere.

How the zero gradient is made exact: replacing a term's value with
``torch.where(ok, value, 0)`` is not enough, because the term's own backward then multiplies
the zero upstream gradient by local derivatives that may be infinite (``0 * inf = NaN``). So
each tensor input of a gated term enters the term through a fresh view, and a gradient hook on
that view replaces the gradient leaving the term by ``torch.where(ok, grad, 0)``. No tensor
is changed in place and nothing is read on the host.

>>> import torch
>>> gate = Gate(lambda p: torch.sqrt(p).mean())
>>> pred = torch.tensor([-1.0, 4.0], requires_grad=True)
>>> kept = gate(pred)
>>> kept.raw.isnan().item(), kept.value.item()
(True, 0.0)
>>> settle("zero_term", kept.value, [kept]).backward()
>>> pred.grad.tolist()
[0.0, 0.0]
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

import torch.distributed as dist

from ..errors import NonFiniteLossError

__all__ = [
    "POLICIES", "GATED_POLICIES", "CHECKED_POLICIES", "Gate", "Gated", "settle", "nonfinite_error", "ranks_deciding",
    "bad_counts", "Entries", "entry_views", "gate_values",
]

POLICIES = ("raise", "warn", "zero_term", "skip_batch")
GATED_POLICIES = frozenset({"zero_term", "skip_batch"})
CHECKED_POLICIES = frozenset({"raise", "warn"})


class Gated:
    """One gated term call: ``value`` (0 where not finite) for the total, ``raw`` for the
    logs, the finiteness flag ``ok`` and the views its inputs entered through."""

    __slots__ = ("value", "raw", "ok", "views")

    def __init__(self, value: Tensor, raw: Tensor, ok: Tensor, views: list[Tensor]) -> None:
        self.value, self.raw, self.ok, self.views = value, raw, ok, views


def _entry_view(arg: Any, views: list[Tensor]) -> Any:
    """A fresh view of a tensor input (or of each tensor in a list/tuple) that needs grad."""
    if isinstance(arg, Tensor):
        if not arg.requires_grad:
            return arg
        view = arg.view_as(arg)
        views.append(view)
        return view
    if type(arg) in (list, tuple) and arg and all(isinstance(a, Tensor) for a in arg):
        return type(arg)(_entry_view(a, views) for a in arg)
    return arg  # e.g. an nn.Module for l2_reg: its parameters are not gated (see README)


class Gate:
    """Runs a term under ``zero_term``/``skip_batch``: returns a :class:`Gated`."""

    def __init__(self, term: Callable[..., Tensor]) -> None:
        self.term = term
        self.__name__ = f"gated_{getattr(term, '__name__', 'term')}"
        self.__qualname__ = self.__name__
        self.__module__ = __name__

    def __call__(self, *args: Any) -> Gated:
        views: list[Tensor] = []
        raw = self.term(*[_entry_view(a, views) for a in args])
        ok = torch.isfinite(raw).all()
        return Gated(torch.where(ok, raw, 0.0), raw, ok, views)


class Entries:
    """The values an inline term reads from outside it, as views of its own (``values``),
    and the views made (``views``: those of tensors that need grad)."""

    __slots__ = ("values", "views")

    def __init__(self, values: tuple, views: list[Tensor]) -> None:
        self.values, self.views = values, views


def entry_views(*values: Any) -> Entries:
    """Open an inline term's own entries (see :class:`Gate` for a catalogue term's)."""
    views: list[Tensor] = []
    return Entries(tuple(_entry_view(v, views) for v in values), views)


def gate_values(raw: Tensor, views: list[Tensor]) -> Gated:
    """An inline term's value under ``zero_term``/``skip_batch``, as :class:`Gate` gives a
    catalogue term's."""
    ok = torch.isfinite(raw).all()
    return Gated(torch.where(ok, raw, 0.0), raw, ok, views)


def _gate(ok: Tensor) -> Callable[[Tensor], Tensor]:
    # where, not multiply: the gradient coming back may itself be NaN, and 0 * NaN = NaN
    return lambda grad: torch.where(ok, grad, 0.0)


def settle(policy: str, total: Any, gated: Sequence[Gated]) -> Any:
    """Install the gradient gates of one call; returns the total to give back (zero under
    ``skip_batch`` when any term, or the total, is not finite)."""
    if policy == "skip_batch" and isinstance(total, Tensor):
        batch_ok = torch.isfinite(total).all()
        for g in gated:
            batch_ok = batch_ok & g.ok
        total = torch.where(batch_ok, total, 0.0)
        oks = [batch_ok] * len(gated)
    else:
        oks = [g.ok for g in gated]
    for g, ok in zip(gated, oks):
        gate = _gate(ok)
        for view in g.views:
            if view.requires_grad:  # not under no_grad
                view.register_hook(gate)
    return total


def ranks_deciding(policy: str, training: bool) -> int:
    """How many ranks decide a call's ``raise`` together: the process group's size for a
    training call (training mode, gradients enabled), else 1. All-reducing the flags then
    makes a NaN on one rank raise on every rank, so a loop that catches the error and skips
    the batch keeps the ranks' collectives in step."""
    if policy != "raise" or not training or not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def bad_counts(row: Tensor, ranks: int) -> list[int]:
    """Per term and then the total: on how many of the ``ranks`` it was not finite."""
    flags = (~torch.isfinite(row.detach())).to(torch.int32)
    if ranks > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.SUM)
    return flags.tolist()


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


def nonfinite_error(
    row: Tensor, names: Sequence[str], is_term: Sequence[bool], step: int, counts: list[int], ranks: int, where
) -> NonFiniteLossError:
    """The error naming the non-finite terms of one call (``row`` = values, then the total),
    or the total when every term is finite. ``counts``: see :func:`bad_counts`; ``where(i)``:
    `` (line L, column C)`` of item ``i``. The ``Loss`` locates it in its source."""
    values = row.detach().float().cpu().tolist()

    def on(n: int) -> str:
        return f" (on {n} of {ranks} ranks)" if ranks > 1 else ""

    # a value that is finite here was bad on another rank
    shown = [v if not _finite(v) else "not finite on another rank" for v in values]
    bad = [i for i, n in enumerate(counts[:-1]) if n]
    # name the terms themselves; a named composite is only named when no term is bad
    bad = [i for i in bad if is_term[i]] or bad
    if not bad:
        return NonFiniteLossError(
            f"the total is {shown[-1]} at step {step}{on(counts[-1])}, although every term is finite",
            hint="an operation between terms overflowed or divided by zero; check divisions, exp and powers of terms",
        )
    if len(bad) == 1:
        message = f"term '{names[bad[0]]}' is {shown[bad[0]]} at step {step}{on(counts[bad[0]])}"
    else:
        parts = ", ".join(f"'{names[i]}' = {shown[i]}{on(counts[i])}{where(i)}" for i in bad)
        message = f"terms {parts} are not finite at step {step}"
    return NonFiniteLossError(
        message,
        term=names[bad[0]],
        hint="check the inputs of this term, or compile with nonfinite='zero_term' or 'skip_batch' to train through it",
    )
