"""Hostile text gets its answer quickly (README "Reliability" -> "Hostile text").

Short texts that stand for huge programs (bindings used inside bindings, a binding used many
times, products of thousands of factors) and long texts built to hit a slow path (a syntax
error after 64 KiB of one name) give a ``Loss`` or a ``LossDSLError`` in time linear in the
text. Budgets are CPU seconds (other work on a loaded machine does not count), generous, and
for 64 KiB texts relative to parsing an ordinary program of the same size, which the
quadratic paths these tests guard against exceeded a hundredfold.
"""

import time

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.cli import main

LIMIT = 64 * 1024
DEPTH = 256  # operations deep, counting bindings used inside bindings


def seconds(fn) -> float:
    """CPU seconds ``fn`` takes: other processes on a loaded machine do not count."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def refused(text: str, cls=lossdsl.LossDSLError) -> lossdsl.LossDSLError:
    with pytest.raises(cls) as info:
        lossdsl.compile(text)
    return info.value


_ordinary = iter(range(10**6))


def ordinary_parse_seconds() -> float:
    """Seconds to parse an ordinary program of about 64 KiB (a new text each time: parsing
    is cached by text)."""
    text = f"mse + {next(_ordinary)}" + " + 1" * ((LIMIT - 20) // 4)
    return seconds(lambda: lossdsl.parse(text))


def within_parse_budget(fn) -> None:
    """``fn`` takes at most a few times what parsing 64 KiB takes, plus slack (compiling
    parses and then resolves; the quadratic behaviour this guards against took minutes)."""
    reference = ordinary_parse_seconds()
    took = seconds(fn)
    budget = 6 * max(reference, ordinary_parse_seconds()) + 1.5
    assert took < budget, (took, budget)


def within_torch_budget(fn, reference) -> None:
    """``fn`` takes at most a few times what ``reference``, the same work written by hand in
    torch, takes on this machine at this moment, plus slack: the quadratic paths these tests
    guard against took minutes, while a loaded CI machine can be many times slower than a
    developer's."""
    budget = 20 * min(seconds(reference), seconds(reference)) + 2.0
    took = seconds(fn)
    assert took < budget, (took, budget)


def chain(link: str, n: int, top: str = "") -> str:
    """``a0 = mse`` then ``a{i} = link`` with ``{p}`` for ``a{i-1}``, then the top line."""
    lines = ["a0 = mse"] + [f"a{i} = " + link.format(p=f"a{i - 1}") for i in range(1, n + 1)]
    return "\n".join(lines + [top or f"a{n}"])


# --- 1. bindings inside bindings: the depth limit, checked before anything recurses -------


@pytest.mark.parametrize("link", ["{p} + 1", "{p} + {p}", "exp({p})", "2*{p}", "-{p}", "{p} * mae"])
def test_a_long_chain_of_bindings_is_refused_with_a_located_error(link):
    err = refused(chain(link, 3000))
    assert "counting the bindings used inside bindings" in err.message
    assert not isinstance(err.__cause__, RecursionError)
    assert err.line is not None and err.line <= 3000 and "^" in str(err) and err.hint


def test_the_depth_limit_counts_each_binding_and_each_operation():
    # a{i} = a{i-1} + 1: the sum and the binding are two levels, on the term's one, so
    # a{n} is 1 + 2n deep: 127 links are 255 deep, 128 links are 257
    pred, target = torch.randn(6), torch.randn(6)
    crit = lossdsl.compile(chain("{p} + 1", 127))
    torch.testing.assert_close(crit(pred, target), F.mse_loss(pred, target) + 127)
    err = refused(chain("{p} + 1", 128))
    assert f"more than {DEPTH} operations" in err.message
    assert err.line == 129  # the binding a128, line 129, is the first one too deep
    # check refuses it the same way, without building the module
    with pytest.raises(lossdsl.LossDSLError, match="operations deep"):
        lossdsl.check(chain("{p} + 1", 128))


def test_a_long_chain_is_refused_quickly():
    assert seconds(lambda: refused(chain("{p} + {p}", 3000))) < 10


# --- 2. a binding used many times is one node ---------------------------------------------


def test_a_watched_binding_doubled_26_times_compiles_and_checks_quickly(capsys):
    text = chain("{p} + {p}", 25, "a25 + mae").replace("a0 = mse", "a0 = watch(mse)")
    assert len(text) < 400
    assert seconds(lambda: lossdsl.check(text)) < 5
    crit = None

    def build():
        nonlocal crit
        crit = lossdsl.compile(text + " ")  # a text not cached by check
    assert seconds(build) < 5
    pred, target = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(crit(pred, target), F.l1_loss(pred, target))
    assert crit.weights["mse"].item() == 0.0 and crit.weights["mae"].item() == 1.0
    # the command line too (it printed nothing for minutes)
    assert seconds(lambda: main(["check", text + "  "])) < 5
    assert "ok:" in capsys.readouterr().out


def test_a_binding_doubled_100_times_has_the_weights_of_its_formula():
    # a{i} = a{i-1} + a{i-1}: the total is 2^100 mse, and d total / d a{i} = 2^(100 - i)
    text = chain("{p} + {p}", 100)
    crit = None

    def build():
        nonlocal crit
        crit = lossdsl.compile(text)
    assert seconds(build) < 5
    pred, target = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(crit(pred, target), 2.0**100 * F.mse_loss(pred, target))
    weights = crit.weights
    assert weights["a0"].item() == 2.0**100  # `a0 = mse` is the term, logged as a0
    for i in (1, 50, 99, 100):
        assert weights[f"a{i}"].item() == 2.0 ** (100 - i)


def test_a_binding_squared_many_times_compiles_quickly_and_has_its_weight():
    # a{i} = a{i-1} * a{i-1}: total mse^(2^n); with mse = 1 every weight is a power of two
    text = chain("{p} * {p}", 100)
    crit = None

    def build():
        nonlocal crit
        crit = lossdsl.compile(text)
    assert seconds(build) < 5
    pred = torch.tensor([1.0, -1.0, 2.0, 0.0], dtype=torch.float64)
    target = pred + torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)  # mse = 1
    assert crit(pred, target).item() == 1.0
    weights = crit.weights
    assert weights["a0"].item() == 2.0**100  # d mse^(2^100) / d mse at mse = 1
    assert weights["a90"].item() == 2.0**10


# --- 3. long products: numbers folded once, partials in linear time -----------------------


@pytest.mark.parametrize("op", ["*", "/"])
def test_a_product_of_32766_ones_compiles_and_runs_quickly(op):
    text = "mse" + f"{op}1" * 32766
    assert len(text.encode()) == LIMIT - 1
    crit = None

    def build():
        nonlocal crit
        crit = lossdsl.compile(text)
    within_parse_budget(build)
    pred, target = torch.randn(8, 3), torch.randn(8, 3)
    within_torch_budget(lambda: crit(pred, target), lambda: F.mse_loss(pred, target))
    torch.testing.assert_close(crit(pred, target), F.mse_loss(pred, target))
    assert crit.weights["mse"].item() == 1.0


def test_a_product_of_two_terms_and_many_numbers_has_the_partials_of_its_formula():
    # mse * mae * 2 * 0.5 * 2 * 0.5 ...: d/d mse = mae and d/d mae = mse
    text = "mse*mae" + "*2*0.5" * 5000
    crit = lossdsl.compile(text)
    pred, target = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    mse, mae = F.mse_loss(pred, target), F.l1_loss(pred, target)
    torch.testing.assert_close(crit(pred, target), mse * mae)
    assert crit.weights["mse"].item() == pytest.approx(mae.item(), rel=1e-6)
    assert crit.weights["mae"].item() == pytest.approx(mse.item(), rel=1e-6)


def test_a_binding_multiplied_21000_times_runs_quickly_with_its_weight():
    n = 21000
    text = "a = mse\n" + "*".join(["a"] * n)
    crit = None

    def build():
        nonlocal crit
        crit = lossdsl.compile(text)
    within_parse_budget(build)
    pred = torch.tensor([1.0, 2.0, 3.0])
    target = pred + torch.tensor([1.0, -1.0, 1.0])  # mse = 1, so a^n = 1 and d/da = n
    within_torch_budget(lambda: crit(pred, target), lambda: F.mse_loss(pred, target) ** n)
    assert crit(pred, target).item() == 1.0
    assert crit.weights["a"].item() == n


def test_a_product_beyond_the_symbolic_weights_runs_quickly_with_its_weight():
    # 9000 different factors exp(a): the weight is swept numerically on every call, in time
    # linear in the factors. With mse = 0, d/da exp(a)^n = n exp(n a) = n.
    n = 9000
    text = "a = mse\n" + "*".join(["exp(a)"] * n)
    crit = lossdsl.compile(text)
    pred = torch.randn(4)

    def by_hand():  # the product and its derivative by the factor, factor by factor
        a = F.mse_loss(pred, pred.clone()).requires_grad_()
        total = a.new_ones(())
        for _ in range(n):
            total = total * torch.exp(a)
        torch.autograd.grad(total, a)
    within_torch_budget(lambda: crit(pred, pred.clone()), by_hand)
    assert crit(pred, pred.clone()).item() == 1.0
    assert crit.weights["a"].item() == n


def test_a_schedule_repeated_in_a_product_is_its_power():
    # a schedule's value is a Python number on the host: 3^1000 overflows to inf, as the
    # multiplications written out would, and the call reports it as a non-finite total
    pred, target = torch.randn(5), torch.randn(5)
    crit = lossdsl.compile("s = linear(3, 3, steps=1)\n" + "*".join(["s"] * 12) + "*mse")
    torch.testing.assert_close(crit(pred, target), 3.0**12 * F.mse_loss(pred, target))
    assert crit.weights["mse"].item() == 3.0**12
    crit = lossdsl.compile("s = linear(3, 3, steps=1)\n" + "*".join(["s"] * 1000) + "*mse")
    with pytest.raises(lossdsl.NonFiniteLossError):
        crit(pred, target)


def test_a_sum_of_thousands_of_numbers_runs_quickly():
    text = "exp(mse)" + "+1" * 32760
    crit = lossdsl.compile(text)
    pred, target = torch.randn(5), torch.randn(5)
    within_torch_budget(lambda: crit(pred, target), lambda: torch.exp(F.mse_loss(pred, target)) + 32760)
    torch.testing.assert_close(crit(pred, target), torch.exp(F.mse_loss(pred, target)) + 32760)


def test_numbers_in_a_product_still_refuse_division_by_zero_and_overflow():
    err = refused("mse*2/(1 - 1)*3", lossdsl.LossArgumentError)
    assert err.message == "division by zero" and (err.line, err.column) == (1, 8)
    assert "division by zero" in refused("mse/0", lossdsl.LossArgumentError).message
    assert "overflow" in refused("mse*1e300*1e300", lossdsl.LossArgumentError).message
    with pytest.raises(lossdsl.LossArgumentError, match="division by zero"):
        lossdsl.check("mse/0")  # found without building the module


# --- 4, 5. long texts: syntax errors and the size limit ------------------------------------


@pytest.mark.parametrize(
    "text, column",
    [
        ("a" * 65534 + "=)", 65536),
        ("a" * 65534 + " )", 65536),
        ("mse(" + "b" * 65530 + "=)", 65536),
        ("mse + " + "1" * 65528 + "(", 65535),
        ("mse(reduction='" + "x" * 65500, 15),
    ],
    ids=["name then =)", "name then )", "keyword", "number then (", "unterminated"],
)
def test_a_syntax_error_after_64_kib_is_reported_quickly(text, column):
    assert len(text) <= LIMIT
    caught = []

    def report():
        with pytest.raises(lossdsl.LossSyntaxError) as info:
            lossdsl.parse(text)
        caught.append(info.value)
    within_parse_budget(report)
    err = caught[0]
    assert (err.line, err.column) == (1, column)
    assert len(err.message) < 200  # the message quotes a token, not 64 KiB of one


def _crossing(text: str) -> int:
    """Index of the first character whose UTF-8 bytes end past 64 KiB (written out here)."""
    used = 0
    for i, ch in enumerate(text):
        used += len(ch.encode("utf-8", "surrogatepass"))
        if used > LIMIT:
            return i
    raise AssertionError("under the limit")


@pytest.mark.parametrize(
    "text",
    [
        "mse + " + "é" * 40000,
        "mse  #" + "a" * (LIMIT - 7) + "é",  # the last character straddles the limit
        "mse\n" + "# €€€ note\n" * 4000,
        "mse # " + "\U0001F600" * 20000,
        "mse" + " " * LIMIT,
    ],
    ids=["two-byte", "straddling", "lines of three-byte", "four-byte", "ascii"],
)
def test_the_size_error_points_at_the_character_past_the_limit(text):
    err = refused(text)
    at = _crossing(text)
    line = text.count("\n", 0, at) + 1
    column = at - (text.rfind("\n", 0, at) + 1) + 1
    assert (err.line, err.column) == (line, column)
    assert f"is {len(text.encode())} bytes long; the limit is {LIMIT} bytes" in err.message
    assert "^" in str(err) and str(LIMIT) in err.hint


def test_a_huge_text_is_refused_quickly():
    assert seconds(lambda: refused("mse + " * 2_000_000)) < 5


# --- 6. parameters that size memory have upper bounds -------------------------------------


@pytest.mark.parametrize(
    "text, written, limit",
    [
        ('balance(mse, mae, method="dwa", window=100000000)', "window=100000000", "10000"),
        ("piecewise(boundaries=[{b}], values=[{v}])*mse", "boundaries=[", "1024"),
    ],
)
def test_a_parameter_that_sizes_memory_has_an_upper_bound(text, written, limit):
    text = text.format(b=", ".join(str(i) for i in range(1, 1026)), v=", ".join(["1"] * 1026))
    err = refused(text, lossdsl.LossArgumentError)
    start, end = err.span
    assert text[start:end].startswith(written)  # the caret stands under key=value
    assert limit in err.hint


def test_the_bounds_are_inclusive():
    pred, target = torch.randn(3), torch.randn(3)
    crit = lossdsl.compile('balance(mse, mae, method="dwa", window=10000)')
    crit(pred, target)
    assert crit.balancers[0].history.shape == (20000, 2)  # the window's memory, as documented
    b = ", ".join(str(i) for i in range(1, 1025))
    v = ", ".join(str(i) for i in range(1025))
    crit = lossdsl.compile(f"piecewise(boundaries=[{b}], values=[{v}])*mse")
    torch.testing.assert_close(crit(pred, target, step=500), 500 * F.mse_loss(pred, target))


def test_a_balance_combines_at_most_256_terms():
    ok = "a = mse\nbalance(" + ", ".join(["a"] * 256) + ', method="ema")'
    assert lossdsl.compile(ok).balancers[0] is not None
    text = "a = mse\nbalance(" + ", ".join(["a"] * 300) + ', method="dwa", window=10000)'
    err = refused(text, lossdsl.LossArgumentError)
    assert "at most 256 terms, got 300" in err.message
    assert err.column == len("balance(") + 256 * len("a, ") + 1  # under the 257th operand
