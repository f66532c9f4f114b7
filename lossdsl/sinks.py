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
from typing import Any, Callable, Mapping

__all__ = ["JsonlWriter", "TensorBoardWriter", "FunctionSink", "as_sink", "read_jsonl"]


def _is_rank_zero() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch built without distributed
        return True
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class JsonlWriter:
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

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"JsonlWriter({str(self.path)!r})"


class TensorBoardWriter:
    """Scalars for TensorBoard, through ``torch.utils.tensorboard.SummaryWriter`` (needs the
    ``tensorboard`` package). Non-finite values are skipped. The event file is created at the
    first write."""

    def __init__(self, log_dir: str | os.PathLike, *, rank_zero_only: bool = True, **writer_kwargs: Any) -> None:
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

    def __enter__(self) -> "TensorBoardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
    raise TypeError(f"a sink needs a write(scalars, step) method, got {type(obj).__name__}")


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
