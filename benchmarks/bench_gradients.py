"""What balancing gradients costs (DESIGN.md §6.1): one training step (forward of a small
MLP with a shared trunk and one head per term, the loss, its backward) with 2 and 4 terms,
each variant as a ratio to the plain sum of the same terms back-propagated by
``loss.backward()``.

Variants: ``crit.backward(shared=trunk)`` with ``upgrad`` (exact: one Jacobian row per term
over the trunk's parameters, UPGrad's quadratic programs) and with ``mean`` (the Jacobian
alone, no solver); ``crit.backward(features=h)`` with ``upgrad`` (the Jacobian with respect
to the trunk's output); and the weight producer ``lra`` updating every call and every 10th
call. The variants run interleaved in one process (shuffled order each round); a ratio is the
median over rounds of the per-round ratio, by the CPU time of the process (one torch thread)
and by the wall clock. The table is printed and written between ``<!-- gradients:start -->``
and ``<!-- gradients:end -->`` in BENCHMARKS.md.

Run: ``python benchmarks/bench_gradients.py`` (``--no-write`` to only print).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lossdsl  # noqa: E402
from benchmarks.measure import interleaved, keep_freed_memory, median_ratio  # noqa: E402
from benchmarks.report import write_section  # noqa: E402

START, END = "<!-- gradients:start -->", "<!-- gradients:end -->"
BATCH, INPUT, WIDTH, OUTPUT = 128, 32, 256, 16
BASE = "plain sum, loss.backward()"


class MultiHead(nn.Module):
    def __init__(self, heads: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(INPUT, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(WIDTH, OUTPUT) for _ in range(heads))

    def forward(self, x):
        h = self.trunk(x)
        return h, {f"p{i}": head(h) for i, head in enumerate(self.heads)}


def sources(k: int) -> dict[str, str]:
    terms = ", ".join(f"mse(pred=p{i}, target=t{i})" for i in range(k))
    return {
        BASE: " + ".join(f"mse(pred=p{i}, target=t{i})" for i in range(k)),
        "upgrad, crit.backward(shared=trunk)": f'balance({terms}, method="upgrad")',
        "mean, crit.backward(shared=trunk)": f'balance({terms}, method="mean")',
        "upgrad, crit.backward(features=h)": f'balance({terms}, method="upgrad")',
        "lra every=1, loss.backward()": f'balance({terms}, method="lra", every=1)',
        "lra every=10, loss.backward()": f'balance({terms}, method="lra", every=10)',
        "gradnorm every=1, loss.backward()": f'balance({terms}, method="gradnorm", every=1)',
    }


def variants(k: int) -> dict:
    gen = torch.Generator().manual_seed(k)
    model = MultiHead(k)
    x = torch.randn(BATCH, INPUT, generator=gen)
    targets = {f"t{i}": torch.randn(BATCH, OUTPUT, generator=gen) for i in range(k)}
    steps = {}
    for name, source in sources(k).items():
        crit = lossdsl.compile(source)

        def step(crit=crit, name=name):
            model.zero_grad(set_to_none=True)
            h, preds = model(x)
            if name.startswith(("lra", "gradnorm")):
                crit(**preds, **targets, shared=model.trunk).backward()
            elif "shared=" in name:
                crit(**preds, **targets)
                crit.backward(shared=model.trunk)
            elif "features=" in name:
                crit(**preds, **targets)
                crit.backward(features=h)
            else:
                crit(**preds, **targets).backward()

        steps[f"{k} terms: {name}"] = step
    return steps


def section(rows, rounds: int, threads: int) -> str:
    lines = [
        START,
        "## Balancing gradients",
        "",
        f"One training step of an MLP (trunk {INPUT}-{WIDTH}-{WIDTH}, ReLU; one {WIDTH}-{OUTPUT} head "
        f"per term; batch {BATCH}; the trunk has {INPUT * WIDTH + WIDTH * WIDTH + 2 * WIDTH} parameters) "
        f"with `mse` terms, on the CPU ({threads} thread{'s' if threads != 1 else ''}, torch "
        f"{torch.__version__}); variants interleaved in one process, median of {rounds} rounds; "
        "ratios to the plain sum of the same terms back-propagated by `loss.backward()`.",
        "",
        "| terms | variant | CPU ms per step | ratio (CPU time) | ratio (wall clock) |",
        "|---:|---|---:|---:|---:|",
    ]
    lines += [f"| {k} | {name} | {ms:.3f} | {cpu:.2f} | {wall:.2f} |" for k, name, ms, cpu, wall in rows]
    lines += [
        "",
        "Where the time goes: `shared=` takes one backward through the trunk per term (the Jacobian "
        "rows) and one more for the total, plus the aggregator's solver (`upgrad` against `mean`); "
        "`features=` takes one backward per term through the heads only and one through the trunk; "
        "`lra` and `gradnorm` take one backward per term on their update calls only, so `every=10` "
        "costs a tenth of that.",
        "",
        "Generated by `python benchmarks/bench_gradients.py`.",
        END,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=5, help="steps per sample")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    steps = {**variants(2), **variants(4)}
    for step in steps.values():  # warm up: allocator, solvers, first-call paths
        for _ in range(3):
            step()
    wall, cpu = interleaved(steps, args.rounds, {name: args.calls for name in steps})
    rows = []
    for name in steps:
        k, variant = name.split(" terms: ")
        base = f"{k} terms: {BASE}"
        rows.append((int(k), variant, 1e3 * statistics.median(cpu[name]), median_ratio(cpu, name, base),
                     median_ratio(wall, name, base)))
    width = max(len(row[1]) for row in rows)
    print(f"terms  {'variant':<{width}}  CPU ms/step  ratio (CPU)  ratio (wall)")
    for k, name, ms, c, w in rows:
        print(f"{k:5d}  {name:<{width}}  {ms:11.3f}  {c:11.2f}  {w:12.2f}")
    if not args.no_write:
        path = ROOT / "BENCHMARKS.md"
        write_section(path, section(rows, args.rounds, args.threads), START, END)
        print(f"wrote the gradients section of {path.name}")


if __name__ == "__main__":
    main()
