"""Reading a :class:`~lossdsl.Monitor`: means since the last read, statistics since ``reset()``,
a printed summary and suggested weights. Every reader copies what it needs to the host once.

>>> import torch, lossdsl
>>> crit = lossdsl.compile("mse + 0.5*mae")
>>> _ = crit(torch.zeros(2), torch.ones(2))
>>> sorted(crit.monitor.stats())
['mae', 'mse', 'total']
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import LossDSLError
from .monitor_stats import QUANTITIES, ROWS
from .monitor_stats import all_reduce as _all_reduce
from .monitor_stats import ratio as _ratio
from .sinks import format_table
from .suggest import Suggestion, suggest

__all__ = ["StatsReader"]


_PHASE = {"train": 0, "eval": 1}


def phase_index(phase: str) -> int:
    """0 for ``"train"`` (training calls), 1 for ``"eval"`` (validation calls)."""
    if phase not in _PHASE:
        raise LossDSLError(f"unknown phase {phase!r}", hint="phase='train' or phase='eval'")
    return _PHASE[phase]


class StatsReader:
    """The reading side of :class:`~lossdsl.Monitor`. The host provides the statistics
    buffers, ``names``, ``program``, ``_leaf``/``_leaf_list``, ``_marks``, ``_eager`` (its
    lock), ``_stored_step()`` and ``_flush()``."""

    def _read(self, parts: dict[str, Tensor], sync: bool) -> dict[str, list]:
        """The tensors as (nested) lists, in one device-to-host copy; all-reduced over the
        process group first when ``sync``. On the ``meta`` device, which has no data, every
        number reads NaN."""
        if sync:
            parts = _all_reduce(parts, self._leaf.dtype)
        sizes = [t.numel() for t in parts.values()]
        if self._leaf.is_meta:
            flat = torch.full((sum(sizes),), math.nan, dtype=torch.float64)
        else:
            flat = torch.cat([t.reshape(-1).to(self._leaf.dtype) for t in parts.values()]).cpu()
        return {n: p.reshape(t.shape).tolist() for (n, t), p in zip(parts.items(), flat.split(sizes))}

    def _windows(self, readers: list[tuple[str, int]], sync: bool) -> tuple[list, int]:
        """For each ``(reader, phase)``: the sums of that phase since the reader's previous
        read, as nested lists; and the stored step. Moves each reader's mark to now."""
        with self._eager.lock:
            self._flush()
            sums = self.sums
            diffs = []
            for key, phase in readers:
                mark = self._marks.get(key)
                if mark is None:
                    diffs.append(sums[phase])
                else:
                    if mark.device != sums.device or mark.dtype != sums.dtype:
                        mark = mark.to(sums.device, sums.dtype)
                    diffs.append(sums[phase] - mark)
            step = self._stored_step()
            parts = {"windows": torch.stack(diffs)}
            if isinstance(step, Tensor):
                parts["step"] = step.detach().reshape(1).to(sums.device)
            snap = self._read(parts, sync)
            for key, phase in readers:
                self._marks[key] = sums[phase].clone()
        if isinstance(step, Tensor):
            step = snap["step"][0]
            step = int(step) if step == step else 0
        return snap["windows"], step

    def _scalars(self, win: list, prefix: str) -> dict[str, float]:
        """The means of one window (the sums of every ROW) as the keys of :meth:`as_dict`."""
        if not win[ROWS.index("calls")][-1] > 0:  # nothing recorded (or NaN: no data on meta)
            return {}
        count = win[ROWS.index("count")]
        means = [[_ratio(s, n) for s, n in zip(win[q], count)] for q in range(len(QUANTITIES))]
        grad, probes = win[ROWS.index("grad_norm")], win[ROWS.index("probes")]
        out = {f"{prefix}total": means[0][-1]}
        for i, name in enumerate(self.names):
            key = prefix + name
            out[key] = means[0][i]
            for q in (1, 2, 3):
                out[f"{key}/{QUANTITIES[q]}"] = means[q][i]
            if probes[i]:
                out[f"{key}/grad_norm"] = grad[i] / probes[i]
        return out

    def as_dict(self, prefix: str = "loss/", sync: bool = False, phase: str = "train") -> dict[str, float]:
        """Means since this reader's previous read (or ``reset()``), as plain floats, for any
        logger (``self.log_dict(crit.monitor.as_dict())`` in Lightning). Keys: ``total``,
        ``<term>`` (raw), ``<term>/weight``, ``<term>/weighted``, ``<term>/share`` and
        ``<term>/grad_norm`` (when probed), each after ``prefix``. A term that was never
        finite in the window reads NaN. ``phase="eval"``: the validation calls (in
        ``crit.eval()`` mode or with gradients disabled), a window of its own. The attached
        sinks have windows of their own too: reading here never empties theirs.
        ``sync=True`` adds up the windows of every rank of ``torch.distributed``. Empty
        when nothing was recorded since the last read.

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
        p = phase_index(phase)
        (win,), _ = self._windows([(phase, p)], sync)
        return self._scalars(win, prefix)

    def stats(self, sync: bool = False, phase: str = "train") -> dict[str, dict[str, float]]:
        """Statistics since ``reset()`` for every name and ``"total"``: ``mean`` ``ema``
        ``min`` ``max`` (of the raw value), ``nonfinite`` (calls where it was not finite),
        ``count`` (finite calls), means of ``weight`` ``weighted`` ``share``, and
        ``grad_norm`` (NaN when never probed). Of the training calls, or of the validation
        calls with ``phase="eval"``. With ``sync=True`` over all ranks (counts and sums add
        up, min/max reduce, the EMAs are averaged by their weight).

        >>> import torch, lossdsl
        >>> crit = lossdsl.compile("mse")
        >>> for value in (1.0, 3.0):
        ...     _ = crit(torch.zeros(1), torch.full((1,), value))
        >>> s = crit.monitor.stats()["mse"]
        >>> s["mean"], s["min"], s["max"], s["nonfinite"]
        (5.0, 1.0, 9.0, 0.0)
        """
        p = phase_index(phase)
        with self._eager.lock:
            self._flush()
            parts = {"sums": self.sums[p], "ema_acc": self.ema_acc[p, 0], "ema_norm": self.ema_norm[p],
                     "low": self.low[p, 0], "high": self.high[p, 0]}
            snap = self._read(parts, sync)
        sums, count = snap["sums"], snap["sums"][ROWS.index("count")]
        calls, grad, probes = (snap["sums"][ROWS.index(r)] for r in ("calls", "grad_norm", "probes"))
        table = {}
        for i, name in enumerate(self.names + ["total"]):
            found = count[i] > 0
            table[name] = {
                "mean": _ratio(sums[0][i], count[i]), "ema": _ratio(snap["ema_acc"][i], snap["ema_norm"][i]),
                "min": snap["low"][i] if found else math.nan,
                "max": snap["high"][i] if found else math.nan,
                "nonfinite": calls[i] - count[i], "count": count[i],
                "weight": _ratio(sums[1][i], count[i]), "weighted": _ratio(sums[2][i], count[i]),
                "share": _ratio(sums[3][i], count[i]), "grad_norm": _ratio(grad[i], probes[i]),
            }
        table["total"]["share"] = sum(table[n]["share"] for n, leaf in zip(self.names, self._leaf_list) if leaf)
        return table

    def summary(self, sync: bool = False, phase: str = "train") -> str:
        """A readable table of :meth:`stats`: weight, raw mean/EMA/min/max, weighted mean,
        share %, share of the gradient norm % (when probed) and the non-finite count."""
        return format_table(self.stats(sync, phase), self._leaf_list)

    def reset(self) -> None:
        """Clear every statistic of both phases, and start every reader's window anew (the
        count of training calls, the probe's and the sinks' cadence, keeps counting)."""
        with self._eager.lock:
            self._eager.pending = 0
            self._eager.deferred = []
            self._marks.clear()
            for buf in (self.sums, self.ema_acc, self.ema_norm):
                buf.zero_()
            self.low.fill_(math.inf)
            self.high.fill_(-math.inf)

    def suggest_weights(self, target: dict[str, float] | None = None) -> Suggestion:
        """Weights that give every term an equal share (or the ``target`` shares of the whole;
        terms it leaves out share the rest equally) of the gradient norm where probed, else
        of the weighted magnitude, over the training calls, and the source rewritten with
        them (see :func:`lossdsl.suggest.suggest`).

        >>> import torch, lossdsl
        >>> crit = lossdsl.compile("mse + mae  # two terms")
        >>> _ = crit(torch.zeros(4), torch.full((4,), 10.0))
        >>> crit.monitor.suggest_weights().source
        '0.55*mse + 5.5*mae  # two terms'
        """
        table = self.stats()
        probed = any(table[n]["grad_norm"] > 0 for n in self.names)
        magnitude = {n: abs(table[n]["grad_norm" if probed else "weighted"]) for n in self.names}
        weights = {n: table[n]["weight"] for n in self.names}
        return suggest(self.program, weights, magnitude, target)
