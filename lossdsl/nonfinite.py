"""What happens when a term is NaN or infinite (DESIGN.md §8).

- ``"raise"`` raises :class:`~lossdsl.NonFiniteLossError` naming the term(s), their line and
  column in the source and the step.
- ``"warn"`` logs the same message on the ``lossdsl`` logger and returns the loss as it is.
- ``"zero_term"`` replaces a bad term by 0 *before* the terms are combined, and lets exactly
  zero gradient flow out of that term's graph.
- ``"skip_batch"`` returns a zero loss whose gradient is exactly zero everywhere.

``raise``/``warn`` read one flag per call (one host-device synchronisation); they are skipped
on the ``meta`` device and while ``torch.compile`` traces, so ``fullgraph=True`` works.
Under ``raise``, a training call (training mode, gradients enabled) in an initialised process
group of more than one rank all-reduces the flags first, so a NaN on one rank raises on every
rank and a loop that catches the error and skips the batch keeps the ranks' collectives in
step. ``zero_term``/``skip_batch`` never synchronise: everything is decided by ``torch.where``.
A balancer whose terms one of them zeroed is told so (:func:`balancer_ok`) and leaves its
statistics as they were.

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
import torch.distributed as dist
from torch import Tensor

from . import ir
from .errors import NonFiniteLossError, location

__all__ = ["POLICIES", "GATED_POLICIES", "NonFiniteGuard", "call_guarded", "balancer_ok"]

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


def balancer_ok(node: ir.Balance) -> Callable[[Any], Tensor | None]:
    """``ok(env)``: whether every guarded term under the balancer ``node`` was finite in this
    call (a 0-dim bool tensor), or None when none of them ran guarded."""
    names = set()
    stack = list(node.args)
    while stack:  # iterative: programs nest up to 256 operations deep
        item = stack.pop()
        if isinstance(item, ir.Term):
            names.add(item.name)
        elif isinstance(item, (ir.Apply, ir.Balance)):
            stack.extend(item.args)
        elif isinstance(item, ir.Named):
            stack.append(item.value)

    def ok(env) -> Tensor | None:
        flag = None
        for record in env.guarded or ():
            if record.name in names:
                flag = record.ok if flag is None else flag & record.ok
        return flag

    return ok


def _ranks() -> int:
    """The size of the initialised process group; 1 without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


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

    def across_ranks(self, training: bool) -> int:
        """How many ranks decide this call together: the process group's size for a
        ``raise`` training call (training mode, gradients enabled), else 1."""
        if self.policy != "raise" or not training or not torch.is_grad_enabled():
            return 1
        if torch.compiler.is_compiling():
            return 1  # no check while tracing (see check), so nothing to agree on
        return _ranks()

    def check(self, raw: Tensor, total: Any, step: Tensor, ranks: int = 1) -> None:
        """``raise``/``warn``: one read per call; nothing under meta or compile tracing.

        ``ranks > 1``: the per-term flags are all-reduced first (one collective of K + 1
        numbers), so every rank raises when a term is bad on any of them. Every rank of the
        group must then make this call.
        """
        if self.policy not in ("raise", "warn"):
            return
        if raw.device.type == "meta" or torch.compiler.is_compiling():
            return
        bad = ~torch.isfinite(raw.detach()).reshape(raw.shape[0], -1).all(1)
        if isinstance(total, Tensor):
            total_bad = ~torch.isfinite(total.detach()).all().reshape(1)
        else:
            total_bad = bad.new_zeros(1)
        flags = torch.cat([bad, total_bad]).to(torch.int32)
        if ranks > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.SUM)  # per entry: on how many ranks it is bad
        counts = flags.tolist()
        if not any(counts):
            return
        error = self.error(raw, total, step, counts, ranks)
        if self.policy == "warn":
            logger.warning("%s", error)
            return
        raise error

    def error(
        self, raw: Tensor, total: Any, step: Tensor, counts: list[int] | None = None, ranks: int = 1
    ) -> NonFiniteLossError:
        """The error naming the non-finite terms (or the total), their places and the step.

        ``counts``: per term and then the total, on how many of the ``ranks`` it was not
        finite (None: this rank's values decide).
        """
        values = raw.detach().float().cpu().tolist()
        if counts is None:
            counts = [int(not _finite(v)) for v in values] + [int(not _finite(_number(total)))]
        bad = [i for i, n in enumerate(counts[:-1]) if n]
        # Name the terms themselves; a named composite is only named when no term is bad.
        bad = [i for i in bad if self.is_term[i]] or bad
        step_no = int(step)

        def on(n: int) -> str:
            return f" (on {n} of {ranks} ranks)" if ranks > 1 else ""

        if not bad:
            shown = _number(total)
            shown = shown if not _finite(shown) else "not finite on another rank"
            message = (
                f"the total is {shown} at step {step_no}{on(counts[-1])}, although every term is finite"
            )
            return NonFiniteLossError(
                message,
                source=self.source,
                hint="an operation between terms overflowed or divided by zero; "
                "check divisions, exp and powers of terms",
            )
        # a term that is finite here was bad on another rank
        shown = [values[i] if not _finite(values[i]) else "not finite on another rank" for i in range(len(values))]
        parts = [f"'{self.names[i]}' = {shown[i]}{on(counts[i])}{self._where(i)}" for i in bad]
        if len(bad) == 1:
            message = f"term '{self.names[bad[0]]}' is {shown[bad[0]]} at step {step_no}{on(counts[bad[0]])}"
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


def _number(total: Any) -> float:
    return float(total.detach()) if isinstance(total, Tensor) else float(total)


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))
