"""Benchmark lossdsl against hand-written PyTorch: time and peak memory of forward + backward.

For each program (``benchmarks/programs.py``) and size, the variants are: the hand-written
eager loss, the compiled ``Loss`` with monitoring on (the default) and off, and
``torch.compile`` of the hand-written loss and of the ``Loss`` (``--no-compile`` skips
them). Ratios are taken against the eager loss in the same rounds
(``benchmarks/measure.py``). Also measured: ``lossdsl.parse`` and ``lossdsl.compile`` of a
source seen before, and the fixed per-call cost on a tiny input.

    python benchmarks/run.py                      # print the tables
    python benchmarks/run.py --write BENCHMARKS.md
    python benchmarks/run.py --quick --no-compile # a smoke run of a few seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lossdsl  # noqa: E402
from lossdsl.monitor import Monitor  # noqa: E402
from lossdsl.program import Program  # noqa: E402
from benchmarks.measure import calls_for, interleaved, keep_freed_memory, median_ratio, memory  # noqa: E402
from benchmarks.programs import PROGRAMS  # noqa: E402
from benchmarks.report import Row, machine_line, render, write_section  # noqa: E402

SIZES = {"small": (64, 128, 16), "large": (256, 512, 64)}  # dispatch-bound, memory-bound
STEP = 500  # the step passed to every call: the mixture's schedule is half-way up


def _basic_variants(program, pred, target) -> dict:
    """The hand-written loss and lossdsl with the monitor on and off, as ``forward() -> loss``."""
    hand = program.hand()
    crit = lossdsl.compile(program.source)
    quiet = lossdsl.compile(program.source)
    quiet.monitor.enabled = False
    return {
        "eager (hand-written)": lambda: hand(pred, target, STEP),
        "lossdsl": lambda: crit(pred, target, step=STEP),
        "lossdsl, monitor off": lambda: quiet(pred, target, step=STEP),
    }


def _variants(program, shape, size_name: str, args):
    """``pred, target, {variant name: forward() -> loss}``."""
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(shape, generator=gen, requires_grad=True)
    target = torch.randn(shape, generator=gen)
    out = _basic_variants(program, pred, target)
    if args.compile:
        hand_c = torch.compile(program.hand())
        crit_c = torch.compile(lossdsl.compile(program.source))
        out["torch.compile(eager)"] = lambda: hand_c(pred, target, STEP)
        out["torch.compile(lossdsl)"] = lambda: crit_c(pred, target, step=STEP)
    return pred, target, out


def _check_values(program, pred, target) -> None:
    """Every lossdsl variant computes the hand-written value (fresh objects: first call)."""
    want = program.hand()(pred, target, STEP).item()
    got = lossdsl.compile(program.source)(pred, target, step=STEP).item()
    if abs(got - want) > 1e-4 * max(1.0, abs(want)):
        raise SystemExit(f"{program.key}: lossdsl gives {got}, the hand-written loss {want}")


def bench_case(program, size_name: str, args) -> list[Row]:
    shape = SIZES[size_name]
    pred, target, variants = _variants(program, shape, size_name, args)
    _check_values(program, pred, target)

    def reset():
        pred.grad = None

    steps, compile_s = {}, {}
    for name, forward in variants.items():
        def step(forward=forward):
            pred.grad = None
            forward().backward()

        started = time.perf_counter()
        try:
            for _ in range(2):  # warm-up; compiles the torch.compile variants
                step()
        except Exception as err:  # e.g. no C++ compiler for torch.compile: leave it out
            if "compile" not in name:
                raise
            print(f"    {name} left out: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        compile_s[name] = time.perf_counter() - started if "compile" in name else 0.0
        steps[name] = step
    variants = {name: variants[name] for name in steps}
    mem = {name: memory(forward, reset) for name, forward in variants.items()}
    if size_name == "small":
        calls = {name: calls_for(step, budget_s=0.03 if not args.quick else 0.005) for name, step in steps.items()}
        rounds = args.rounds_small
    else:
        calls, rounds = {name: 1 for name in steps}, args.rounds_large
    samples, cpu = interleaved(steps, rounds, calls)
    base = "eager (hand-written)"
    pred_bytes = pred.numel() * pred.element_size()
    return [
        Row(
            program=program.key,
            size=size_name,
            shape=shape,
            variant=name,
            ms=statistics.median(samples[name]) * 1e3,
            ratio=median_ratio(samples, name, base),
            cpu_ms=statistics.median(cpu[name]) * 1e3,
            cpu_ratio=median_ratio(cpu, name, base),
            peak=mem[name].peak,
            held=mem[name].held,
            pred_bytes=pred_bytes,
            compile_s=compile_s[name],
        )
        for name in variants
    ]


def _best_us(fn, n: int, repeats: int = 7) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def setup_costs(quick: bool) -> dict[str, float]:
    """Microseconds of parse/compile on a source seen before, and their parts (best of 7)."""
    source = PROGRAMS["card"].source
    crit = lossdsl.compile(source)
    program = crit.program
    n = 50 if quick else 500
    return {
        "lossdsl.parse (cached)": _best_us(lambda: lossdsl.parse(source), n * 10),
        "lossdsl.compile (cached)": _best_us(lambda: lossdsl.compile(source), n),
        "  of which the IR (cached)": _best_us(lambda: lossdsl.check(source), n * 10),
        "  of which Monitor()": _best_us(
            lambda: Monitor(program.names, program.is_term, program.inputs_read, None), n
        ),
        "building the program (not cached)": _best_us(lambda: Program(crit.ir, "raise"), max(n // 10, 5)),
    }


def call_overhead(quick: bool) -> dict[str, float]:
    """Forward-only CPU microseconds on a tiny (2, 8, 2) input: the fixed cost of a call."""
    steps = _basic_variants(PROGRAMS["card"], torch.randn(2, 8, 2), torch.randn(2, 8, 2))
    _, cpu = interleaved(steps, 5 if quick else 21, {k: 200 for k in steps})
    return {k: statistics.median(v) * 1e6 for k, v in cpu.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", metavar="FILE", help="rewrite the benchmark section of FILE")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--programs", nargs="+", choices=list(PROGRAMS), default=list(PROGRAMS))
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--rounds-small", type=int, default=21)
    parser.add_argument("--rounds-large", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="few rounds, for a smoke run")
    parser.add_argument(
        "--system-malloc", action="store_true", help="leave malloc as it is (see keep_freed_memory)"
    )
    args = parser.parse_args(argv)
    kept = False if args.system_malloc else keep_freed_memory()
    if args.quick:
        args.rounds_small, args.rounds_large = 3, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = []
    for key in args.programs:
        for size in args.sizes:
            print(f"... {key} {SIZES[size]}", file=sys.stderr, flush=True)
            rows.extend(bench_case(PROGRAMS[key], size, args))
    setup = setup_costs(args.quick)
    overhead = call_overhead(args.quick)
    elapsed = time.perf_counter() - started
    machine = machine_line(load_before, elapsed)
    machine += "; malloc keeps freed memory (no page faults per tensor)" if kept else "; system malloc"
    text = render(rows, setup, overhead, machine, sources={k: PROGRAMS[k].source for k in args.programs})
    print(text)
    if args.write:
        write_section(Path(args.write), text)
        print(f"wrote {args.write}", file=sys.stderr)


if __name__ == "__main__":
    main()
