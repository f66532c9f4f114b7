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

__all__ = ["JsonlWriter", "TensorBoardWriter", "FunctionSink", "AttachedSinks", "as_sink"]


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
    are written as ``null`` so the file stays valid JSON. Each row goes to the end of the
    file in one write, unbuffered, so a crashed run keeps its log and several writers (two
    losses, two processes) can share one log: every row is kept whole. A path that cannot
    be a file (``""``, a folder, a path under a file) is a :class:`~lossdsl.LossDSLError`
    here; one that fails later (no permission, a full disk) is one at the write.

    >>> import json, os, tempfile, lossdsl
    >>> path = os.path.join(tempfile.mkdtemp(), "terms.jsonl")
    >>> with lossdsl.JsonlWriter(path) as log:
    ...     log.write({"loss/total": 1.5, "loss/mse": float("nan")}, step=3)
    >>> json.loads(open(path).read())
    {'step': 3, 'loss/total': 1.5, 'loss/mse': None}
    """

    def __init__(self, path: str | os.PathLike, *, append: bool = False, rank_zero_only: bool = True) -> None:
        self.path = _log_path(path)
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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # appending even to a new file: another writer of the same log may add rows too,
            # and each of its rows must land after ours, not over them
            self._file = open(self.path, "ab", buffering=0)
        except OSError as err:
            raise _cannot_write(self.path, err) from err

    def write(self, scalars: Mapping[str, float], step: int) -> None:
        if self.rank_zero_only and not _is_rank_zero():
            return
        if self._file is None:
            self.start_log()
        record = {"step": int(step)}
        record.update({k: (float(v) if math.isfinite(v) else None) for k, v in scalars.items()})
        data = memoryview((json.dumps(record) + "\n").encode("utf-8"))
        try:
            while data:  # one write call for the line; the loop only finishes a short write
                data = data[self._file.write(data):]
        except OSError as err:
            raise _cannot_write(self.path, err) from err

    def flush(self) -> None:
        pass  # every row is written through, unbuffered

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self.append = True  # writing again after close adds to what this writer wrote

    def __repr__(self) -> str:
        return f"JsonlWriter({str(self.path)!r})"


_LOG_HINT = "pass the path of a file, e.g. JsonlWriter('runs/exp1/terms.jsonl'), in a folder you can write to"


def _log_path(path: Any) -> Path:
    """``path`` as a Path, refused when it can never be a file: empty, a folder, or inside
    something that is a file (checked without touching the disk beyond ``stat``)."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(os.fspath(path), bytes):
        raise LossDSLError(f"a log path must be text, not a {type(path).__name__}", hint=_LOG_HINT)
    if not os.fspath(path):
        raise LossDSLError("the log path is empty", hint=_LOG_HINT)
    out = Path(path)
    if out.is_dir():
        raise LossDSLError(f"the log path {str(out)!r} is a folder, not a file", hint=_LOG_HINT)
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LossDSLError(
                    f"the log path {str(out)!r} is inside {str(parent)!r}, which is a file", hint=_LOG_HINT
                )
            break
    return out


def _cannot_write(path: Path, err: OSError) -> LossDSLError:
    return LossDSLError(
        f"cannot write the log {str(path)!r}: {err.strerror or err}",
        hint="check that the folder exists or can be made, that you may write there, and that the disk has room",
    )


class TensorBoardWriter(_ClosedOnExit):
    """Scalars for TensorBoard, through ``torch.utils.tensorboard.SummaryWriter``. Needs the
    ``tensorboard`` package (``pip install 'lossdsl[tensorboard]'``), checked here, when the
    writer is made. Non-finite values are skipped. The event file is created at the first
    write; TensorBoard starts a new event file per writer, so nothing is ever replaced.

    >>> import os, tempfile, lossdsl
    >>> folder = tempfile.mkdtemp()
    >>> with lossdsl.TensorBoardWriter(folder) as board:
    ...     board.write({"loss/total": 1.5}, step=3)
    >>> any(name.startswith("events.out.tfevents") for name in os.listdir(folder))
    True
    """

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
        self.log_dir = os.fspath(log_dir)
        if not self.log_dir.strip():  # SummaryWriter would pick a folder of its own, unsaid
            raise LossDSLError("the TensorBoard log folder is empty", hint="pass a folder, e.g. TensorBoardWriter('runs/exp1')")
        if os.path.exists(self.log_dir) and not os.path.isdir(self.log_dir):
            raise LossDSLError(
                f"TensorBoardWriter({self.log_dir!r}): that is a file; TensorBoard writes into a folder",
                hint="pass a folder (made when missing), e.g. TensorBoardWriter('runs/exp1')",
            )
        self.rank_zero_only = rank_zero_only
        self._kwargs = writer_kwargs
        self._make = SummaryWriter
        self._writer = None

    def write(self, scalars: Mapping[str, float], step: int) -> None:
        if self.rank_zero_only and not _is_rank_zero():
            return
        if self._writer is None:
            try:
                self._writer = self._make(log_dir=self.log_dir, **self._kwargs)
            except OSError as err:
                raise LossDSLError(
                    f"cannot write TensorBoard events to {self.log_dir!r}: {err.strerror or err}",
                    hint="pass a folder you can write to (made when missing)",
                ) from err
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

    def __repr__(self) -> str:
        return f"FunctionSink({getattr(self.fn, '__qualname__', None) or self.fn!r})"

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

    def __repr__(self) -> str:
        return repr(self.inner)


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

    def write(self, rows: list[tuple[str, Any, dict]], step: int, give_back: Callable[[str], None]) -> None:
        """Write each ``(key, sink, scalars)`` row (an empty one is skipped). A sink that
        raises stops no other: ``give_back(key)`` returns its window (its next row covers
        these calls too), and once every sink has had its row the first error is raised, a
        :class:`~lossdsl.LossDSLError` naming the sink with the sink's error as its cause."""
        failed = None
        for key, sink, scalars in rows:
            if not scalars:
                continue
            try:
                sink.write(scalars, step)
            except Exception as err:  # noqa: BLE001 - any sink's failure is reported below
                give_back(key)
                failed = failed or (sink, err)
        if failed is None:
            return
        sink, err = failed
        if isinstance(err, LossDSLError):
            raise err  # already says what went wrong, with its hint
        raise LossDSLError(
            f"the sink {sink!r} failed to write the row of step {step}: {type(err).__name__}: {err}",
            hint="the other sinks wrote their rows; this sink's next row covers the calls of the lost one",
        ) from err

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
