"""Per-term magnitudes (DESIGN.md §7): raw value, effective weight, weighted contribution and
share of every term, kept as running statistics on the inputs' device.

The per-call path never reads a tensor on the host. In eager mode a call keeps a reference
to the row of its values that the loss made (``[raw..., total]``); once per 256 calls (or
when someone reads) the rows are written into a history of rows ``[raw..., total,
weight..., 1]`` and folded into the statistics, vectorised (the statistics themselves are
in ``monitor_stats.py``, the readers in ``monitor_read.py``). Inside ``torch.compile`` the
same fold runs on the single row in the graph, where it is fused.

Training calls and validation calls (``crit.eval()``, ``torch.no_grad()``,
``torch.inference_mode()``) are folded into separate statistics. The eager bookkeeping of a
call runs under a lock, so a loss called from several threads counts every call once.

>>> import torch, lossdsl
>>> crit = lossdsl.compile("0.7*mse + 0.3*mae")
>>> for _ in range(3):
...     _ = crit(torch.zeros(4), torch.ones(4))
>>> logs = crit.monitor.as_dict()
>>> round(logs["loss/mse/weighted"], 3), round(logs["loss/mae/share"], 3)
(0.7, 0.3)
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .errors import LossDSLError, did_you_mean
from .sinks import JsonlWriter, SinkHost, TensorBoardWriter
from .quickset import set_attributes, set_buffers
from .monitor_read import StatsReader
from .monitor_stats import QUANTITIES, ROWS, fold_rows
from .monitor_stats import acc_dtype as _acc_dtype
from .monitor_stats import buffer_dtype as _buffer_dtype
from .monitor_stats import grad_norm as _grad_norm
from .suggest import Suggestion

__all__ = ["Monitor", "Suggestion", "JsonlWriter", "TensorBoardWriter", "fold_rows"]

_HISTORY_ROWS = 256
_PHASES = 2  # 0: training calls, 1: validation calls (eval mode or gradients disabled)


class Monitor(SinkHost, StatsReader, nn.Module):
    """Running statistics of every term of a :class:`~lossdsl.Loss`: ``crit.monitor``.

    ``names``: the logged terms and named composites, in order. ``program``: the resolved
    program (which names are terms; the source for :meth:`suggest_weights`). ``ema``: decay
    of the exponential moving average (bias-corrected when read). ``enabled=False`` stops
    recording. Statistics are buffers (in ``crit.state_dict()``), one set per phase
    (training, validation), with an extra column for the total. Every reader (``as_dict()``
    of each phase, each attached sink) has its own window: the means since its own previous
    read. ``summary()`` and ``stats()`` cover everything since ``reset()``. Reading syncs
    with the device once.
    """

    def __init__(self, names: Sequence[str], program: Any = None, *, ema: float = 0.99) -> None:
        super().__init__()
        c = len(names) + 1
        acc = _acc_dtype(torch.device("cpu"))
        k = len(QUANTITIES)
        set_buffers(self, {
            "sums": torch.zeros(_PHASES, len(ROWS), c, dtype=acc),  # since reset(), per phase
            "ema_acc": torch.zeros(_PHASES, k, c, dtype=acc),
            "ema_norm": torch.zeros(_PHASES, c, dtype=acc),
            "low": torch.full((_PHASES, k, c), math.inf, dtype=acc),
            "high": torch.full((_PHASES, k, c), -math.inf, dtype=acc),
        })
        set_buffers(self, {"_history": torch.zeros(_HISTORY_ROWS, 2 * c)}, persistent=False)
        set_attributes(
            self,
            names=list(names),
            enabled=True,
            ema=float(ema),
            _eager=_EagerCounters(),
            _probe_every=0,
            _probe_inputs=("pred",),
            _sinks=[],
            _moved_weights={},
            _marks={},  # reader -> its phase's sums at its previous read (absent: zeros)
            _resumed=False,  # state was loaded: an attached log continues, it is not replaced
            _owner=None,  # weakref to the Loss whose stored step labels the sinks' rows
        )
        self._set_program(program, acc)

    @property
    def program(self) -> Any:
        return self._program

    @program.setter
    def program(self, program: Any) -> None:
        self._set_program(program, _acc_dtype(torch.device("cpu")))

    def _set_program(self, program: Any, acc: torch.dtype) -> None:
        k = len(self.names)
        # composites are not terms: every share is relative to the sum over the terms only
        leaf = [float(hasattr(item, "spec")) for item in program.logged] if program else [1.0] * k
        set_attributes(self, _program=program, _leaf_list=leaf + [0.0])
        old = self._buffers.get("_leaf")
        dtype, device = (acc, None) if old is None else (old.dtype, old.device)
        set_buffers(self, {"_leaf": torch.tensor(self._leaf_list, dtype=dtype, device=device)}, persistent=False)

    def follow_step_of(self, loss: nn.Module) -> None:
        """Label the sinks' rows with ``loss.step`` (the stored optimizer step), read when a
        row is written. ``Loss`` calls this; a monitor of its own labels them with the
        number of training calls."""
        set_attributes(self, _owner=weakref.ref(loss))

    def _stored_step(self) -> Tensor | int:
        loss = self._owner() if self._owner is not None else None
        step = getattr(loss, "step", None)
        return step if isinstance(step, Tensor) else self._eager.calls

    # --- the per-call path ----------------------------------------------------------------

    def record(self, raw: Tensor, weights: Tensor, total: Any, logged=None, env=None) -> None:
        """Record one call: raw term values (K,), effective weights (K,) and the total.

        A call in ``crit.eval()`` mode or with gradients disabled is a validation call. The
        statistics follow the inputs' device (under ``torch.compile``, move the loss there
        first: ``crit.to(device)``). ``logged`` (the term tensors) and ``env`` (the call's
        inputs) are for the probe."""
        device, history = raw.device, self._history
        phase = 0 if self.training and torch.is_grad_enabled() else 1
        if history.device != device:
            # state made during an inference_mode call must stay writable in later calls
            with torch.inference_mode(False):
                self._move(device)
            history = self._history
        if weights.device != device:
            weights = self._weights_on(weights, device)
        if weights.requires_grad:
            weights = weights.detach()
        flat = total.detach().reshape(1) if isinstance(total, Tensor) else raw.new_full((1,), total)
        parts = [raw, flat, weights, raw.new_ones(1)]  # the total's weight is 1
        if torch.compiler.is_compiling():
            # One row, folded inside the graph. The probe and the sinks need the host, so they
            # run in eager calls only.
            self._fold(torch.cat(parts)[None], phase)
            return
        eager = self._eager
        with eager.lock:
            if eager.filled_with is not False:
                eager.filled_with = None  # this row gets its weights here; refill before a fast call
            if raw.dtype == torch.float64 and history.dtype != raw.dtype:
                self._flush()
                with torch.inference_mode(False):
                    history = self._history = history.double()
            row = self._next_row(phase)
            history = self._history
            if eager.rows_of is not history:  # row views made once, not indexed per call
                eager.rows, eager.rows_of = history.unbind(0), history
            torch.cat(parts, out=eager.rows[row])
            eager.pending = row + 1
            if not phase:
                self._after_training_call(weights, logged, env)

    def record_terms(self, logged: list, weights: Tensor, total: Any, env, row: Tensor) -> None:
        """Record one call from what ``Loss.forward`` has: the term tensors (for the probe),
        the weights, the total and ``row`` = ``[values..., total]`` detached, one (K+1,) tensor.

        In eager calls on the history's device this keeps a reference to the row; the rows
        are written into the history in one operation per 256 calls (or when someone reads).
        Constant weights are written into the rows once.
        """
        history = self._history
        if (
            torch.compiler.is_compiling()
            or row.device != history.device
            or weights.device != history.device
            or (row.dtype == torch.float64 and history.dtype != torch.float64)
        ):
            self.record(row[:-1], weights, total, logged, env)
            return
        phase = 0 if self.training and torch.is_grad_enabled() else 1
        eager = self._eager
        with eager.lock:
            at = eager.pending
            if eager.phase != phase or at == _HISTORY_ROWS:
                at = self._next_row(phase)
            if weights is eager.filled_with:
                eager.deferred.append((at, row, None))
            elif eager.filled_with is None and not weights.requires_grad:
                # the same weights tensor every call (constant weights): fill every row once
                k = len(self.names)
                history[:, k + 1 : 2 * k + 1] = weights
                history[:, 2 * k + 1] = 1.0
                eager.filled_with = weights
                eager.deferred.append((at, row, None))
            else:
                eager.filled_with = False
                eager.deferred.append((at, row, weights.detach()))
            eager.pending = at + 1
            if not phase:  # _after_training_call, written out: this is the per-call path
                calls = eager.calls = eager.calls + 1
                if self._probe_every and (calls - 1) % self._probe_every == 0:
                    self._probe(weights, logged, env)
                if self._sinks:
                    self._sinks_after_call(calls)

    def _next_row(self, phase: int) -> int:
        """The history row of this call; the pending rows are folded first when the history
        is full or holds calls of the other phase."""
        eager = self._eager
        if eager.phase != phase or eager.pending == _HISTORY_ROWS:
            self._flush()
            eager.phase = phase
        return eager.pending

    def _after_training_call(self, weights: Tensor, logged, env) -> None:
        """The probe and the sinks, on their cadence of training calls."""
        eager = self._eager
        eager.calls += 1
        if self._probe_every and logged and (eager.calls - 1) % self._probe_every == 0:
            self._probe(weights, logged, env)
        if self._sinks:
            self._sinks_after_call(eager.calls)

    def _place_deferred(self) -> None:
        """Write the deferred calls' values (and changing weights) into their history rows."""
        eager = self._eager
        deferred, eager.deferred = eager.deferred, []
        if not deferred:
            return
        history = self._history
        k = len(self.names)
        rows = torch.tensor([r for r, _, _ in deferred], device=history.device)
        history[rows, : k + 1] = torch.stack([row for _, row, _ in deferred]).to(history.dtype)
        changing = [(r, w) for r, _, w in deferred if w is not None]
        if changing:
            at = torch.tensor([r for r, _ in changing], device=history.device)
            history[at, k + 1 : 2 * k + 1] = torch.stack([w for _, w in changing]).to(history.dtype)
            history[at, 2 * k + 1] = 1.0

    def _fold(self, rows: Tensor, phase: int) -> None:
        inc = fold_rows(rows, self._leaf, self.ema)
        self.sums[phase, : inc.sums.shape[0]].add_(inc.sums)
        self.ema_acc[phase].mul_(inc.decay).add_(inc.ema_add)
        self.ema_norm[phase].mul_(inc.decay).add_(inc.norm_add)
        low, high = self.low[phase], self.high[phase]
        torch.minimum(low, inc.low, out=low)
        torch.maximum(high, inc.high, out=high)

    def _flush(self) -> None:
        with self._eager.lock:
            self._place_deferred()
            if self._eager.pending:
                self._fold(self._history[: self._eager.pending], self._eager.phase)
                self._eager.pending = 0

    def _move(self, device: torch.device) -> None:
        """Follow the inputs to another device (once, when it changes)."""
        self._flush()
        self._eager.filled_with = None  # the new history has no weights written in it yet
        for name, buf in self._buffers.items():
            if buf is not None:
                self._buffers[name] = buf.to(device, _buffer_dtype(name, buf, device))
        self._moved_weights.clear()

    def _weights_on(self, weights: Tensor, device: torch.device) -> Tensor:
        # a constant-weight buffer left on another device: copy it once, not on every call
        cached = self._moved_weights.get(device)
        if cached is None or cached[0] is not weights:
            cached = (weights, weights.detach().to(device))
            self._moved_weights[device] = cached
        return cached[1]

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        for name, buf in self._buffers.items():  # .half() must not lower their precision
            if buf is not None and buf.dtype != _buffer_dtype(name, buf, buf.device):
                self._buffers[name] = buf.to(_buffer_dtype(name, buf, buf.device))
        return self

    # --- gradient-norm probe --------------------------------------------------------------

    def probe(self, every: int = 1, inputs: Sequence[str] = ("pred",)) -> "Monitor":
        """Every ``every`` calls (the first included) also record the gradient norm of each
        weighted term with respect to ``inputs`` (``pred``, ``target`` or keyword inputs).

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
        if every < 0:
            raise LossDSLError(f"probe(every={every}): every must be >= 0", hint="0 turns the probe off")
        known = {"pred", "target"} | set(self.program.inputs_read if self.program else inputs)
        unknown = [n for n in inputs if n not in known]
        if unknown:
            raise LossDSLError(
                f"probe(inputs=...): no term reads the input {unknown[0]!r}",
                hint=did_you_mean(unknown[0], known) or "inputs: " + ", ".join(sorted(known)),
            )
        self._probe_every = int(every)
        self._probe_inputs = tuple(inputs)
        return self

    def _probe(self, weights: Tensor, outputs: Sequence, env) -> None:
        named = {"pred": env.pred, "target": env.target, **env.inputs}
        wrt = [named.get(n) for n in self._probe_inputs]
        wrt = [t for t in wrt if isinstance(t, Tensor) and t.requires_grad]
        if not wrt or not any(isinstance(v, Tensor) and v.requires_grad for v in outputs):
            return  # no graph to probe (inputs without grad, or under no_grad)
        acc, device = self._leaf.dtype, self._leaf.device
        # autograd.grad fills .grad of a non-leaf input that retains its grad: put it back
        kept = [(t, t.grad) for t in wrt if t.retains_grad]
        norms = torch.stack([_grad_norm(v, wrt, acc, device) for v in outputs])
        for t, grad in kept:
            t.grad = grad
        gn = norms * weights.abs().to(acc)  # the norm of a weighted term: |w| times the term's
        fin = torch.isfinite(gn)
        probed = torch.stack([torch.where(fin, gn, 0), fin.to(acc)])
        self.sums[0, -2:, :-1].add_(probed)  # not the total: one backward pass fewer

    # --- state ----------------------------------------------------------------------------

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        self._flush()  # pending rows belong in the saved statistics
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def get_extra_state(self) -> dict:
        """What decides the monitor's future besides the statistics: the count of training
        calls (the probe's and the sinks' cadence) and every reader's window."""
        return {"calls": self._eager.calls, "marks": {k: v.clone() for k, v in self._marks.items()}}

    def set_extra_state(self, state: Any) -> None:
        self._eager.calls = int(state["calls"])
        self._marks = dict(state["marks"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        with self._eager.lock:
            self._eager.pending = 0
            self._eager.deferred = []
            super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
            self._resumed = True

    def __getstate__(self):
        self._flush()
        state = self.__dict__.copy()
        # files, closures and the owner stay here; a restored copy continues its logs
        state.update(_sinks=[], _moved_weights={}, _program=None, _owner=None, _resumed=True)
        return state

    def extra_repr(self) -> str:
        return f"{len(self.names)} terms, ema={self.ema}, probe_every={self._probe_every}"


class _EagerCounters:
    """Python counters of eager calls, kept off the module: no nn.Module.__setattr__ per call."""

    __slots__ = (
        "pending", "phase", "calls", "rows", "rows_of", "deferred", "filled_with", "lock", "unstarted",
    )

    def __init__(self, pending: int = 0, calls: int = 0, phase: int = 0) -> None:
        self.pending = pending  # rows of the history not folded yet
        self.phase = phase  # of the pending rows: 0 training, 1 validation
        self.calls = calls  # training calls: the cadence of the probe and the sinks
        self.rows, self.rows_of = (), None  # views of the history's rows
        self.deferred: list = []  # (history row, values and total, weights or None) not written yet
        # the constant weights tensor already written into every row (None: none yet;
        # False: weights change per call and are written per row)
        self.filled_with = None
        # Calls from several threads (nn.DataParallel) share the history and the counters.
        # Re-entrant: a call that fills the history folds it under the same lock.
        self.lock = threading.RLock()
        self.unstarted = False  # sinks attached but not yet told whether the run resumed

    def __getstate__(self):
        return (self.pending, self.calls, self.phase)

    def __setstate__(self, state) -> None:
        self.__init__(*state)
