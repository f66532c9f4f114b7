"""Read and draw a JSONL log of per-term statistics: raw magnitudes on a log axis, and each
term's share of the total as a stacked area (plus the shares of the gradient norm when probed).

A log is what :class:`~lossdsl.JsonlWriter` writes: one JSON object a line, every value a
number or ``null``. :func:`read_log` (also used by ``lossdsl balance``) checks each line, so
that a binary file, a cut line or a string where a number belongs is a
:class:`~lossdsl.LossDSLError` naming the file and the line, not a decoding error from deep
inside a plot.

Uses matplotlib's object API with the Agg canvas, so it needs no display and leaves
pyplot's global state alone.

>>> import os, tempfile, torch, lossdsl
>>> from lossdsl.tools.plot import plot_log
>>> folder = tempfile.mkdtemp()
>>> crit = lossdsl.compile("0.7*mse + 0.3*mae")
>>> _ = crit.monitor.attach(os.path.join(folder, "run.jsonl"), every=1)
>>> for _ in range(3):
...     _ = crit(torch.randn(8), torch.randn(8))
>>> crit.monitor.close()
>>> png = plot_log(os.path.join(folder, "run.jsonl"), os.path.join(folder, "terms.png"))
>>> os.path.getsize(png) > 0
True
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from ..errors import LossDSLError
from .suggest import log_names, log_terms

__all__ = ["plot_log", "read_log", "require_matplotlib", "PLOT_EXTRA"]

PLOT_EXTRA = "pip install 'lossdsl[plot]'"


def require_matplotlib() -> None:
    """Raise ``ImportError`` naming the extra to install when matplotlib is missing.

    Called where a plot is asked for (``plot_log``, ``lossdsl plot`` as it starts), so the
    missing extra is reported before any work, not at the end of a run.

    >>> require_matplotlib()  # installed: nothing happens
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(f"plotting needs matplotlib, which is not installed: {PLOT_EXTRA}") from None


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
        raise LossDSLError(f"cannot read {path}: {err.strerror or err}") from None
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


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSONL log (``null`` read back as NaN); lines without ``step`` are skipped.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "run.jsonl")
    >>> _ = open(path, "w").write('{"step": 1, "loss/total": 2.0}\\n{"step": 2, "loss/total": "high"}\\n')
    >>> try:
    ...     read_log(path)
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


def _series(records: list[dict], key: str) -> list[float]:
    out = []
    for record in records:
        value = record.get(key, math.nan)
        out.append(float(value) if isinstance(value, (int, float)) else math.nan)
    return out


def _positive(values: list[float]) -> list[float]:
    # a log axis cannot show 0 or negative values: leave gaps there
    return [abs(v) if v == v and v != 0 else math.nan for v in values]


def _shares(records: list[dict], keys: list[str]) -> list[list[float]]:
    """Per-step shares from ``keys``, renormalised to sum to 1 (gaps count as 0)."""
    columns = [[0.0 if v != v else abs(v) for v in _series(records, k)] for k in keys]
    totals = [sum(col[i] for col in columns) for i in range(len(records))]
    return [[v / t if t > 0 else 0.0 for v, t in zip(col, totals)] for col in columns]


def plot_log(
    jsonl_path: str | os.PathLike,
    png_path: str | os.PathLike,
    *,
    source: str | None = None,
    title: str | None = None,
) -> str:
    """Draw ``jsonl_path`` (written by :class:`~lossdsl.JsonlWriter`) into ``png_path``.

    Top: each term's raw mean and the total per logged step, log scale. Middle: each term's
    share of the weighted magnitude, stacked. Bottom (when the log has gradient norms): each
    term's share of the weighted gradient norm, stacked. Named composites are drawn in the
    top panel only (dotted); ``source``, the program that wrote the log, tells them from
    terms exactly, else their shares do (:func:`lossdsl.tools.suggest.log_terms`). Returns the
    PNG's path. The image format follows the suffix of ``png_path`` (PNG without one). A file
    that is not such a log, or a suffix matplotlib cannot write, raises
    :class:`~lossdsl.LossDSLError`.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kind = Path(png_path).suffix[1:].lower()
    formats = sorted(FigureCanvasAgg.get_supported_filetypes())
    if kind and kind not in formats:  # checked before the work, and named for the user
        raise LossDSLError(
            f"cannot draw {os.fspath(png_path)!r}: .{kind} is not an image format matplotlib writes",
            hint="use one of the suffixes " + ", ".join("." + f for f in formats),
        )
    records = read_log(jsonl_path)
    names, prefix = log_names(records)
    if not records or not names:
        raise LossDSLError(
            f"nothing to plot in {os.fspath(jsonl_path)!r}",
            hint="write the log with crit.monitor.attach(lossdsl.JsonlWriter(path), every=N)",
        )
    steps = _series(records, "step")
    terms = log_terms(records, names, prefix, source)
    palette = [f"C{i % 10}" for i in range(len(names))]  # one colour per name in every panel
    color = dict(zip(names, palette))
    probed = any(f"{prefix}{n}/grad_norm" in r for r in records for n in names)
    panels = 3 if probed else 2
    fig = Figure(figsize=(9, 2.8 * panels), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(panels, 1, sharex=True)

    raw_ax = axes[0]
    for name in names:
        style = "-" if name in terms else ":"
        raw_ax.plot(steps, _positive(_series(records, prefix + name)), style, color=color[name], label=name)
    raw_ax.plot(steps, _positive(_series(records, prefix + "total")), "k--", label="total")
    raw_ax.set_yscale("log")
    raw_ax.set_ylabel("raw value")
    raw_ax.set_title(title or f"loss terms: {Path(jsonl_path).name}")
    raw_ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")

    share_ax = axes[1]
    shares = _shares(records, [f"{prefix}{n}/share" for n in terms])
    share_ax.stackplot(steps, shares, labels=terms, colors=[color[n] for n in terms])
    share_ax.set_ylim(0, 1)
    share_ax.set_ylabel("share of |weighted|")

    if probed:
        grad_ax = axes[2]
        grads = _shares(records, [f"{prefix}{n}/grad_norm" for n in terms])
        grad_ax.stackplot(steps, grads, labels=terms, colors=[color[n] for n in terms])
        grad_ax.set_ylim(0, 1)
        grad_ax.set_ylabel("share of grad norm")
    axes[-1].set_xlabel("step (calls)")

    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    return str(png_path)
