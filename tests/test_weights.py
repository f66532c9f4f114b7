"""Effective weights ``d total / d term``, derived symbolically when the program is built
(DESIGN.md §9), against autograd; schedules on the host and on tensors against the formulas."""

import math

import pytest
import torch

import lossdsl
from lossdsl.language.functions import OPERATORS
from lossdsl.language.schedules import SCHEDULES
from lossdsl.runtime.steps import TENSOR, ScheduleValue

F64 = torch.float64


def leaf(x):
    """A term whose value is its input: autograd then gives d total / d term directly."""
    return x


def _leaves(n, seed):
    g = torch.Generator().manual_seed(seed)
    return {f"x{i}": (torch.rand((), generator=g, dtype=F64) + 0.5).requires_grad_() for i in range(n)}


def _check_against_autograd(source, n, seed=0, step=3):
    crit = lossdsl.compile(source, terms={"leaf": leaf})
    xs = _leaves(n, seed)
    total = crit(step=step, **xs)
    grads = torch.autograd.grad(total, list(xs.values()), allow_unused=True)
    want = {f"leaf(x=x{i})": 0.0 if g is None else float(g) for i, g in enumerate(grads)}
    by_input = {}  # each input is read by one term
    for item, name in zip(lossdsl.check(source, terms={"leaf": leaf}).logged, crit.term_names):
        route = getattr(item.node, "routes", None)
        if route:
            assert f"leaf(x={route[0].path[0]})" not in by_input
            by_input[f"leaf(x={route[0].path[0]})"] = name
    for key, name in by_input.items():
        assert float(crit.weights[name]) == pytest.approx(want[key], rel=1e-6, abs=1e-9), (source, name)
    return crit


PROGRAMS = [
    # (source, number of inputs)
    ("leaf(x=x0)/leaf(x=x1) + 2*leaf(x=x3)*leaf(x=x2)/3", 4),
    ("(leaf(x=x0) + leaf(x=x1)) * (leaf(x=x2) - 0.5*leaf(x=x3))", 4),
    ("leaf(x=x0) / (2 * leaf(x=x1) * leaf(x=x2))", 3),
    ("-leaf(x=x0) + 4 / leaf(x=x1)", 2),
    ("linear(0, 1, steps=10) * (leaf(x=x0) + 3*leaf(x=x1))", 2),
    ("cosine(1, 0, steps=8) * leaf(x=x0) * leaf(x=x1) + exp(leaf(x=x2))", 3),
    ("sqrt(leaf(x=x0)) * log(leaf(x=x1) + leaf(x=x2))", 3),
    ("leaf(x=x0)^leaf(x=x1) + abs(leaf(x=x2) - 1)", 3),
    ("max(leaf(x=x0), leaf(x=x1)) * min(leaf(x=x2), 0.7)", 3),
    ('0.5*balance(leaf(x=x0), leaf(x=x1), method="ema") + leaf(x=x2)', 3),
    ('linear(0, 2, steps=10) * balance(leaf(x=x0), leaf(x=x1), method="uncertainty")', 2),
    ('balance(leaf(x=x0), leaf(x=x1)*leaf(x=x2), method="ema")', 3),
    ("a = leaf(x=x0) + leaf(x=x1)\nb = a * leaf(x=x2)\nb / a + b", 3),
    # a binding repeated in a product, multiplying and dividing, with numbers folded
    ("a = leaf(x=x0)\na*a*2*a/a*leaf(x=x1)/4*a/leaf(x=x2)", 3),
    ("a = leaf(x=x0)\nb = a*a\nc = b*b*a\nc*c/b + a", 1),
]


@pytest.mark.parametrize("source,n", PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_weights_equal_autograd(source, n):
    _check_against_autograd(source, n)


def test_constant_weights_fold_at_compile_time():
    crit = lossdsl.compile("(0.5*mse + mae/4) * 3 - 2*(mae - mse)")
    assert crit.term_names == ["mse", "mae", "mae_2", "mse_2"]
    assert crit.program.constant_weights == (1.5, 0.75, -2.0, 2.0)
    assert [float(w) for w in crit.weights.values()] == [1.5, 0.75, -2.0, 2.0]
    # nothing is computed per call for them: the graph returns no weights
    assert "weights" not in crit.program.code


def test_balance_at_the_root_hands_over_its_own_weights():
    crit = lossdsl.compile('balance(mse, mae, method="ema")')
    pred, target = torch.randn(6), torch.randn(6)
    crit(pred, target)
    mse, mae = float(torch.mean((pred - target) ** 2)), float(torch.mean((pred - target).abs()))
    # first call of the EMA balancer: the bias-corrected mean is the loss itself
    assert float(crit.weights["mse"]) == pytest.approx(1 / mse, rel=1e-5)
    assert float(crit.weights["mae"]) == pytest.approx(1 / mae, rel=1e-5)


def test_a_term_multiplied_by_many_others():
    # t's weight is the sum of the 70 other terms' values
    others = " + ".join(f"t*leaf(x=x{i})" for i in range(1, 71))
    _check_against_autograd(f"t = leaf(x=x0)\n{others}", 71)


def test_a_product_of_many_factors():
    # 70 different factors: every weight is the product of the other 69
    source = "*".join(f"leaf(x=x{i})" for i in range(70))
    _check_against_autograd(source, 70)


class Counted(float):
    """A number that counts the multiplications and divisions made with it."""

    ops = 0

    def _count(self, result):
        Counted.ops += 1
        return Counted(result)

    def __mul__(self, other):
        return self._count(float(self) * float(other))

    __rmul__ = __mul__

    def __truediv__(self, other):
        return self._count(float(self) / float(other))

    def __rtruediv__(self, other):
        return self._count(float(other) / float(self))

    def __neg__(self):
        return Counted(-float(self))


def test_product_partials_take_linear_work_and_match_the_formula():
    n = 3000
    values = [Counted(1.0 + (i % 7) / 8) for i in range(n)]
    values[5] = Counted(0.0)  # a zero operand: no division by it
    ops_ = tuple("/" if i % 3 == 0 else "*" for i in range(1, n))
    Counted.ops = 0
    got = OPERATORS["multiply"].grad(tuple(values), None, ops=ops_)
    assert Counted.ops <= 6 * n  # the all-pairs way took n^2 = 9,000,000
    # d/dx_5 is the product of the others; every other partial has the factor x_5 = 0
    sign = ("*",) + ops_
    rest = 1.0
    for i, (v, op) in enumerate(zip(values, sign)):
        if i != 5:
            rest = rest * float(v) if op == "*" else rest / float(v)
    assert float(got[5]) == pytest.approx(rest, rel=1e-9)
    assert all(float(g) == 0.0 for i, g in enumerate(got) if i != 5)


SCHEDULE_CASES = [
    ("linear", dict(start=0.0, end=0.1, steps=1000.0, delay=0.0),
     lambda s: 0.1 * min(max(s / 1000, 0.0), 1.0)),
    ("linear", dict(start=2.0, end=-1.0, steps=40.0, delay=10.0),
     lambda s: 2 - 3 * min(max((s - 10) / 40, 0.0), 1.0)),
    ("cosine", dict(start=1.0, end=0.1, steps=300.0, delay=0.0),
     lambda s: 1 - 0.9 * (1 - math.cos(math.pi * min(s / 300, 1.0))) / 2),
    ("piecewise", dict(boundaries=[10.0, 20.5], values=[1.0, 0.5, 0.1]),
     lambda s: 1.0 if s < 10 else 0.5 if s < 20.5 else 0.1),
    ("cyclic", dict(period=7.0, ratio=0.5, low=0.1, high=0.9),
     lambda s: 0.1 + 0.8 * min((s % 7) / 7 / 0.5, 1.0)),
    ("cyclic", dict(period=2.5, ratio=1.0, low=0.0, high=1.0), lambda s: (s % 2.5) / 2.5),
    ("after", dict(steps=50.0), lambda s: float(s >= 50)),
]


@pytest.mark.parametrize("name,params,formula", SCHEDULE_CASES, ids=[c[0] for c in SCHEDULE_CASES])
def test_host_and_tensor_schedules_agree_with_the_formula(name, params, formula):
    run = ScheduleValue(SCHEDULES[name], params)
    for s in [0, 1, 3, 9, 10, 11, 20, 21, 49, 50, 77, 150, 299, 300, 1000, 12345, 2**24 + 5]:
        want = formula(s)  # in double precision: a float64 loss gets its weights exactly
        on_host = float(run(torch.tensor(s)))  # eager, CPU step: computed on the host
        on_device = SCHEDULES[name].value(torch.tensor(s), params, TENSOR)  # the traced form: a tensor
        assert on_device.dtype == torch.float64
        assert on_host == pytest.approx(want, rel=1e-13, abs=1e-15), s
        assert on_host == pytest.approx(float(on_device), rel=1e-13, abs=1e-15), s
