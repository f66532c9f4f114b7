"""Reading the monitor's statistics: every reader's window, and the tables that ``as_dict()``,
``stats()`` and ``summary()`` build from the statistics once they are on the host.

A reader (``as_dict`` of each phase, each attached sink) reports the means since its own
previous read: :class:`Windows` keeps, per reader, the sums of its phase at that read.

>>> import torch
>>> windows = Windows()
>>> sums = torch.tensor([[1.0, 2.0]])
>>> windows.take(sums[None], [("train", 0)]).tolist()   # first read: everything so far
[[[1.0, 2.0]]]
>>> windows.take((sums + 3)[None], [("train", 0)]).tolist()   # then only what came since
[[[3.0, 3.0]]]
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import LossDSLError
from .stats import QUANTITIES, ROWS, all_reduce, ratio

__all__ = [
    "PHASES", "Windows", "phase_index", "check_prefix", "step_part", "to_host", "window_scalars", "stats_table",
    "format_table", "check_saved_windows",
]

PHASES = ("train", "eval")  # training calls, validation calls (eval mode or gradients disabled)


def phase_index(phase: str) -> int:
    """0 for ``"train"`` (training calls), 1 for ``"eval"`` (validation calls)."""
    if phase not in PHASES:
        raise LossDSLError(f"unknown phase {phase!r}", hint="phase='train' or phase='eval'")
    return PHASES.index(phase)


class Windows:
    """Each reader's mark: the sums of its phase at its previous read (no mark: zeros).
    The marks are in the monitor's state, so a resumed run keeps every reader's window."""

    def __init__(self) -> None:
        self.marks: dict[str, Tensor] = {}
        self._saved: dict[str, Tensor] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.marks

    def mark(self, key: str, sums: Tensor) -> None:
        """Start ``key``'s window at ``sums`` (one phase's sums)."""
        self.marks[key] = sums.clone()

    def take(self, sums: Tensor, readers: Iterable[tuple[str, int]]) -> Tensor:
        """For each ``(reader, phase)``: the sums of that phase since the reader's mark,
        stacked; every reader's mark moves to now."""
        readers = list(readers)
        diffs = []
        for key, phase in readers:
            mark = self.marks.get(key)
            if mark is None:
                diffs.append(sums[phase])
            else:
                diffs.append(sums[phase] - mark.to(sums.device, sums.dtype))
        for key, phase in readers:
            self.mark(key, sums[phase])
        return torch.stack(diffs)

    @contextlib.contextmanager
    def undone_on_error(self):
        """Reads inside that raise (a synced read whose all-reduce times out) have read
        nothing: every mark goes back to where it was."""
        marks = dict(self.marks)
        try:
            yield
        except BaseException:
            self.marks = marks
            raise

    def save(self) -> None:
        """Remember every mark as it is now, for :meth:`give_back` (the marks are replaced,
        never changed in place, so a shallow copy keeps them)."""
        self._saved = dict(self.marks)

    def give_back(self, key: str) -> None:
        """Put reader ``key``'s marks (its own and its ``key~...`` ones) back as they were at
        :meth:`save`, undoing the reads since."""
        saved = self._saved
        for k in {*saved, *self.marks}:
            if k == key or k.startswith(key + "~"):
                if k in saved:
                    self.marks[k] = saved[k]
                else:
                    self.marks.pop(k, None)

    def forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.marks.pop(key, None)

    def clear(self) -> None:
        self.marks.clear()

    def state(self) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in self.marks.items()}

    def load(self, marks: dict[str, Tensor]) -> None:
        self.marks = dict(marks)


def check_saved_windows(state: Any) -> None:
    """A monitor's extra state as :meth:`Monitor.get_extra_state` writes it (checked before a
    load copies anything): a whole count of training calls, and each reader's mark a tensor.

    >>> check_saved_windows({"calls": 3, "marks": {}})
    """
    calls = state.get("calls") if isinstance(state, Mapping) else None
    marks = state.get("marks") if isinstance(state, Mapping) else None
    if (isinstance(calls, int) and not isinstance(calls, bool) and calls >= 0 and isinstance(marks, Mapping)
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in marks.items())):
        return
    raise LossDSLError(
        "the state's monitor entry is not one a monitor saved (nothing was loaded)",
        hint="load the state saved from this loss (crit.state_dict()), or drop the entry and load with strict=False",
    )


def check_prefix(prefix: Any) -> None:
    """A reader's key prefix must be text (checked before the read takes the window)."""
    if not isinstance(prefix, str):
        raise LossDSLError(
            f"prefix={prefix!r}: the prefix of the keys must be a str", hint="prefix='loss/', or '' for none"
        )


def step_part(step: Tensor | None, like: Tensor) -> Tensor:
    """The stored step as one element beside the statistics ``like``, for :func:`to_host`.
    A rank that has recorded no call gives -1: every rank then reduces the same parts (one
    missing would leave the collectives of the ranks mismatched), and the max is the others'
    step.

    >>> step_part(None, torch.zeros(2, dtype=torch.float64)).tolist()
    [-1.0]
    """
    if step is None:
        return torch.full((1,), -1, dtype=like.dtype, device=like.device)
    return step.detach().reshape(1).to(like.device)


def to_host(parts: dict[str, Tensor], sync: bool, dtype: torch.dtype) -> dict[str, list]:
    """The tensors as (nested) lists, in one device-to-host copy; all-reduced over the
    process group first when ``sync``. On the ``meta`` device, which has no data, every
    number reads NaN."""
    if sync:
        parts = all_reduce(parts, dtype)
    sizes = [t.numel() for t in parts.values()]
    if any(t.is_meta for t in parts.values()):
        flat = torch.full((sum(sizes),), math.nan, dtype=torch.float64)
    else:
        flat = torch.cat([t.reshape(-1).to(dtype) for t in parts.values()]).cpu()
    return {n: p.reshape(t.shape).tolist() for (n, t), p in zip(parts.items(), flat.split(sizes))}


def window_scalars(win: list, names: Sequence[str], prefix: str) -> dict[str, float]:
    """The means of one window (the sums of every ROW, as lists) as the keys of ``as_dict``;
    empty when the window holds no call.

    >>> win = [[2.0, 4.0], [1.0, 1.0], [2.0, 4.0], [2.0, 0.0], [2.0, 2.0], [2.0, 2.0], [0.0, 0.0], [0.0, 0.0]]
    >>> window_scalars(win, ["mse"], "")
    {'total': 2.0, 'mse': 1.0, 'mse/weight': 0.5, 'mse/weighted': 1.0, 'mse/share': 1.0}
    """
    if not win[ROWS.index("calls")][-1] > 0:  # nothing recorded (or NaN: no data on meta)
        return {}
    count = win[ROWS.index("count")]
    means = [[ratio(s, n) for s, n in zip(win[q], count)] for q in range(len(QUANTITIES))]
    grad, probes = win[ROWS.index("grad_norm")], win[ROWS.index("probes")]
    out = {f"{prefix}total": means[0][-1]}
    for i, name in enumerate(names):
        key = prefix + name
        out[key] = means[0][i]
        for q in (1, 2, 3):
            out[f"{key}/{QUANTITIES[q]}"] = means[q][i]
        if probes[i]:
            out[f"{key}/grad_norm"] = grad[i] / probes[i]
    return out


def stats_table(snap: dict[str, Any], names: Sequence[str], is_term: Sequence[bool]) -> dict[str, dict[str, float]]:
    """``stats()`` from one phase's statistics on the host: ``sums`` (ROWS, C), the EMA's
    ``ema_acc`` and ``ema_norm`` (C,) and the raw ``low``/``high`` (C,)."""
    sums, count = snap["sums"], snap["sums"][ROWS.index("count")]
    calls, grad, probes = (sums[ROWS.index(r)] for r in ("calls", "grad_norm", "probes"))
    table = {}
    for i, name in enumerate(list(names) + ["total"]):
        found = count[i] > 0
        table[name] = {
            "mean": ratio(sums[0][i], count[i]),
            "ema": ratio(snap["ema_acc"][i], snap["ema_norm"][i]),
            "min": snap["low"][i] if found else math.nan,
            "max": snap["high"][i] if found else math.nan,
            "nonfinite": calls[i] - count[i],
            "count": count[i],
            "weight": ratio(sums[1][i], count[i]),
            "weighted": ratio(sums[2][i], count[i]),
            "share": ratio(sums[3][i], count[i]),
            "grad_norm": ratio(grad[i], probes[i]),
        }
    table["total"]["share"] = sum(table[n]["share"] for n, term in zip(names, is_term) if term)
    return table


def format_table(table: dict[str, dict[str, float]], is_term: Sequence[bool]) -> str:
    """Render ``stats()`` as a text table; shares of the gradient norm are over the terms.

    >>> row = dict(mean=2.0, ema=2.0, min=1.0, max=3.0, nonfinite=0.0, count=2.0,
    ...            weight=0.5, weighted=1.0, share=1.0, grad_norm=math.nan)
    >>> print(format_table({"mse": row, "total": dict(row, weight=1.0)}, [True]))
    term   weight  raw mean  raw ema  raw min  raw max  weighted  share %  non-finite
    ---------------------------------------------------------------------------------
    mse       0.5         2        2        1        3         1    100.0           0
    total                 2        2        1        3         1    100.0           0
    """
    names = list(table)
    grads = [table[n]["grad_norm"] for n in names]
    probed = any(g == g for g in grads)
    gsum = sum(g for g, term in zip(grads, is_term) if term and g == g)
    head = ["term", "weight", "raw mean", "raw ema", "raw min", "raw max", "weighted", "share %"]
    head += ["grad %"] if probed else []
    rows = [head + ["non-finite"]]
    for name, g in zip(names, grads):
        s = table[name]
        row = [name] + [_num(s[k]) for k in ("weight", "mean", "ema", "min", "max", "weighted")]
        row.append(_num(100 * s["share"], ".1f"))
        if probed:
            row.append(_num(100 * g / gsum, ".1f") if gsum > 0 and name != "total" else "")
        rows.append(row + [_num(s["nonfinite"], ".0f")])  # NaN where nothing was read (meta)
    rows[-1][1] = ""  # the total has no weight
    width = [max(len(r[i]) for r in rows) for i in range(len(head) + 1)]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, width))) for r in rows
    ]
    return "\n".join(lines[:1] + ["-" * len(lines[0])] + lines[1:])


def _num(x: float, fmt: str = ".4g") -> str:
    return "nan" if x != x else format(x, fmt)
