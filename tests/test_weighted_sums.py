"""Weighted sums of terms, with constant and scheduled weights: values and gradients against
the formula written out here."""

import math

import pytest
import torch
import torch.nn.functional as F

import lossdsl

TOL = dict(rtol=1e-10, atol=1e-10)


def _data(seed=0, shape=(3, 7, 2), dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(shape, generator=gen, dtype=dtype).requires_grad_()
    return pred, torch.randn(shape, generator=gen, dtype=dtype)


def _temporal(e):
    return torch.diff(e, dim=1).abs().mean()


CASES = [
    ("0.7*huber(delta=1) + 0.3*temporal_diff",
     lambda p, t, s: 0.7 * F.huber_loss(p, t) + 0.3 * _temporal(p - t)),
    ("mse - mae/4 + 2 - (0.5*smooth_l1(beta=0.5) + 1)",
     lambda p, t, s: F.mse_loss(p, t) - F.l1_loss(p, t) / 4 + 1 - 0.5 * F.smooth_l1_loss(p, t, beta=0.5)),
    ("3*(mse + 2*(mae - huber))",
     lambda p, t, s: 3 * (F.mse_loss(p, t) + 2 * (F.l1_loss(p, t) - F.huber_loss(p, t)))),
    ("linear(0, 0.1, steps=1000)*temporal_diff + 0.4*mse + cosine(1, 0, steps=100)*2*mae",
     lambda p, t, s: 0.1 * min(s / 1000, 1.0) * _temporal(p - t) + 0.4 * F.mse_loss(p, t)
     + (1 - (1 - math.cos(math.pi * min(s / 100, 1.0))) / 2) * 2 * F.l1_loss(p, t)),
    ("-mse", lambda p, t, s: -F.mse_loss(p, t)),
    ("mse + watch(mae)", lambda p, t, s: F.mse_loss(p, t)),
]


@pytest.mark.parametrize("source,formula", CASES, ids=[c[0] for c in CASES])
def test_weighted_sums_match_the_formula(source, formula):
    crit = lossdsl.compile(source)
    for seed, step in [(0, 0), (1, 37), (2, 5000)]:
        pred, target = _data(seed)
        got, want = crit(pred, target, step=step), formula(pred, target, step)
        # the schedules' values are double precision (README, Schedules): exact in float64
        torch.testing.assert_close(got, want, **TOL)
        g_got, g_want = (torch.autograd.grad(v, pred)[0] for v in (got, want))
        torch.testing.assert_close(g_got, g_want, **TOL)


def test_a_nan_in_a_watched_term_stays_out_of_the_total():
    def leaf(x):
        return x

    crit = lossdsl.compile("leaf(x=a) + watch(leaf(x=b))", terms={"leaf": leaf}, nonfinite="warn")
    total = crit(a=torch.tensor(2.0, dtype=torch.float64), b=torch.tensor(float("nan"), dtype=torch.float64))
    assert float(total) == 2.0


def test_half_precision_sums_in_float32_and_returns_the_input_dtype():
    crit = lossdsl.compile("0.7*mse + 0.3*mae")
    pred, target = _data(dtype=torch.float32)
    got = crit(pred.bfloat16(), target.bfloat16())
    assert got.dtype == torch.bfloat16
    want = 0.7 * F.mse_loss(pred.bfloat16().float(), target.bfloat16().float()) + 0.3 * F.l1_loss(
        pred.bfloat16().float(), target.bfloat16().float())
    assert float(got) == pytest.approx(float(want), rel=1e-2)


def test_a_step_on_the_meta_device_runs():
    crit = lossdsl.compile("linear(0, 1, steps=10)*mse + mae")
    crit.step = torch.zeros((), dtype=torch.long, device="meta")
    pred, target = _data()
    out = crit(pred.to("meta"), target.to("meta"))
    assert out.device.type == "meta"


def test_a_term_weighted_by_many_schedules_adds_up():
    # t is logged as a composite and its weight is a sum of 70 schedules
    schedules = " + ".join(f"linear(0, {i}, steps=10)*t" for i in range(1, 71))
    crit = lossdsl.compile(f"t = mse\n{schedules}")
    pred, target = _data()
    got = crit(pred, target, step=5)
    want = sum(0.5 * i for i in range(1, 71)) * F.mse_loss(pred, target)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)
    assert float(crit.weights["t"]) == pytest.approx(sum(0.5 * i for i in range(1, 71)), rel=1e-7)
