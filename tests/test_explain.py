"""``lossdsl explain`` shows a binding used many times once: its text grows with the
program's text, not with the number of paths through the program."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest
import torch

import lossdsl
from lossdsl.tools.explain import explain, weight_descriptions


def chain(first: str, op: str, n: int, top: str = "mae + a{last}") -> str:
    """``a0 = first; a1 = a0 op a0; ...``: each line doubles the paths through the program."""
    lines = [f"a0 = {first}"] + [f"a{i} = a{i - 1} {op} a{i - 1}" for i in range(1, n)]
    return "\n".join(lines + [top.format(last=n - 1)])


_SCRIPT = """
import sys, time, lossdsl
from lossdsl.tools.explain import explain
crit = lossdsl.compile(sys.stdin.read())
start = time.perf_counter()
text = explain(crit)
print(time.perf_counter() - start, file=sys.stderr)
sys.stdout.write(text)
"""


def timed_explain(source: str) -> tuple[str, float]:
    """explain's text and seconds, in a child process: a regression to exponential work
    ends in a timeout here instead of hanging the suite."""
    result = subprocess.run([sys.executable, "-c", _SCRIPT], input=source, capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    return result.stdout, float(result.stderr.strip().splitlines()[-1])


def test_a_product_chain_of_forty_shared_bindings():
    source = chain("mse", "*", 40)  # 2**39 paths from the top to mse
    text, seconds = timed_explain(source)
    assert seconds < 5
    assert len(text) < 15 * len(source)
    tree = text.split("\n\n")[1].splitlines()
    # each shared composite drawn once under its own heading, and named where it is used
    for i in range(1, 39):
        assert tree.count(f"a{i} =  (named, used 2 times)") == 1, i
        assert sum(line.endswith(f"-- a{i}  (shared, shown below)") for line in tree) == 2, i
    assert sum("a39 =  (named)" in line for line in tree) == 1  # used once: drawn in place
    assert sum("(term mse)" in line for line in tree) == 2  # a1 = a0 * a0
    assert max(len(line) - len(line.lstrip(" |`-")) for line in tree) <= 12  # shallow
    rows = {line.split()[0]: line for line in text.split("\n\n")[2].splitlines()}
    # the product of losses: d total / d a0 depends on the values, said once
    assert rows["a0"].count("depends on the term values") == 1
    assert rows["mae"].split()[2] == "1"


def test_a_sum_chain_of_shared_watched_bindings():
    # a0 = watch(mse) is an alias, not a logged composite, so the shared nodes have no
    # log name: the tree names them after their bindings. (Compiling this chain is slow
    # for long chains; 14 lines already give 2**13 paths.)
    source = chain("watch(mse)", "+", 14)
    text, seconds = timed_explain(source)
    assert seconds < 5
    tree = text.split("\n\n")[1].splitlines()
    assert len(tree) <= 4 * 14 + 5
    for i in range(0, 12):
        assert tree.count(f"a{i} =  (binding, used 2 times)") == 1, i
        assert sum(line.endswith(f"-- a{i}  (shared, shown below)") for line in tree) == 2, i
    assert sum("(term mse)" in line for line in tree) == 1
    rows = {line.split()[0]: line for line in text.split("\n\n")[2].splitlines()}
    assert "0 (only logged)" in rows["mse"]


def test_the_command_line_output_is_bounded():
    source = chain("huber", "*", 40)
    result = subprocess.run([sys.executable, "-m", "lossdsl", "explain", source], capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) < 15 * len(source)


def test_a_composite_used_twice_is_counted_in_the_weights():
    # r is used by s (twice, through s + s) and directly: d total / d r = 2 lin(step) + 1
    crit = lossdsl.compile("r = mse; s = linear(0, 1, steps=10)*r; s + s + r")
    words = weight_descriptions(crit)
    assert words["s"] == "2"
    assert "2 * linear(start=0, end=1, steps=10" in words["r"] and "(1)" in words["r"]
    crit(torch.zeros(3), torch.ones(3), step=5)
    assert crit.weights["r"].item() == pytest.approx(2 * 0.5 + 1)


def test_a_shared_composite_is_referred_to_by_name():
    source = (
        "a = mse + 0.5*mae\n"
        "b = linear(0, 1, steps=10)*a\n"
        "c = cosine(0, 1, steps=10)*a\n"
        "b + c + watch(huber)"
    )
    text = explain(lossdsl.compile(source))
    rows = {line.split()[0]: line for line in text.split("\n\n")[2].splitlines()}
    # a's weight is the sum of two schedules; mae's is 0.5 times it, by reference
    assert "linear(start=0, end=1, steps=10" in rows["a"] and "cosine(start=0, end=1, steps=10" in rows["a"]
    assert "w(a) * 0.5" in rows["mae"] and "w(a)" in rows["mse"]
    assert "w(name): the weight of the composite 'name'" in text


def test_constant_weights_of_shared_bindings_are_numbers():
    # a0 reaches the top through 2**5 paths, each with factor 1: weight 32, by hand
    text = explain(lossdsl.compile(chain("mse", "+", 6)))
    rows = {line.split()[0]: line.split() for line in text.split("\n\n")[2].splitlines()}
    assert rows["a0"][2] == "32" and rows["a5"][2] == "1" and rows["a3"][2] == "4"


def sections(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """The tree's lines and the table's rows (split on whitespace, keyed by term name)."""
    parts = text.split("\n\n")
    return parts[1].splitlines(), {line.split()[0]: line.split() for line in parts[2].splitlines()}


def test_every_node_shows_its_kind():
    source = "d = pred - target\nmse + linear(0, 1, steps=10)*mean(abs(d)) + 0.1*mean(d^2) - 2*l1"
    tree, rows = sections(explain(lossdsl.compile(source)))
    assert tree[0] == "add (+ + + -) : loss"
    for line in (
        "|-- mse  (term mse) : loss",
        "|   |-- linear(start=0, end=1, steps=10, delay=0) : schedule",
        "|   `-- mean  (logged as mean) : loss",
        "|       `-- abs : tensor, shaped by pred, target at the call",
        "|   |-- 0.1 : const",
        "    `-- l1  (term l1) : loss",
        # d is a tensor binding used twice: drawn once, under its own heading
        "d =  (binding, used 2 times)",
        "`-- add (+ -) : tensor, shaped by pred, target at the call",
        "    |-- pred  (input) : tensor",
        "    `-- target  (input) : tensor",
    ):
        assert line in tree, line
    assert sum(line.endswith("-- d  (shared, shown below)") for line in tree) == 2
    kinds = {line.rsplit(" : ", 1)[1].split(",")[0] for line in tree if " : " in line}
    assert kinds == {"const", "schedule", "loss", "tensor"}
    # the inline terms: d total / d mean = the schedule, d total / d mean_2 = 0.1; l1: -2
    assert rows["mean"][1] == "(expression)" and rows["mean"][2].startswith("linear(start=0,")
    assert rows["mean_2"][1:3] == ["(expression)", "0.1"] and rows["mean_2"][-2:] == ["pred,", "target"]
    assert rows["l1"][1:3] == ["l1", "-2"]


def test_a_deep_program_is_drawn_without_recursion():
    # 80 bindings, each used once inside the next: drawn in place, 240 operations deep
    lines = ["a0 = mse"] + [f"a{i} = log(a{i - 1}) + mae" for i in range(1, 80)]
    crit = lossdsl.compile("\n".join(lines + ["a79"]))
    depth = len(inspect.stack(0))
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 40)  # far fewer frames than the program has levels
    try:
        text = explain(crit)
    finally:
        sys.setrecursionlimit(limit)
    tree, rows = sections(text)
    assert sum(" =  (named) : loss" in line for line in tree) == 79
    (deepest,) = [line for line in tree if line.endswith("`-- a0  (term mse) : loss")]
    # a1 is 3 * 78 operations below the top (a Named, an add and a log a level); a0 3 more
    assert len(deepest) - len(deepest.lstrip(" |`-")) == 4 * (3 * 78 + 3)
    # mae (in a1) weighs what a1 weighs, and a1 sits inside a log
    assert rows["mae"][2] == "w(a1)" and " ".join(rows["a1"][2:7]) == "depends on the term values"
    assert rows["a79"][2] == "1" and rows["mae_79"][2] == "1"


def test_divided_weights_are_written_as_numbers_or_reciprocals():
    # d total / d mae = -1/2 (by hand); d total / d mae_2 = 1 / linear(...)
    crit = lossdsl.compile("size(pred, 0)*mse - mae/2 + mae/linear(1, 2, steps=4)")
    _, rows = sections(explain(crit))
    assert rows["mae"][2] == "-0.5"
    assert rows["mae_2"][2] == "1/linear(start=1,"
    crit(torch.zeros(3), torch.ones(3), step=2)
    assert crit.weights["mae"].item() == pytest.approx(-0.5)
    assert crit.weights["mae_2"].item() == pytest.approx(1 / 1.5)  # linear(1, 2) halfway
