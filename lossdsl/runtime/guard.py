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

from ..errors import NonFiniteLossError

__all__ = ["POLICIES", "GATED_POLICIES", "CHECKED_POLICIES", "Gate", "Gated", "settle", "nonfinite_error"]

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


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


def nonfinite_error(row: Tensor, names: Sequence[str], is_term: Sequence[bool], step: int) -> NonFiniteLossError:
    """The error naming the non-finite terms of one call (``row`` = values, then the total),
    or the total when every term is finite. Located by the ``Loss``, which knows the spans."""
    values = row.detach().float().cpu().tolist()
    total = values[-1]
    bad = [i for i, v in enumerate(values[:-1]) if not _finite(v)]
    # name the terms themselves; a named composite is only named when no term is bad
    bad = [i for i in bad if is_term[i]] or bad
    if not bad:
        return NonFiniteLossError(
            f"the total is {total} at step {step}, although every term is finite",
            hint="an operation between terms overflowed or divided by zero; check divisions, exp and powers of terms",
        )
    if len(bad) == 1:
        message = f"term '{names[bad[0]]}' is {values[bad[0]]} at step {step}"
    else:
        shown = ", ".join(f"'{names[i]}' = {values[i]}" for i in bad)
        message = f"terms {shown} are not finite at step {step}"
    return NonFiniteLossError(
        message,
        term=names[bad[0]],
        hint="check the inputs of this term, or compile with nonfinite='zero_term' or 'skip_batch' to train through it",
    )
