"""Reading back a JSONL log of per-term statistics (what :class:`~lossdsl.JsonlWriter` writes:
one JSON object a line, every value a number or ``null``), for ``lossdsl plot``, ``lossdsl
balance`` and any script: one reader, so that each of them refuses what is not a log the
same way, before any work.
"""

from __future__ import annotations

import json
import math
import os
import stat
from typing import Any

from ..errors import LossDSLError

__all__ = ["read_jsonl"]

_HINT = "a log is written by crit.monitor.attach(lossdsl.JsonlWriter(path), every=N)"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _open(path: str):
    try:
        # O_NONBLOCK: a named pipe is refused below instead of waiting for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise LossDSLError(f"no log at {path}", hint="check the path") from None
    except IsADirectoryError:
        raise LossDSLError(f"{path} is a directory, not a JSONL log", hint=_HINT) from None
    except OSError as err:
        raise LossDSLError(f"cannot read {path}: {err.strerror or err}", hint="check the path and its permissions") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LossDSLError(f"{path} is not a regular file", hint=_HINT)
    return os.fdopen(fd, "rb")


def _fits_a_float(value: int | float) -> bool:
    try:
        float(value)  # JSON allows integers of any size; a float stops near 1.8e308
    except OverflowError:
        return False
    return True


def _line_error(path: str, number: int, problem: str) -> LossDSLError:
    return LossDSLError(f"{path}, line {number}: {problem}", hint=_HINT)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSONL log (``null`` read back as NaN); lines without ``step`` are skipped.

    Every line is checked: a file that is not such a log (binary, a cut line, a string where
    a number belongs, a folder, a missing file) is a :class:`~lossdsl.LossDSLError` naming
    the file and the line.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "run.jsonl")
    >>> _ = open(path, "w").write('{"step": 1, "loss/total": 2.0}\\n{"step": 2, "loss/total": "high"}\\n')
    >>> try:
    ...     read_jsonl(path)
    ... except LossDSLError as err:
    ...     print(err.message.replace(folder + os.sep, ""))
    run.jsonl, line 2: the value of 'loss/total' is not a number
    """
    path = os.fspath(path)
    records = []
    with _open(path) as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise _line_error(path, number, "not UTF-8 text (is this a JSONL log?)") from None
            if not line:
                continue
            try:
                record = json.loads(line)
            except RecursionError:
                raise _line_error(path, number, "nested too deeply to be a log line") from None
            except ValueError as err:  # JSONDecodeError, or an integer of more than 4300 digits
                problem = getattr(err, "msg", None) or str(err).split("; use sys.")[0]
                raise _line_error(path, number, f"not JSON ({problem})") from None
            if not isinstance(record, dict):
                raise _line_error(path, number, f"a JSON {type(record).__name__}, not an object")
            for key, value in record.items():
                if value is not None and not _number(value):
                    raise _line_error(path, number, f"the value of {key!r} is not a number")
                if _number(value) and not _fits_a_float(value):
                    raise _line_error(path, number, f"the value of {key!r} is too large for a float")
            if "step" not in record:
                continue
            if not _number(record["step"]) or not math.isfinite(record["step"]):
                raise _line_error(path, number, "the step is not a finite number")
            records.append({k: (math.nan if v is None else v) for k, v in record.items()})
    return records
