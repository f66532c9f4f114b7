"""Where the per-term statistics go: a JSONL file (the default) or TensorBoard.

A sink is anything with ``write(scalars: dict[str, float], step: int)``; ``flush()``,
``close()`` and ``start_log(resumed: bool)`` (told, before the first row, whether the run
continues a saved state) are optional. Attach one with ``crit.monitor.attach(sink, every=N)``.
Under ``torch.distributed`` the writers here write on rank 0 only, and open nothing on the
others.

>>> import json, os, tempfile, torch, lossdsl
>>> path = os.path.join(tempfile.mkdtemp(), "run.jsonl")
>>> crit = lossdsl.compile("0.5*mse")
>>> with lossdsl.JsonlWriter(path) as sink:
...     _ = crit.monitor.attach(sink, every=2)
...     for step in range(1, 5):
...         _ = crit(torch.zeros(2), torch.ones(2), step=step)
>>> [json.loads(line)["step"] for line in open(path)]
[2, 4]
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .errors import LossDSLError

__all__ = [
    "JsonlWriter", "TensorBoardWriter", "FunctionSink", "SinkHost", "as_sink", "read_jsonl", "format_table",
]


def _is_rank_zero() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch built without distributed
        return True
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class _ClosedOnExit:
    """``with writer: ...`` closes the writer at the end."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class JsonlWriter(_ClosedOnExit):
    """One JSON object per line: ``{"step": ..., "loss/total": ..., "loss/mse": ..., ...}``.

    A log is never replaced silently: a file that already holds something is appended to
    with ``append=True`` or when the loss was resumed with ``load_state_dict`` (the monitor
    tells the writer), and refused with a :class:`~lossdsl.LossDSLError` otherwise. The
    file (and its folder) is made at the loss's first training call after ``attach`` (or at
    the first write), so the refusal comes before anything is trained. NaN and infinities
    are written as ``null`` so the file stays valid JSON. Each write is flushed, so a
    crashed run keeps its log.
    """

    def __init__(self, path: str | os.PathLike, *, append: bool = False, rank_zero_only: bool = True) -> None:
        self.path = Path(path)
        self.append = append
        self.rank_zero_only = rank_zero_only
        self._file = None

    def start_log(self, resumed: bool = False) -> None:
        """Open the file: append when ``append`` or ``resumed``, else refuse a file that is
        not empty (it holds another run's log)."""
        if self._file is not None or (self.rank_zero_only and not _is_rank_zero()):
            return
        keep = self.append or resumed
        if not keep and self.path.is_file() and self.path.stat().st_size > 0:
            raise LossDSLError(
                f"the log {str(self.path)!r} already holds records; writing would replace them",
                hint="pass JsonlWriter(path, append=True) (monitor.append: true in a config) to add "
                "to it, or write to a new path; a loss resumed with load_state_dict appends by itself",
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a" if keep else "w", encoding="utf-8")

    def write(self, scalars: Mapping[str, float], step: int) -> None:
        if self.rank_zero_only and not _is_rank_zero():
            return
        if self._file is None:
            self.start_log()
        record = {"step": int(step)}
        record.update({k: (float(v) if math.isfinite(v) else None) for k, v in scalars.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self.append = True  # writing again after close adds to what this writer wrote

    def __repr__(self) -> str:
        return f"JsonlWriter({str(self.path)!r})"


class TensorBoardWriter(_ClosedOnExit):
    """Scalars for TensorBoard, through ``torch.utils.tensorboard.SummaryWriter``. Needs the
    ``tensorboard`` package (``pip install 'lossdsl[tensorboard]'``), checked here, when the
    writer is made. Non-finite values are skipped. The event file is created at the first
    write; TensorBoard starts a new event file per writer, so nothing is ever replaced."""

    def __init__(
        self, log_dir: str | os.PathLike, *, rank_zero_only: bool = True, **writer_kwargs: Any
    ) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise LossDSLError(
                f"TensorBoardWriter needs the tensorboard package ({err})",
                hint="pip install 'lossdsl[tensorboard]'",
            ) from None
        self.log_dir = str(log_dir)
        self.rank_zero_only = rank_zero_only
        self._kwargs = writer_kwargs
        self._make = SummaryWriter
        self._writer = None

    def write(self, scalars: Mapping[str, float], step: int) -> None:
        if self.rank_zero_only and not _is_rank_zero():
            return
        if self._writer is None:
            self._writer = self._make(log_dir=self.log_dir, **self._kwargs)
        for key, value in scalars.items():
            if math.isfinite(value):
                self._writer.add_scalar(key, value, global_step=int(step))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __repr__(self) -> str:
        return f"TensorBoardWriter({self.log_dir!r})"


class FunctionSink:
    """Wraps ``f(scalars, step)`` as a sink."""

    def __init__(self, fn: Callable[[dict, int], Any]) -> None:
        self.fn = fn

    def write(self, scalars: Mapping[str, float], step: int) -> None:
        self.fn(dict(scalars), step)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Sink:
    """Gives an object with only ``write`` the optional methods."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def write(self, scalars: Mapping[str, float], step: int) -> None:
        self.inner.write(scalars, step)

    def flush(self) -> None:
        getattr(self.inner, "flush", lambda: None)()

    def close(self) -> None:
        getattr(self.inner, "close", lambda: None)()

    def start_log(self, resumed: bool = False) -> None:
        getattr(self.inner, "start_log", lambda resumed: None)(resumed=resumed)


class SinkHost:
    """The sink side of :class:`~lossdsl.Monitor`: attached sinks and writing to them. The
    host provides ``_windows(readers, sync) -> (sums, step)``, ``_scalars(sums, prefix)``,
    ``_flush()``, the ``sums`` buffer, the ``_marks`` dict, ``_eager`` and ``_resumed``."""

    _sinks: list

    def attach(self, sink: Any, every: int = 10) -> Any:
        """Write to ``sink`` at every ``every``-th training call (eager calls; under
        ``torch.compile`` call :meth:`write` from the training loop instead).

        ``sink``: a :class:`~lossdsl.JsonlWriter`, a :class:`~lossdsl.TensorBoardWriter`, a
        path (a JSONL file), any object with ``write(scalars, step)``, or a function
        ``f(scalars, step)``. Each row holds the means of the training calls since the
        sink's own previous row (the first: since it was attached), labelled with the step
        the loss stores (``crit(..., step=s)`` or ``crit.set_step(s)``), so with gradient
        accumulation several calls share a step. Sinks, ``as_dict()`` and one another
        never empty each other's windows. The count of training calls is in the state, so
        a resumed run writes at the calls an uninterrupted one would.

        >>> import torch, lossdsl
        >>> crit = lossdsl.compile("mse")
        >>> seen = []
        >>> _ = crit.monitor.attach(lambda scalars, step: seen.append(step), every=2)
        >>> for step in range(100, 104):
        ...     _ = crit(torch.zeros(3), torch.ones(3), step=step)
        >>> seen
        [101, 103]
        """
        if every < 1:
            raise LossDSLError(f"attach(every={every}): every must be >= 1", hint="N >= 1 calls")
        sink = as_sink(sink)
        with self._eager.lock:
            key = f"sink/{len(self._sinks)}"
            if key not in self._marks:  # a mark loaded from a resumed state is kept
                self._flush()
                self._marks[key] = self.sums[0].clone()
            self._sinks.append((sink, int(every)))
            self._eager.unstarted = True
        return sink

    def write(self, step: int | None = None) -> None:
        """Write to every attached sink now, each the means since its previous row; ``step``
        labels the rows (default: the step the loss stores)."""
        with self._eager.lock:
            self._start_sinks()
            self._write(list(enumerate(self._sinks)), step)

    def _sinks_after_call(self, calls: int) -> None:
        """After a training call: start new sinks, write the due ones (lock held)."""
        if self._eager.unstarted:
            self._start_sinks()
        due = [(i, entry) for i, entry in enumerate(self._sinks) if calls % entry[1] == 0]
        if due:
            self._write(due)

    def _start_sinks(self) -> None:
        """Tell each new sink whether this run continues a saved one (a JSONL log then
        appends); a sink may refuse here, before anything is written."""
        for sink, _ in self._sinks:
            start = getattr(sink, "start_log", None)
            if start is not None:
                start(resumed=self._resumed)
        self._eager.unstarted = False

    def _write(self, due: list, step: int | None = None) -> None:
        if not due:
            return
        wins, stored = self._windows([(f"sink/{i}", 0) for i, _ in due], sync=False)
        label = stored if step is None else int(step)
        for (_, (sink, _)), win in zip(due, wins):
            scalars = self._scalars(win, "loss/")
            if scalars:
                sink.write(scalars, label)

    def flush(self) -> None:
        """Flush the attached sinks."""
        for sink, _ in self._sinks:
            sink.flush()

    def close(self) -> None:
        """Close and detach every sink."""
        with self._eager.lock:
            for sink, _ in self._sinks:
                sink.close()
            self._sinks = []
            for key in [k for k in self._marks if k.startswith("sink/")]:
                del self._marks[key]


def as_sink(obj: Any):
    """A path becomes a :class:`JsonlWriter`; a function a :class:`FunctionSink`."""
    if isinstance(obj, (str, os.PathLike)):
        return JsonlWriter(obj)
    if isinstance(obj, (JsonlWriter, TensorBoardWriter, FunctionSink)):
        return obj
    if hasattr(obj, "write"):
        return obj if hasattr(obj, "flush") and hasattr(obj, "close") else _Sink(obj)
    if callable(obj):
        return FunctionSink(obj)
    raise LossDSLError(
        f"cannot write the loss statistics to a {type(obj).__name__}",
        hint="pass a path, lossdsl.JsonlWriter(path), lossdsl.TensorBoardWriter(dir), an object "
        "with write(scalars, step), or a function f(scalars, step)",
    )


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSONL log, ``null`` read back as NaN; lines without a step are skipped."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            record = json.loads(line)
            if isinstance(record, dict) and "step" in record:
                records.append({k: (math.nan if v is None else v) for k, v in record.items()})
    return records


def format_table(table: dict[str, dict[str, float]], leaf: Sequence[float]) -> str:
    """Render ``Monitor.stats()`` as a text table; shares of the gradient norm are over the terms."""
    names = list(table)
    grads = [table[n]["grad_norm"] for n in names]
    probed = any(g == g for g in grads)
    gsum = sum(g for g, is_leaf in zip(grads, leaf) if is_leaf and g == g)
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
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, width)))
             for r in rows]
    return "\n".join(lines[:1] + ["-" * len(lines[0])] + lines[1:])


def _num(x: float, fmt: str = ".4g") -> str:
    return "nan" if x != x else format(x, fmt)
