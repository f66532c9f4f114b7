"""Statistics of the terms' gradients on the shared parameters (DESIGN.md §6.1, §7).

Whenever a gradient balancer takes the terms' gradients (an update call of ``gradnorm`` or
``lra``, each ``crit.backward`` of an aggregator), it reports each term's gradient norm and
the Gram matrix of the gradients. :class:`GradientStats` (``crit.monitor.gradients``) keeps
their sums and counts as buffers: the norm of each term (``loss/<term>/shared_grad_norm``)
and the cosine of every pair of terms of one balancer (``loss/<a>~<b>/cos``, the conflict
signal: negative when the terms pull the shared parameters apart). ``grad_norm`` keeps its
own meaning, the probe with respect to ``pred``. Every reader has its own window, as for the
other statistics, and recording reads nothing on the host.

>>> import torch
>>> stats = GradientStats()
>>> stats.track([["seg", "depth"]])
>>> stats.record(0, torch.tensor([3.0, 4.0]), torch.tensor([[9.0, -6.0], [-6.0, 16.0]]))
>>> stats.scalars("train", "loss/")
{'loss/seg/shared_grad_norm': 3.0, 'loss/depth/shared_grad_norm': 4.0, 'loss/seg~depth/cos': -0.5}
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .readers import Windows
from .stats import stat_dtype

__all__ = ["GradientStats", "reporter"]

_KEY = "~gradients"  # the suffix of a reader's key for its window of these statistics


class GradientStats(nn.Module):
    """Sums (row 0) and counts (row 1) of every tracked column: the terms' norms, then the
    pairs' cosines, one group of columns per gradient balancer."""

    def __init__(self, windows: Windows | None = None) -> None:
        super().__init__()
        self.columns: list[str] = []  # keys after the prefix
        self.groups: list[tuple[int, int]] = []  # per balancer: (first norm column, its k)
        # the readers' marks live with the monitor's own (saved in its state), under keys of their own
        self._windows = Windows() if windows is None else windows

    def track(self, groups: Sequence[Sequence[str]]) -> None:
        """One group of term names per gradient balancer, in the order of the balancers."""
        columns: list[str] = []
        spans = []
        for names in groups:
            spans.append((len(columns), len(names)))
            columns += [f"{n}/shared_grad_norm" for n in names]
            columns += [f"{a}~{b}/cos" for i, a in enumerate(names) for b in names[i + 1:]]
        self.columns, self.groups = columns, spans
        # a buffer only where something is tracked: other programs' state has no entry for it
        self.register_buffer("sums", torch.zeros(2, len(columns), dtype=torch.float64))

    def record(self, group: int, norms: Tensor, gram: Tensor) -> None:
        """Add one reading of balancer ``group``: the norms (K,) and the Gram matrix (K, K)
        of its terms' gradients. A cosine with a zero gradient is not counted."""
        start, k = self.groups[group]
        if norms.device != self.sums.device:
            with torch.inference_mode(False):
                self.sums = self.sums.to(norms.device, stat_dtype(norms.device))
        dtype = self.sums.dtype
        norms, gram = norms.detach().to(dtype), gram.detach().to(dtype)
        i, j = torch.triu_indices(k, k, 1, device=norms.device)
        cos = gram[i, j] / (norms[i] * norms[j])
        values = torch.cat([norms, cos])
        finite = torch.isfinite(values)
        width = values.numel()
        self.sums[0, start: start + width] += torch.where(finite, values, 0)
        self.sums[1, start: start + width] += finite.to(dtype)

    def mark(self, key: str) -> None:
        """Start reader ``key``'s window now (a sink attached later)."""
        if self.columns:
            self._windows.mark(key + _KEY, self.sums)

    def scalars(self, key: str, prefix: str) -> dict[str, float]:
        """The means of reader ``key``'s window (the training calls only), as plain floats;
        columns with nothing recorded in the window are left out."""
        if not self.columns or key == "eval":
            return {}
        (window,) = self._windows.take(self.sums[None], [(key + _KEY, 0)]).tolist()
        return {prefix + c: s / n for c, s, n in zip(self.columns, *window) if n > 0}

    def table(self) -> str:
        """A text table of the means since ``reset()`` (empty when nothing is tracked)."""
        if not self.columns:
            return ""
        sums, counts = self.sums.tolist()
        rows = [(c.rsplit("/", 1)[0], c.rsplit("/", 1)[1], s / n if n else math.nan) for c, s, n in zip(self.columns, sums, counts)]
        head = "gradients on shared"
        width = max(len(head), *(len(r[0]) for r in rows))
        lines = [f"{head:<{width}}  {'statistic':<16}  {'mean':>10}"]
        lines.append("-" * len(lines[0]))
        lines += [f"{name:<{width}}  {what:<16}  {value:>10.4g}" for name, what, value in rows]
        return "\n\n" + "\n".join(lines)

    def reset(self) -> None:
        """Clear the sums (the monitor's ``reset()`` clears every reader's window)."""
        if self.columns:
            self.sums.zero_()


def _record(monitor: Any, group: int, norms: Tensor, gram: Tensor) -> None:
    if monitor.enabled:
        monitor.gradients.record(group, norms, gram)


def reporter(monitor: Any, group: int) -> Any:
    """What a gradient balancer calls with its norms and Gram matrix: records them in
    ``monitor`` (unless it is disabled); a plain function, so a loss still pickles."""
    return functools.partial(_record, monitor, group)
