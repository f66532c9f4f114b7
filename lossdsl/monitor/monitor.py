"""``Monitor``: per-term magnitudes (DESIGN.md §7), kept as running statistics on the inputs'
device: raw value, effective weight, weighted contribution and share of every term.

The per-call path reads no tensor on the host. An eager call keeps a reference to the row
of values the loss made (``[raw..., total]``) and its weights; every 256 calls (or when
someone reads) the rows are stacked and folded into the statistics at once. Inside
``torch.compile`` the single row is folded in the graph, where it is fused. Training calls
and validation calls (``crit.eval()``, ``torch.no_grad()``, ``torch.inference_mode()``) go
to separate statistics.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..errors import LossDSLError
from ..runtime.step_check import checked_step
from .gradients import GradientStats
from .readers import PHASES, Windows, check_prefix, format_table, phase_index, stats_table, step_part
from .readers import check_saved_windows, to_host, window_scalars
from .sinks import AttachedSinks, as_sink
from .stats import PENDING_ROWS, CallInputs, Increment, PendingRows, fold_row, new_statistics
from .stats import fold_rows, probe_norms, probe_settings, probed_inputs, stack_rows, stat_dtype
from .suggest import Rewrite, Suggestion, suggest_from_stats

__all__ = ["Monitor"]


class Monitor(nn.Module):
    """Running statistics of every term of a :class:`~lossdsl.Loss`: ``crit.monitor``.

    ``names``: the logged terms and named composites, in order; ``is_term``: which of them
    are terms (shares are over the terms; default: all); ``inputs_read``: the inputs the
    program reads (what :meth:`probe` may differentiate by); ``rewrite(scale, magnitude) ->
    (source, scale)``: the program text with each term's weight scaled, for
    :meth:`suggest_weights`. ``ema``: decay of the moving average (bias-corrected when
    read); ``enabled=False`` stops recording. The statistics are buffers (in
    ``crit.state_dict()``), one set per phase, with a column for the total. Every reader
    (``as_dict()`` of each phase, each attached sink) has its own window; ``summary()`` and
    ``stats()`` cover everything since ``reset()``. Reading syncs with the device once.

    >>> import torch, lossdsl
    >>> crit = lossdsl.compile("0.7*mse + 0.3*mae")
    >>> for _ in range(3):
    ...     _ = crit(torch.zeros(4), torch.ones(4))
    >>> logs = crit.monitor.as_dict()
    >>> round(logs["loss/mse/weighted"], 3), round(logs["loss/mae/share"], 3)
    (0.7, 0.3)
    """

    def __init__(
        self,
        names: Sequence[str],
        is_term: Sequence[bool] | None = None,
        inputs_read: Iterable[str] | None = None,
        rewrite: Rewrite | None = None,
        *,
        ema: float = 0.99,
    ) -> None:
        super().__init__()
        for name, statistic in new_statistics(len(names) + 1, len(PHASES)).items():
            self.register_buffer(name, statistic)
        self.names = list(names)
        self.is_term = [True] * len(self.names) if is_term is None else [bool(t) for t in is_term]
        # shares are relative to the sum over the terms: composites and the total are left out
        self.register_buffer("_leaf", torch.tensor(self.is_term + [False], dtype=self.sums.dtype), persistent=False)
        self.inputs_read = None if inputs_read is None else frozenset(inputs_read)
        self.rewrite = rewrite
        self.enabled = True
        self.ema = float(ema)
        self._pending = PendingRows()
        self._windows = Windows()
        self.gradients = GradientStats(self._windows)  # the terms' gradients on `shared` (§6.1)
        self._sinks = AttachedSinks()
        self._probe_every = 0
        self._probe_inputs = ("pred",)

    # --- the per-call path ----------------------------------------------------------------

    def record(
        self,
        row: Tensor,
        weights: Tensor,
        step: Tensor | None = None,
        values: Sequence[Tensor] = (),
        inputs: CallInputs | None = None,
    ) -> None:
        """Record one call: ``row`` = ``[raw values..., total]`` (K+1,), detached, and the
        effective ``weights`` (K,). ``step``: the stored optimizer step (a tensor read only
        when a sink writes; without it sink rows carry the count of training calls).
        ``values`` (the term tensors, with their graph) and ``inputs`` are for the probe.

        A call in eval mode or with gradients disabled is a validation call. The statistics
        follow the inputs' device (under ``torch.compile``, move the loss there first).
        """
        if row.device.type == "meta":
            return  # a shape-checking call: no numbers, and the statistics stay where they are
        phase = 0 if self.training and torch.is_grad_enabled() else 1
        if weights.requires_grad:
            weights = weights.detach()  # a kept weight must not keep the call's graph alive
        pending = self._pending
        if step is not None:
            pending.step = step
        if torch.compiler.is_compiling():
            # one row, folded inside the graph; the probe and the sinks need the host
            self._add(fold_row(row, weights, self._leaf, self.ema), phase)
            return
        with pending.lock:
            if row.device != pending.device:  # the statistics follow the inputs, moved once
                with torch.inference_mode(False):  # made in an inference_mode call, stay writable
                    self.to(row.device)
            if phase != pending.phase or len(pending.rows) == PENDING_ROWS:
                self._flush()
                pending.phase = phase
            pending.rows.append((row, weights))
            if phase:
                return
            calls = pending.calls = pending.calls + 1
            if self._probe_every and (calls - 1) % self._probe_every == 0 and inputs is not None:
                self._probe(weights, values, inputs)
            if self._sinks.entries:
                self._after_training_call(calls)

    def _add(self, inc: Increment, phase: int) -> None:
        self.sums[phase, : inc.sums.shape[0]].add_(inc.sums)
        self.ema_acc[phase].mul_(inc.decay).add_(inc.ema_add)
        self.ema_norm[phase].mul_(inc.decay).add_(inc.norm_add)
        low, high = self.low[phase], self.high[phase]
        torch.minimum(low, inc.low, out=low)
        torch.maximum(high, inc.high, out=high)

    def _flush(self) -> None:
        """Fold the pending rows into the statistics."""
        pending = self._pending
        with pending.lock:
            if pending.rows:
                rows, pending.rows = pending.rows, []
                self._add(fold_rows(stack_rows(rows, self._leaf.dtype), self._leaf, self.ema), pending.phase)

    def _apply(self, fn, recurse: bool = True):
        self._flush()  # the pending rows are on the old device
        # what is on meta (the module moved there whole; what a load with assign=True left
        # there) holds no numbers: wherever it goes next, it starts anew
        anew = self.sums.is_meta
        for name, buf in self._buffers.items():  # every buffer of the monitor is a tensor
            if buf.is_meta:
                buf = torch.empty(buf.shape, dtype=buf.dtype)
            moved = fn(buf)
            wanted = stat_dtype(moved.device) if buf.is_floating_point() else buf.dtype
            # `.half()` moves nothing and must not round the sums: convert from the original
            self._buffers[name] = moved if moved.dtype == wanted else buf.to(moved.device, wanted)
        self._pending.device = self.sums.device
        if not self._leaf.is_meta:  # made from the names, so made anew wherever it went
            with torch.no_grad():
                self._leaf.copy_(torch.tensor(self.is_term + [False]))
            if anew:
                self.reset()
        return self

    # --- gradient-norm probe --------------------------------------------------------------

    def probe(self, every: int = 1, inputs: Sequence[str] = ("pred",)) -> "Monitor":
        """Every ``every`` training calls (the first included) also record the gradient norm
        of each weighted term with respect to ``inputs`` (``pred``, ``target`` or keyword
        inputs), the true balance signal.

        It calls ``torch.autograd.grad(..., retain_graph=True)`` with those inputs only, so no
        parameter's ``.grad`` changes and the later ``backward()`` is unaffected. Calls whose
        inputs do not require grad are skipped. ``every=0`` turns it off. The probe runs in
        eager calls only: inside ``torch.compile`` it is skipped.

        >>> import torch, lossdsl
        >>> crit = lossdsl.compile("mse + mae")
        >>> _ = crit.monitor.probe(every=10)
        >>> _ = crit(torch.zeros(4, requires_grad=True), torch.ones(4))
        >>> crit.monitor.as_dict()["loss/mse/grad_norm"]   # |2 e / n| * sqrt(n)
        1.0
        """
        self._probe_every, self._probe_inputs = probe_settings(every, inputs, self.inputs_read)
        return self

    def _probe(self, weights: Tensor, values: Sequence[Tensor], inputs: CallInputs) -> None:
        wrt = probed_inputs(inputs, self._probe_inputs, values)
        if wrt:
            probed = probe_norms(values, weights, wrt, self._leaf.dtype, self.sums.device)
            self.sums[0, -2:, :-1].add_(probed)  # not the total: one backward pass fewer

    # --- sinks ----------------------------------------------------------------------------

    def attach(self, sink: Any, every: int = 10) -> Any:
        """Write to ``sink`` at every ``every``-th training call (eager calls; under
        ``torch.compile`` call :meth:`write` from the training loop instead).

        ``sink``: a :class:`~lossdsl.JsonlWriter`, a :class:`~lossdsl.TensorBoardWriter`, a
        path (a JSONL file), any object with ``write(scalars, step)``, or a function
        ``f(scalars, step)``. Each row holds the means of the training calls since the
        sink's own previous row (the first: since it was attached), labelled with the step
        the loss stores (``crit(..., step=s)`` or ``crit.set_step(s)``), so with gradient
        accumulation several calls share a step. The count of training calls is in the
        state, so a resumed run writes at the calls an uninterrupted one would.

        >>> import torch, lossdsl
        >>> crit = lossdsl.compile("mse")
        >>> seen = []
        >>> _ = crit.monitor.attach(lambda scalars, step: seen.append(step), every=2)
        >>> for step in range(100, 104):
        ...     _ = crit(torch.zeros(3), torch.ones(3), step=step)
        >>> seen
        [101, 103]
        """
        if isinstance(every, bool) or not isinstance(every, Integral) or every < 1:
            raise LossDSLError(f"attach(every={every!r}): every must be a whole number >= 1", hint="N >= 1 calls")
        sink = as_sink(sink)
        with self._pending.lock:
            key = self._sinks.add(sink, every)
            if key not in self._windows:  # a window loaded from a resumed state is kept
                self._flush()
                self._windows.mark(key, self.sums[0])
                self.gradients.mark(key)
        return sink

    def write(self, step: int | None = None) -> None:
        """Write to every attached sink now, each the means since its previous row; ``step``
        labels the rows (default: the step the loss stores).

        >>> import torch, lossdsl; crit, rows = lossdsl.compile("mse"), []
        >>> _ = crit.monitor.attach(lambda scalars, step: rows.append((step, scalars["loss/mse"])), every=100)
        >>> _ = crit(torch.zeros(2), torch.full((2,), 2.0)); crit.monitor.write(step=7); rows
        [(7, 4.0)]
        """
        step = None if step is None else int(checked_step(step))  # refused before a window is read
        with self._pending.lock:
            self._sinks.start()
            self._write(self._sinks.every_sink(), step)

    def _after_training_call(self, calls: int) -> None:
        if self._sinks.unstarted:
            self._sinks.start()
        due = self._sinks.due(calls)
        if due:
            self._write(due)

    def _write(self, due: list[tuple[str, Any]], step: int | None = None) -> None:
        if not due:
            return
        self._windows.save()  # a sink that fails gets its window back
        windows, stored = self._read_windows([(key, 0) for key, _ in due], sync=False)
        rows = [(key, sink, {**window_scalars(win, self.names, "loss/"), **self.gradients.scalars(key, "loss/")})
                for (key, sink), win in zip(due, windows)]
        self._sinks.write(rows, stored if step is None else int(step), self._windows.give_back)

    def flush(self) -> None:
        """Flush the attached sinks."""
        self._sinks.flush()

    def close(self) -> None:
        """Close and detach every sink."""
        with self._pending.lock:
            self._windows.forget(self._sinks.close())

    # --- reading --------------------------------------------------------------------------

    def _read_windows(self, readers: list[tuple[str, int]], sync: bool) -> tuple[list, int]:
        """Each reader's window (the sums of its phase since its previous read, as lists)
        and the stored step, in one copy to the host."""
        pending = self._pending
        with pending.lock, self._windows.undone_on_error():
            self._flush()
            parts = {"windows": self._windows.take(self.sums, readers)}
            parts["step"] = step_part(pending.step, self.sums)  # on every rank: one collective
            snap = to_host(parts, sync, self._leaf.dtype)
        if pending.step is None:
            return snap["windows"], pending.calls
        step = snap["step"][0]
        return snap["windows"], int(step) if step == step else 0  # NaN on meta

    def as_dict(self, prefix: str = "loss/", sync: bool = False, phase: str = "train") -> dict[str, float]:
        """Means since this reader's previous read (or ``reset()``), as plain floats, for any
        logger (``self.log_dict(crit.monitor.as_dict())`` in Lightning). Keys: ``total``,
        ``<term>`` (raw), ``<term>/weight``, ``<term>/weighted``, ``<term>/share`` and
        ``<term>/grad_norm`` (when probed), each after ``prefix``; under a gradient balancer
        also ``<term>/shared_grad_norm`` and ``<a>~<b>/cos`` (:mod:`.gradients`, not summed over
        ranks). A term never finite in the window reads NaN. ``phase="eval"``: the validation
        calls, a window of its own; the sinks have windows of their own too. ``sync=True`` adds
        up the windows of every rank. Empty when nothing was recorded since the last read.

        >>> import torch, lossdsl
        >>> crit = lossdsl.compile("2*mse")
        >>> _ = crit(torch.zeros(2), torch.ones(2))
        >>> crit.monitor.as_dict(prefix="")
        {'total': 2.0, 'mse': 1.0, 'mse/weight': 2.0, 'mse/weighted': 2.0, 'mse/share': 1.0}
        >>> with torch.no_grad():
        ...     _ = crit(torch.zeros(2), torch.full((2,), 3.0))
        >>> crit.monitor.as_dict(prefix="val/", phase="eval")["val/mse"]
        9.0
        """
        check_prefix(prefix)
        (window,), _ = self._read_windows([(phase, phase_index(phase))], sync)
        return {**window_scalars(window, self.names, prefix), **self.gradients.scalars(phase, prefix)}

    def stats(self, sync: bool = False, phase: str = "train") -> dict[str, dict[str, float]]:
        """Statistics since ``reset()`` for every name and ``"total"``: ``mean`` ``ema``
        ``min`` ``max`` (of the raw value), ``nonfinite`` (calls where it was not finite),
        ``count`` (finite calls), means of ``weight`` ``weighted`` ``share``, and
        ``grad_norm`` (NaN when never probed), of the training calls (``phase="eval"``: the
        validation calls). With ``sync=True`` over all ranks (counts and sums add up,
        min/max reduce, the EMAs are averaged by their weight).

        >>> import torch, lossdsl
        >>> crit = lossdsl.compile("mse")
        >>> for value in (1.0, 3.0):
        ...     _ = crit(torch.zeros(1), torch.full((1,), value))
        >>> s = crit.monitor.stats()["mse"]
        >>> s["mean"], s["min"], s["max"], s["nonfinite"]
        (5.0, 1.0, 9.0, 0.0)
        """
        p = phase_index(phase)
        with self._pending.lock:
            self._flush()
            parts = {"sums": self.sums[p], "ema_acc": self.ema_acc[p, 0], "ema_norm": self.ema_norm[p],
                     "low": self.low[p, 0], "high": self.high[p, 0]}
            snap = to_host(parts, sync, self._leaf.dtype)
        return stats_table(snap, self.names, self.is_term)

    def summary(self, sync: bool = False, phase: str = "train") -> str:
        """A readable table of :meth:`stats`: weight, raw mean/EMA/min/max, weighted mean,
        share %, share of the gradient norm % (when probed) and the non-finite count."""
        return format_table(self.stats(sync, phase), self.is_term) + (self.gradients.table() if phase == "train" else "")

    def reset(self) -> None:
        """Clear every statistic of both phases and start every reader's window anew (the
        count of training calls, the probe's and the sinks' cadence, keeps counting).

        >>> import torch, lossdsl
        >>> crit = lossdsl.compile("mse")
        >>> _ = crit(torch.zeros(2), torch.ones(2)); crit.monitor.reset()
        >>> crit.monitor.stats()["mse"]["count"], crit.monitor.as_dict()
        (0.0, {})
        """
        with self._pending.lock:
            self._pending.rows = []
            self._windows.clear()
            for name, fresh in new_statistics(len(self.names) + 1, len(PHASES)).items():
                getattr(self, name).copy_(fresh)
            self.gradients.reset()

    def suggest_weights(self, target: dict[str, float] | None = None) -> Suggestion:
        """Weights that give every term an equal share (or the ``target`` shares of the whole;
        terms it leaves out share the rest equally) of the gradient norm where probed, else
        of the weighted magnitude, over the training calls, and the source rewritten with
        them (comments and layout kept).

        >>> import torch, lossdsl
        >>> crit = lossdsl.compile("mse + mae  # two terms")
        >>> _ = crit(torch.zeros(4), torch.full((4,), 10.0))
        >>> crit.monitor.suggest_weights().source
        '0.55*mse + 5.5*mae  # two terms'
        """
        terms = [n for n, term in zip(self.names, self.is_term) if term]
        return suggest_from_stats(self.stats(), terms, target, self.rewrite)

    # --- state ----------------------------------------------------------------------------

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        with self._pending.lock:  # statistics, count and marks of one moment, whatever other threads do
            self._flush()  # pending rows belong in the saved statistics
            super()._save_to_state_dict(destination, prefix, keep_vars)

    def get_extra_state(self) -> dict:
        """What decides the monitor's future besides the statistics: the count of training
        calls (the probe's and the sinks' cadence) and every reader's window."""
        return {"calls": self._pending.calls, "marks": self._windows.state()}

    check_extra_state = staticmethod(check_saved_windows)  # before a load copies anything

    def set_extra_state(self, state: Any) -> None:
        self._pending.calls = int(state["calls"])
        self._windows.load(state["marks"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        with self._pending.lock:
            self._pending.rows = []
            super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
            self._sinks.resumed = True  # an attached log continues, it is not replaced
            self._pending.device = None  # the next call moves what a load with assign=True left on meta

    def __getstate__(self):
        self._flush()
        state = self.__dict__.copy()
        state["_sinks"] = AttachedSinks(resumed=True)  # files and closures stay; a copy continues its logs
        return state

    def extra_repr(self) -> str:
        return f"{len(self.names)} terms, ema={self.ema}, probe_every={self._probe_every}"
