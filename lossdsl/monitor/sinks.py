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
from typing import Any, Callable, Mapping

import torch.distributed as dist

from ..errors import LossDSLError

__all__ = ["JsonlWriter", "TensorBoardWriter", "FunctionSink", "AttachedSinks", "as_sink", "read_jsonl"]


def _is_rank_zero() -> bool:
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


class AttachedSinks:
    """The sinks attached to a monitor: each sink with its cadence and the key of its
    window (:class:`~lossdsl.monitor.readers.Windows`). ``resumed``: the run continues a
    saved state, so a JSONL log appends; ``unstarted``: sinks not yet told so.

    >>> sinks = AttachedSinks()
    >>> rows = []
    >>> sinks.add(FunctionSink(lambda scalars, step: rows.append(step)), every=2)
    'sink/0'
    >>> [key for key, _ in sinks.due(3)], [key for key, _ in sinks.due(4)]
    ([], ['sink/0'])
    """

    def __init__(self, resumed: bool = False) -> None:
        self.entries: list[tuple[str, Any, int]] = []  # (window key, sink, every)
        self.resumed = resumed
        self.unstarted = False

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, sink: Any, every: int) -> str:
        """Attach ``sink`` (made by :func:`as_sink`); returns the key of its window."""
        key = f"sink/{len(self.entries)}"
        self.entries.append((key, sink, int(every)))
        self.unstarted = True
        return key

    def start(self) -> None:
        """Tell each new sink whether this run continues a saved one (a JSONL log then
        appends); a sink may refuse here, before anything is written."""
        for _, sink, _ in self.entries:
            start = getattr(sink, "start_log", None)
            if start is not None:
                start(resumed=self.resumed)
        self.unstarted = False

    def due(self, calls: int) -> list[tuple[str, Any]]:
        """The sinks that write after the ``calls``-th training call."""
        return [(key, sink) for key, sink, every in self.entries if calls % every == 0]

    def every_sink(self) -> list[tuple[str, Any]]:
        return [(key, sink) for key, sink, _ in self.entries]

    def flush(self) -> None:
        for _, sink, _ in self.entries:
            sink.flush()

    def close(self) -> list[str]:
        """Close and detach every sink; returns the keys of their windows."""
        keys = [key for key, _, _ in self.entries]
        for _, sink, _ in self.entries:
            sink.close()
        self.entries = []
        return keys


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
