"""Where the per-term statistics go: a JSONL file (the default) or TensorBoard.

A sink is anything with ``write(scalars: dict[str, float], step: int)``; ``flush()`` and
``close()`` are optional. Attach one with ``crit.monitor.attach(sink, every=N)``. Under
``torch.distributed`` the writers here write on rank 0 only, and open nothing on the others.

>>> import json, os, tempfile, torch, lossdsl
>>> path = os.path.join(tempfile.mkdtemp(), "run.jsonl")
>>> crit = lossdsl.compile("0.5*mse")
>>> with lossdsl.JsonlWriter(path) as sink:
...     _ = crit.monitor.attach(sink, every=2)
...     for _ in range(4):
...         _ = crit(torch.zeros(2), torch.ones(2))
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

    The file (and its folder) is created at the first write; ``append=True`` keeps what the
    file already holds. NaN and infinities are written as ``null`` so the file stays valid
    JSON. Each write is flushed, so a crashed run keeps its log.
    """

    def __init__(self, path: str | os.PathLike, *, append: bool = False, rank_zero_only: bool = True) -> None:
        self.path = Path(path)
        self.append = append
        self.rank_zero_only = rank_zero_only
        self._file = None

    def write(self, scalars: Mapping[str, float], step: int) -> None:
        if self.rank_zero_only and not _is_rank_zero():
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a" if self.append else "w", encoding="utf-8")
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
            self.append = True  # writing again after close must not wipe the file

    def __repr__(self) -> str:
        return f"JsonlWriter({str(self.path)!r})"


class TensorBoardWriter(_ClosedOnExit):
    """Scalars for TensorBoard, through ``torch.utils.tensorboard.SummaryWriter`` (needs the
    ``tensorboard`` package). Non-finite values are skipped. The event file is created at the
    first write."""

    def __init__(
        self, log_dir: str | os.PathLike, *, rank_zero_only: bool = True, **writer_kwargs: Any
    ) -> None:
        self.log_dir = str(log_dir)
        self.rank_zero_only = rank_zero_only
        self._kwargs = writer_kwargs
        self._writer = None

    def write(self, scalars: Mapping[str, float], step: int) -> None:
        if self.rank_zero_only and not _is_rank_zero():
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.log_dir, **self._kwargs)
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


class SinkHost:
    """The sink side of :class:`~lossdsl.Monitor`: attached sinks and writing to them. The
    host provides ``_window(prefix, sync) -> (scalars, step)`` and a ``_sinks`` list."""

    _sinks: list

    def attach(self, sink: Any, every: int = 10) -> Any:
        """Write ``as_dict()`` to ``sink`` every ``every`` calls (eager calls; under
        ``torch.compile`` call :meth:`write` from the training loop instead).

        ``sink``: a :class:`~lossdsl.JsonlWriter`, a :class:`~lossdsl.TensorBoardWriter`, a
        path (a JSONL file), any object with ``write(scalars, step)``, or a function
        ``f(scalars, step)``. The step is the number of recorded calls. Sinks due on the same
        call get the same means; each write starts a new averaging window for all of them.

        >>> import torch, lossdsl
        >>> crit = lossdsl.compile("mse")
        >>> seen = []
        >>> _ = crit.monitor.attach(lambda scalars, step: seen.append(step), every=2)
        >>> for _ in range(4):
        ...     _ = crit(torch.zeros(3), torch.ones(3))
        >>> seen
        [2, 4]
        """
        if every < 1:
            raise LossDSLError(f"attach(every={every}): every must be >= 1", hint="N >= 1 calls")
        sink = as_sink(sink)
        self._sinks.append((sink, int(every)))
        return sink

    def write(self, step: int | None = None) -> dict[str, float]:
        """Write the means since the last read to every attached sink now; returns them."""
        return self._write([sink for sink, _ in self._sinks], step)

    def _write(self, sinks: list, step: int | None = None) -> dict[str, float]:
        scalars, seen = self._window(prefix="loss/", sync=False)
        if scalars:
            for sink in sinks:
                sink.write(scalars, seen if step is None else int(step))
        return scalars

    def flush(self) -> None:
        """Flush the attached sinks."""
        for sink, _ in self._sinks:
            sink.flush()

    def close(self) -> None:
        """Close and detach every sink."""
        for sink, _ in self._sinks:
            sink.close()
        self._sinks = []


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
        rows.append(row + [str(int(s["nonfinite"]))])
    rows[-1][1] = ""  # the total has no weight
    width = [max(len(r[i]) for r in rows) for i in range(len(head) + 1)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, width)))
             for r in rows]
    return "\n".join(lines[:1] + ["-" * len(lines[0])] + lines[1:])


def _num(x: float, fmt: str = ".4g") -> str:
    return "nan" if x != x else format(x, fmt)
