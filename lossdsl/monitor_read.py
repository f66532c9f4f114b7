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

from .monitor_stats import QUANTITIES, ROWS
from .monitor_stats import all_reduce as _all_reduce
from .monitor_stats import ratio as _ratio
from .sinks import format_table
from .suggest import Suggestion, suggest

__all__ = ["StatsReader"]


class StatsReader:
    """The reading side of :class:`~lossdsl.Monitor`. The host provides the statistics
    buffers, ``names``, ``program``, ``_leaf``/``_leaf_list`` and ``_flush()``."""

    def _read(self, parts: dict[str, Tensor], sync: bool) -> dict[str, list]:
        """The tensors as (nested) lists, in one device-to-host copy; all-reduced over the
        process group first when ``sync``."""
        if sync:
            parts = _all_reduce(parts, self._leaf.dtype)
        flat = torch.cat([t.reshape(-1).to(self._leaf.dtype) for t in parts.values()]).cpu()
        sizes = [t.numel() for t in parts.values()]
        return {n: p.reshape(t.shape).tolist() for (n, t), p in zip(parts.items(), flat.split(sizes))}

    def _window(self, prefix: str, sync: bool) -> tuple[dict[str, float], int]:
        self._flush()
        snap = self._read({"window": self.window, "seen": self.seen}, sync)
        self.totals.add_(self.window)
        self.window.zero_()
        win, seen = snap["window"], int(snap["seen"])
        if win[ROWS.index("calls")][-1] == 0:
            return {}, seen
        means = [[_ratio(s, n) for s, n in zip(win[q], win[4])] for q in range(len(QUANTITIES))]
        out = {f"{prefix}total": means[0][-1]}
        for i, name in enumerate(self.names):
            key = prefix + name
            out[key] = means[0][i]
            for q in (1, 2, 3):
                out[f"{key}/{QUANTITIES[q]}"] = means[q][i]
            if win[7][i]:
                out[f"{key}/grad_norm"] = win[6][i] / win[7][i]
        return out, seen

    def as_dict(self, prefix: str = "loss/", sync: bool = False) -> dict[str, float]:
        """Means since the last ``as_dict()`` (or ``reset()``), as plain floats, for any
        logger (``self.log_dict(crit.monitor.as_dict())`` in Lightning). Keys: ``total``,
        ``<term>`` (raw), ``<term>/weight``, ``<term>/weighted``, ``<term>/share`` and
        ``<term>/grad_norm`` (when probed), each after ``prefix``. A term that was never
        finite in the window reads NaN. ``sync=True`` adds up the windows of every rank of
        ``torch.distributed``. Empty when nothing was recorded since the last read.

        >>> import torch, lossdsl
        >>> crit = lossdsl.compile("2*mse")
        >>> _ = crit(torch.zeros(2), torch.ones(2))
        >>> crit.monitor.as_dict(prefix="")
        {'total': 2.0, 'mse': 1.0, 'mse/weight': 2.0, 'mse/weighted': 2.0, 'mse/share': 1.0}
        """
        return self._window(prefix, sync)[0]

    def stats(self, sync: bool = False) -> dict[str, dict[str, float]]:
        """Statistics since ``reset()`` for every name and ``"total"``: ``mean`` ``ema``
        ``min`` ``max`` (of the raw value), ``nonfinite`` (calls where it was not finite),
        ``count`` (finite calls), means of ``weight`` ``weighted`` ``share``, and
        ``grad_norm`` (NaN when never probed). With ``sync=True`` over all ranks (counts and
        sums add up, min/max reduce, the EMAs are averaged by their weight).

        >>> import torch, lossdsl
        >>> crit = lossdsl.compile("mse")
        >>> for value in (1.0, 3.0):
        ...     _ = crit(torch.zeros(1), torch.full((1,), value))
        >>> s = crit.monitor.stats()["mse"]
        >>> s["mean"], s["min"], s["max"], s["nonfinite"]
        (5.0, 1.0, 9.0, 0.0)
        """
        self._flush()
        parts = {"sums": self.totals + self.window, "ema_acc": self.ema_acc[0], "ema_norm": self.ema_norm,
                 "low": self.low, "high": self.high}
        snap = self._read(parts, sync)
        sums, count = snap["sums"], snap["sums"][4]
        table = {}
        for i, name in enumerate(self.names + ["total"]):
            found = count[i] > 0
            table[name] = {
                "mean": _ratio(sums[0][i], count[i]), "ema": _ratio(snap["ema_acc"][i], snap["ema_norm"][i]),
                "min": snap["low"][0][i] if found else math.nan,
                "max": snap["high"][0][i] if found else math.nan,
                "nonfinite": sums[5][i] - count[i], "count": count[i],
                "weight": _ratio(sums[1][i], count[i]), "weighted": _ratio(sums[2][i], count[i]),
                "share": _ratio(sums[3][i], count[i]), "grad_norm": _ratio(sums[6][i], sums[7][i]),
            }
        table["total"]["share"] = sum(table[n]["share"] for n, leaf in zip(self.names, self._leaf_list) if leaf)
        return table

    def summary(self, sync: bool = False) -> str:
        """A readable table of :meth:`stats`: weight, raw mean/EMA/min/max, weighted mean,
        share %, share of the gradient norm % (when probed) and the non-finite count."""
        return format_table(self.stats(sync), self._leaf_list)

    def reset(self) -> None:
        """Clear every statistic (the sinks' step counter keeps counting)."""
        self._eager.pending = 0
        self._eager.deferred = []
        for buf in (self.window, self.totals, self.ema_acc, self.ema_norm):
            buf.zero_()
        self.low.fill_(math.inf)
        self.high.fill_(-math.inf)

    def suggest_weights(self, target: dict[str, float] | None = None) -> Suggestion:
        """Weights that give every term an equal share (or the ``target`` shares) of the
        gradient norm where probed, else of the weighted magnitude, and the source rewritten
        with them (see :func:`lossdsl.suggest.suggest`).

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
