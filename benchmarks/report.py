"""Tables of the benchmark results, and the section of BENCHMARKS.md they replace.

The section lies between ``<!-- bench:start -->`` and ``<!-- bench:end -->``; everything
else in the file (the monitor section, the notes written by hand) is left as it is.

>>> text = write_section.__doc__
>>> "bench:start" in text
True
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Row", "machine_line", "render", "write_section"]

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Row:
    program: str
    size: str
    shape: tuple
    variant: str
    ms: float  # median wall-clock time of a forward + backward, in ms
    ratio: float  # median per-round ratio of wall-clock times to the eager hand-written loss
    peak: int  # bytes
    held: int  # bytes
    pred_bytes: int
    compile_s: float
    cpu_ms: float = 0.0  # the same in CPU time of the process
    cpu_ratio: float = 0.0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(load_before, elapsed_s: float) -> str:
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    load = ""
    if load_before and load_after:
        load = f"; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
        if max(load_before[0], load_after[0]) >= (os.cpu_count() or 1):
            load += " (a busy machine: absolute times are inflated and noisy, ratios less so)"
    return (
        f"{_cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}{load}; the run took {elapsed_s / 60:.1f} min"
    )


def _target(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render(rows: list[Row], setup: dict, overhead: dict, machine: str, sources: dict) -> str:
    out = [START, "", "## Results", "", f"Machine: {machine}.", ""]
    out += ["Programs:", ""] + [f"- `{k}`: `{v}`" for k, v in sources.items()] + [""]
    out += [
        "Forward + backward of one batch. Times are medians over interleaved rounds, as wall "
        "clock and as CPU time of the process; \"x eager\" is the median of the per-round "
        "ratio to the hand-written eager loss (below 1 is faster). Peak and held memory as "
        "defined in `benchmarks/measure.py` (peak: most bytes allocated at once during forward "
        "+ backward, the inputs not counted, the gradient of `pred` counted; held: allocated "
        "between forward and backward), also as a multiple of the bytes of `pred`.",
        "",
        "| program | shape | variant | ms wall | x eager (wall) | ms CPU | x eager (CPU) "
        "| peak MiB | peak / pred | held MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        compiled = f" (compiled in {r.compile_s:.0f} s)" if r.compile_s else ""
        out.append(
            f"| {r.program} | {'x'.join(map(str, r.shape))} | {r.variant}{compiled} | {r.ms:.2f} "
            f"| {r.ratio:.3f} | {r.cpu_ms:.2f} | {r.cpu_ratio:.3f} | {r.peak / MIB:.1f} "
            f"| {r.peak / r.pred_bytes:.2f} | {r.held / MIB:.1f} |"
        )
    out += ["", "Setup and fixed costs (microseconds; setup: best of 7, one forward: median CPU time):",
            "", "| what | us |", "|---|---:|"]
    out += [f"| {k} | {v:.1f} |" for k, v in setup.items()]
    out += [f"| one forward on a (2, 8, 2) input, `card`: {k} | {v:.1f} |" for k, v in overhead.items()]
    # With one torch thread the CPU time is the cost of the call and does not count the time
    # spent waiting for a core on a shared machine; with more threads it also counts threads
    # waiting for each other, so the wall clock decides.
    by_cpu = torch.get_num_threads() == 1
    which = "CPU-time" if by_cpu else "wall-clock"
    out += ["", "## Targets", "", f"Time ratios below are the {which} ratios.", ""]
    out += ["| target | measured | status |", "|---|---|---|"]
    out += _targets(rows, setup, by_cpu)
    out += ["", END]
    return "\n".join(out) + "\n"


def _targets(rows: list[Row], setup: dict, by_cpu: bool) -> list[str]:
    lines = []
    by = {(r.program, r.size, r.variant): r for r in rows}
    ratio = (lambda r: r.cpu_ratio) if by_cpu else (lambda r: r.ratio)  # noqa: E731
    for (program, size, variant), r in by.items():
        if variant == "lossdsl":
            lines.append(
                f"| `{program}` {size}: lossdsl / eager <= 1.05 | {ratio(r):.3f} | {_target(ratio(r) <= 1.05)} |"
            )
            off = by.get((program, size, "lossdsl, monitor off"))
            if off:
                cost = ratio(r) / ratio(off)
                lines.append(
                    f"| `{program}` {size}: monitoring costs <= 5 % | {100 * (cost - 1):+.1f} % "
                    f"| {_target(cost <= 1.05)} |"
                )
        if variant == "lossdsl fuse=True" and size == "large":
            speedup = 1.0 / ratio(r)
            lines.append(f"| `{program}` large: fused >= 2x faster than eager | {speedup:.2f}x | {_target(speedup >= 2)} |")
            mult = r.peak / r.pred_bytes
            lines.append(f"| `{program}` large: fused peak <= 2x the input | {mult:.2f}x pred | {_target(mult <= 2)} |")
    for key in ("lossdsl.parse (cached)", "lossdsl.compile (cached)"):
        if key in setup:
            lines.append(f"| {key} <= 50 us | {setup[key]:.1f} us | {_target(setup[key] <= 50)} |")
    return lines


def write_section(path: Path, text: str) -> None:
    """Replace the text between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` in
    ``path`` with ``text`` (which carries the markers); append it when the file has none."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END) + r"\n?", re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _: text, old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new, encoding="utf-8")
