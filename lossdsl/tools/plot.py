"""Read and draw a JSONL log of per-term statistics: raw magnitudes on a log axis, and each
term's share of the total as a stacked area (plus the shares of the gradient norm when probed).

A log is what :class:`~lossdsl.JsonlWriter` writes: one JSON object a line, every value a
number or ``null``, read by :func:`lossdsl.monitor.read_jsonl`, which checks each line, so
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

import math
import os
from pathlib import Path

from ..errors import LossDSLError
from ..monitor.logs import read_jsonl
from .suggest import log_names, log_terms

__all__ = ["plot_log", "require_matplotlib", "PLOT_EXTRA"]

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
    image's path. The image format follows the suffix of ``png_path`` (without one: PNG, and
    ``.png`` is added to the name). A file
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
    records = read_jsonl(jsonl_path)
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
    if not kind:  # matplotlib adds the suffix of its default format; the path returned is the file
        png_path = png_path.with_name(png_path.name + ".png")
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    return str(png_path)
