"""What happens when a term is NaN or infinite (DESIGN.md §8).

- ``"raise"`` raises :class:`~lossdsl.NonFiniteLossError` naming the term(s), their line and
  column in the source and the step.
- ``"warn"`` logs the same message on the ``lossdsl`` logger and returns the loss as it is.
- ``"zero_term"`` replaces a bad term by 0 *before* the terms are combined, and lets exactly
  zero gradient flow out of that term's graph.
- ``"skip_batch"`` returns a zero loss whose gradient is exactly zero everywhere.

``raise``/``warn`` read one flag per call (one host-device synchronisation); they are skipped
on the ``meta`` device and while ``torch.compile`` traces, so ``fullgraph=True`` works.
``zero_term``/``skip_batch`` never synchronise: everything is decided by ``torch.where``.

How the zero gradient is made exact: replacing a term's value with
``torch.where(ok, value, 0)`` is not enough, because the term's own backward then multiplies
the zero upstream gradient by local derivatives that may be infinite (``0 * inf = NaN``). So
each tensor input of a guarded term enters the term through a fresh view, and once the term's
value is known a gradient hook on that view replaces the gradient leaving the term by
``torch.where(ok, grad, 0)``. No tensor is changed in place and nothing is read on the host.

>>> import torch, lossdsl
>>> def spiky(pred, target):
...     '''Square root of the error: NaN where the error is negative.'''
...     return torch.sqrt(pred - target).mean()
>>> crit = lossdsl.compile("mse + spiky", terms={"spiky": spiky}, nonfinite="zero_term")
>>> pred = torch.zeros(3, requires_grad=True)
>>> loss = crit(pred, torch.ones(3))
>>> crit.terms["spiky"].isnan().item(), loss.item()  # the raw NaN is reported, the total uses 0
(True, 1.0)
>>> loss.backward()
>>> [round(g, 4) for g in pred.grad.tolist()]  # d mse / d pred only: 2 (pred - target) / 3
[-0.6667, -0.6667, -0.6667]
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import Tensor

from .errors import NonFiniteLossError, location

__all__ = ["POLICIES", "GATED_POLICIES", "NonFiniteGuard", "call_guarded"]

POLICIES = ("raise", "warn", "zero_term", "skip_batch")
GATED_POLICIES = ("zero_term", "skip_batch")
logger = logging.getLogger("lossdsl")


class _GuardedTerm:
    """What one guarded term call left behind: its value, finiteness flag and input views."""

    __slots__ = ("name", "value", "ok", "views")

    def __init__(self, name: str, value: Tensor, ok: Tensor, views: list[Tensor]) -> None:
        self.name, self.value, self.ok, self.views = name, value, ok, views


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


def call_guarded(fn: Callable[..., Any], args: list, hyper: dict, env, name: str) -> Any:
    """Run one term under ``zero_term``/``skip_batch``; returns the value with NaN/inf as 0.

    The raw value, its flag and the input views are kept on ``env.guarded`` so that
    :meth:`NonFiniteGuard.finish` can report the raw value and install the gradient gates.
    """
    views: list[Tensor] = []
    value = fn(*[_entry_view(a, views) for a in args], **hyper)
    if not isinstance(value, Tensor):
        return value
    ok = torch.isfinite(value).all()
    if env.guarded is None:
        env.guarded = []
    env.guarded.append(_GuardedTerm(name, value, ok, views))
    return torch.where(ok, value, 0.0)


def _gate(ok: Tensor) -> Callable[[Tensor], Tensor]:
    # where, not multiply: the gradient coming back may itself be NaN, and 0 * NaN = NaN.
    return lambda grad: torch.where(ok, grad, 0.0)


class NonFiniteGuard:
    """Applies the loss's non-finite policy at the end of each call."""

    def __init__(self, policy: str, plan, source: str) -> None:
        self.policy = policy
        self.names = list(plan.logged_names)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.spans = [getattr(item, "span", None) for item in plan.logged_items]
        self.is_term = [hasattr(item, "spec") for item in plan.logged_items]
        self.source = source

    def finish(self, logged: list[Tensor], total: Any, env) -> tuple[list[Tensor], Any]:
        """Install the gradient gates; returns (values to report, total to return).

        The reported values are the raw ones (a NaN term shows as NaN in ``crit.terms`` and
        the monitor's non-finite count) while the total uses the zeros.
        """
        records = env.guarded
        if self.policy not in GATED_POLICIES or not records:
            return logged, total
        if self.policy == "skip_batch" and isinstance(total, Tensor):
            batch_ok = torch.isfinite(total).all()
            for record in records:
                batch_ok = batch_ok & record.ok
            total = torch.where(batch_ok, total, 0.0)
            oks = [batch_ok] * len(records)
        else:
            oks = [record.ok for record in records]
        shown = list(logged)
        for record, ok in zip(records, oks):
            gate = _gate(ok)
            for view in record.views:
                if view.requires_grad:  # not under no_grad
                    view.register_hook(gate)
            i = self.index.get(record.name)
            if i is not None:
                shown[i] = record.value
        return shown, total

    def check(self, raw: Tensor, total: Any, step: Tensor) -> None:
        """``raise``/``warn``: one flag read per call; nothing under meta or compile tracing."""
        if self.policy not in ("raise", "warn"):
            return
        if raw.device.type == "meta" or torch.compiler.is_compiling():
            return
        finite = torch.isfinite(raw).all()
        if isinstance(total, Tensor):
            finite = finite & torch.isfinite(total).all()
        if bool(finite):
            return
        error = self.error(raw, total, step)
        if self.policy == "warn":
            logger.warning("%s", error)
            return
        raise error

    def error(self, raw: Tensor, total: Any, step: Tensor) -> NonFiniteLossError:
        """The error naming the non-finite terms (or the total), their places and the step."""
        values = raw.detach().float().cpu().tolist()
        bad = [i for i, v in enumerate(values) if not _finite(v)]
        # Name the terms themselves; a named composite is only named when no term is bad.
        bad = [i for i in bad if self.is_term[i]] or bad
        step_no = int(step)
        if not bad:
            message = f"the total is {float(total.detach())} at step {step_no}, although every term is finite"
            return NonFiniteLossError(
                message,
                source=self.source,
                hint="an operation between terms overflowed or divided by zero; "
                "check divisions, exp and powers of terms",
            )
        parts = [f"'{self.names[i]}' = {values[i]}{self._where(i)}" for i in bad]
        if len(bad) == 1:
            message = f"term '{self.names[bad[0]]}' is {values[bad[0]]} at step {step_no}"
        else:
            message = f"terms {', '.join(parts)} are not finite at step {step_no}"
        return NonFiniteLossError(
            message,
            source=self.source,
            span=self.spans[bad[0]],
            term=self.names[bad[0]],
            hint="check the inputs of this term, or compile with nonfinite='zero_term' "
            "or 'skip_batch' to train through it",
        )

    def _where(self, i: int) -> str:
        span = self.spans[i]
        if span is None:
            return ""
        line, column = location(self.source, span[0])
        return f" (line {line}, column {column})"


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))
