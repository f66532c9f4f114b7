"""Calls that must leave a balancer's state alone (DESIGN.md §6, §8): under
``nonfinite="zero_term"``/``"skip_batch"`` a call where one of a balancer's terms is NaN or
infinite, and any call with gradients disabled (a validation call, as for the monitor).

The reference is the same loss run on the same rows without the bad call: every buffer of the
balancer, and every later total, weight and gradient, must be bit-identical to it. The term
values are entries of ``pred`` (custom terms), so a NaN entry makes exactly one term bad.
"""

import math

import pytest
import torch

import lossdsl

STATEFUL = {
    "ema": {"beta": 0.8},
    "dwa": {"window": 2},
    "cov": {},
    "softadapt": {"beta": 1.0},
    "relobralo": {"expected_rho": 0.5, "alpha": 0.7},  # rho drawn: the generator must not move
}
POLICIES = ["zero_term", "skip_batch"]


def first(pred):
    """Entry 0 of pred."""
    return pred[0]


def second(pred):
    """Entry 1 of pred."""
    return pred[1]


def third(pred):
    """Entry 2 of pred."""
    return pred[2]


PICK = {"first": first, "second": second, "third": third}


def _compile(method: str, policy: str, outer: str = "{}") -> lossdsl.Loss:
    extra = "".join(f", {k}={v}" for k, v in STATEFUL[method].items())
    source = outer.format(f'balance(first, second, method="{method}"{extra})')
    return lossdsl.compile(source, terms=PICK, nonfinite=policy)


def _rows(steps: int) -> list[list[float]]:
    """Positive, varying values for three terms."""
    return [[1.5 + math.sin(0.9 * t + i) for i in range(3)] for t in range(steps)]


def _call(crit, row):
    """One training call; returns (total, d total / d pred), both detached."""
    pred = torch.tensor(row, dtype=torch.float64, requires_grad=True)
    total = crit(pred)
    (grad,) = torch.autograd.grad(total, pred)
    return total.detach(), grad


def _state(crit) -> dict:
    return {k: v.clone() for k, v in crit.balancers.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("method", list(STATEFUL))
def test_a_bad_term_leaves_the_state_as_if_the_call_was_not_made(method, policy):
    rows = _rows(8)
    clean, crit = _compile(method, policy), _compile(method, policy)
    for row in rows[:4]:
        _call(clean, row)
        _call(crit, row)
    before = _state(crit)
    bad = [rows[4][0], float("nan"), rows[4][2]]  # the second term is NaN
    total, grad = _call(crit, bad)
    assert torch.isfinite(total) and torch.isfinite(grad).all()
    if policy == "skip_batch":
        assert float(total) == 0.0 and torch.equal(grad, torch.zeros(3, dtype=torch.float64))
    else:  # the good term's contribution remains, with a finite weight
        assert float(total) != 0.0 and grad[1] == 0.0 and math.isfinite(float(crit.weights["first"]))
    assert torch.isnan(crit.terms["second"])  # reported raw
    assert _same(_state(crit), before)
    # and the run goes on exactly as the run that never saw that call
    for row in rows[4:]:
        want, got = _call(clean, row), _call(crit, row)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert all(torch.equal(crit.weights[n], clean.weights[n]) for n in crit.term_names)
    assert _same(_state(crit), _state(clean))


@pytest.mark.parametrize("method", list(STATEFUL))
def test_a_bad_first_call_gives_a_finite_loss_and_no_state(method):
    crit = _compile(method, "zero_term")
    fresh = _state(crit)
    total, grad = _call(crit, [2.0, float("inf"), 1.0])
    assert torch.isfinite(total) and torch.isfinite(grad).all() and grad[1] == 0.0
    assert _same(_state(crit), fresh)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_bad_term_outside_the_balancer_does_not_stop_its_update(policy):
    # The balancer weighs first and second only; third is bad. Its statistics advance as in a
    # run where third is fine (under skip_batch the call still returns 0: documented).
    rows = _rows(5)
    crit = _compile("ema", policy, outer="{} + third")
    clean = _compile("ema", policy, outer="{} + third")
    for row in rows:
        _call(clean, row)
        total, _ = _call(crit, row[:2] + [float("nan")])
        assert torch.isfinite(total)
    assert _same(_state(crit), _state(clean))
    # and the EMA is the formula's over every row: m = sum beta^(T-t) (1 - beta) L_t
    beta = STATEFUL["ema"]["beta"]
    want = [sum(beta ** (len(rows) - 1 - t) * (1 - beta) * row[i] for t, row in enumerate(rows)) for i in range(2)]
    assert crit.balancers[0].ema.tolist() == pytest.approx(want, rel=1e-6)


def test_a_bad_term_inside_a_composite_argument_counts_as_the_balancers():
    # balance(first + third, second): third is one of its terms through the sum
    crit = lossdsl.compile('balance(first + third, second, method="ema")', terms=PICK, nonfinite="zero_term")
    _call(crit, [1.0, 2.0, 3.0])
    before = _state(crit)
    total, _ = _call(crit, [1.0, 2.0, float("nan")])
    assert torch.isfinite(total) and _same(_state(crit), before)


def test_under_raise_and_warn_a_nan_call_also_leaves_the_state_alone():
    crit = _compile("relobralo", "warn")
    clean = _compile("relobralo", "warn")
    rows = _rows(6)
    for row in rows[:3]:
        _call(crit, row)
        _call(clean, row)
    before = _state(crit)
    pred = torch.tensor([1.0, float("nan"), 1.0], dtype=torch.float64)
    assert math.isnan(float(crit(pred)))
    assert _same(_state(crit), before)  # the random draw included
    for row in rows[3:]:
        assert torch.equal(_call(crit, row)[0], _call(clean, row)[0])


@pytest.mark.parametrize("method", list(STATEFUL))
def test_a_call_without_gradients_reads_the_state_without_changing_it(method):
    rows = _rows(6)
    crit, clean = _compile(method, "raise"), _compile(method, "raise")
    for row in rows[:3]:
        _call(crit, row)
        _call(clean, row)
    before = _state(crit)
    with torch.no_grad():  # still in training mode
        total = crit(torch.tensor([5.0, 0.1, 1.0], dtype=torch.float64))
    assert torch.isfinite(total) and _same(_state(crit), before)
    for row in rows[3:]:
        assert torch.equal(_call(crit, row)[0], _call(clean, row)[0])


def test_under_torch_compile_a_refused_call_matches_eager():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    eager, crit = _compile("relobralo", "zero_term"), _compile("relobralo", "zero_term")
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(crit, backend=counter, fullgraph=True)
    rows = _rows(5)
    rows[2] = [rows[2][0], float("nan"), rows[2][2]]
    for row in rows:
        want, got = _call(eager, row), _call(compiled, row)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert _same(_state(crit), _state(eager)) and int(crit.balancers[0].count) == 4
    assert counter.frame_count == 1
