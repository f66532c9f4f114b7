"""Values that leave the finite range between the terms (DESIGN.md §8): a schedule at 0 under a
division or a log, a constant beyond the inputs' dtype, a term that overflows in the fused
pass. Each gives inf or NaN that the non-finite policy handles, never a Python exception.

References are written here in float64 (``torch`` on float64 tensors follows IEEE: ``1/0`` is
inf, ``log(0)`` is -inf, ``sqrt(-1)`` is NaN).
"""

import logging
import math

import pytest
import torch
import torch.nn.functional as F

import lossdsl

POLICIES = ["raise", "warn", "zero_term", "skip_batch"]
F64 = torch.float64


def _data(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(4, 6, generator=gen, dtype=F64)
    target = torch.randn(4, 6, generator=gen, dtype=F64)
    return pred.to(dtype).requires_grad_(), target.to(dtype)


def _ieee(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=F64)


def _mse(p, t):
    return F.mse_loss(p.detach().double(), t.double())


def _mae(p, t):
    return F.l1_loss(p.detach().double(), t.double())


# (source, step, float64 formula of the total at that step for float32 inputs)
PROGRAMS = [
    ("mse / linear(0, 1, steps=10)", 0, lambda p, t: _mse(p, t) / _ieee(0.0)),
    ("mse + log(linear(0, 1, steps=10))", 0, lambda p, t: _mse(p, t) + torch.log(_ieee(0.0))),
    ("max(mse, 1e300)", 0, lambda p, t: _ieee(math.inf)),  # 1e300 is beyond float32: inf
    ("clamp(mse, max=1e300)", 0, lambda p, t: _mse(p, t)),  # a bound beyond float32: no bound
    # the product of two terms runs the plan as written, and its weights come from powers
    ("mse * mae / linear(0, 1, steps=10)", 0, lambda p, t: _mse(p, t) * _mae(p, t) / _ieee(0.0)),
    ("mse * (1 / linear(0, 1, steps=10))", 0, lambda p, t: _mse(p, t) * (1 / _ieee(0.0))),
    ("mse * linear(-1, 1, steps=10)^0.5", 0, lambda p, t: _mse(p, t) * _ieee(-1.0) ** 0.5),
    ("mse * sqrt(linear(-1, 1, steps=10))", 0, lambda p, t: _mse(p, t) * torch.sqrt(_ieee(-1.0))),
    ("mse * exp(linear(0, 1000, steps=1))", 1, lambda p, t: _mse(p, t) * torch.exp(_ieee(1000.0))),
    ("1e300*mse*1e-300 + mae", 0, lambda p, t: _mse(p, t) + _mae(p, t)),  # folded: 1 * mse
]


def test_constants_whose_product_overflows_are_refused_when_compiling():
    # numbers of a product are folded into one coefficient, which must be a finite double
    with pytest.raises(lossdsl.LossArgumentError, match="overflow") as info:
        lossdsl.compile("1e300*1e300*mse + mae")
    assert info.value.column == 1


def _same(got: torch.Tensor, want: torch.Tensor, rtol=1e-6) -> None:
    got, want = float(got.detach()), float(want)
    if math.isnan(want) or math.isinf(want):
        assert (math.isnan(got) and math.isnan(want)) or got == want, (got, want)
    else:
        assert got == pytest.approx(want, rel=rtol)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("source,step,formula", PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_a_non_finite_combination_is_left_to_the_policy(source, step, formula, policy, caplog):
    pred, target = _data()
    want = formula(pred, target)
    crit = lossdsl.compile(source, nonfinite=policy)
    finite = math.isfinite(float(want))
    if policy == "raise" and not finite:
        with pytest.raises(lossdsl.NonFiniteLossError) as info:
            crit(pred, target, step=step)
        assert isinstance(info.value, lossdsl.LossDSLError)
        assert f"at step {step}" in str(info.value)
        return
    with caplog.at_level(logging.WARNING, logger="lossdsl"):
        total = crit(pred, target, step=step)
    warned = [r for r in caplog.records if r.name == "lossdsl"]
    assert total.dtype == torch.float32
    if policy == "skip_batch" and not finite:
        # a zero loss whose gradient is exactly zero
        assert float(total) == 0.0
        total.backward()
        assert torch.equal(pred.grad, torch.zeros_like(pred))
        return
    # zero_term zeroes bad terms, not a total that a combination of finite terms made
    _same(total, want)
    assert bool(warned) == (policy == "warn" and not finite)
    if finite:
        total.backward()
        assert torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("source,step,formula", PROGRAMS[:2] + PROGRAMS[4:5], ids=["div", "log", "product"])
def test_the_same_programs_are_finite_once_the_schedule_has_moved(source, step, formula):
    pred, target = _data()
    crit = lossdsl.compile(source)
    total = crit(pred, target, step=5)  # linear(0, 1, steps=10) = 0.5
    mse, mae = _mse(pred, target), _mae(pred, target)
    want = {"div": mse / 0.5, "log": mse + math.log(0.5), "product": mse * mae / 0.5}
    key = {PROGRAMS[0][0]: "div", PROGRAMS[1][0]: "log", PROGRAMS[4][0]: "product"}[source]
    assert float(total) == pytest.approx(float(want[key]), rel=1e-6)


def test_a_bound_within_float64_is_exact_in_a_float64_loss():
    pred, target = _data(F64)
    crit = lossdsl.compile("max(mse, 1e300) + clamp(mae, max=1e300)")
    total = crit(pred, target)
    assert float(total) == 1e300 + float(_mae(pred, target))
    assert float(crit.weights["mse"]) == 0.0 and float(crit.weights["mae"]) == 1.0


def test_weights_of_a_non_finite_schedule_follow_ieee():
    pred, target = _data()
    crit = lossdsl.compile("mse + linear(0, 1e300, steps=10)*1e300*mae", nonfinite="warn")
    crit(pred, target, step=5)  # the schedule's 5e299 times 1e300 overflows: inf
    assert float(crit.weights["mae"]) == math.inf
    assert float(crit.weights["mse"]) == 1.0  # not 1 + 0*inf = NaN


# --- fuse=True: one overflowing term stays one --------------------------------------------

FUSED = [
    ("mse + mae", {"mse": math.inf}),
    ("0.5*mse + 2*mae + huber", {"mse": math.inf}),
    ("mse + 2*mse + mae", {"mse": math.inf, "mse_2": math.inf}),
    ("r = mse + mae\nr + huber", {"mse": math.inf, "r": math.inf}),
    ("mae + watch(mse)", {"mse": math.inf}),
]


def _overflowing():
    # e^2 = 1e40 overflows float32; |e| does not
    pred = torch.tensor([1e20, -1e20, 5e19], requires_grad=True)
    return pred, torch.zeros(3)


def _finite_reference(name, p):
    e = p.detach().double()
    huber = torch.where(e.abs() <= 1, 0.5 * e * e, e.abs() - 0.5).mean()
    return {"mae": e.abs().mean(), "huber": huber}.get(name)


@pytest.mark.parametrize("source,infinite", FUSED, ids=[f[0].replace("\n", "; ") for f in FUSED])
def test_one_overflowing_term_leaves_the_others_finite(source, infinite):
    crit = lossdsl.compile(source, nonfinite="warn")
    pred, target = _overflowing()
    crit(pred, target)
    for name, value in ((k, float(v)) for k, v in crit.terms.items()):
        if name in infinite:
            assert value == infinite[name], name
        else:
            want = float(_finite_reference(name, _overflowing()[0]))
            assert value == pytest.approx(want, rel=1e-6), name


def test_the_error_names_only_the_overflowing_term():
    crit = lossdsl.compile("mse + mae")
    pred, target = _overflowing()
    with pytest.raises(lossdsl.NonFiniteLossError) as info:
        crit(pred, target)
    assert info.value.term == "mse"
    assert "term 'mse' is inf" in str(info.value) and "'mae'" not in str(info.value)
