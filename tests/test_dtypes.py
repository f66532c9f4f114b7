"""Dtypes (DESIGN.md §9): ``.double()``, ``.half()``, ``.bfloat16()`` and ``.to(dtype)`` work
for every program; the total, ``crit.terms`` and ``crit.weights`` are in the terms' dtype (a
float64 loss has float64 weights, exact to 1e-12); half-precision terms combine in float32.

References are the formulas written out here in float64 with torch.nn.functional; the
effective weights are also checked against ``torch.autograd.grad`` of the formula's total
with respect to its terms.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import lossdsl

F64 = torch.float64
EPS = 1e-8  # the balancers' default eps


def _data(dtype=F64, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(6, 5, generator=gen, dtype=F64) * scale
    target = torch.randn(6, 5, generator=gen, dtype=F64)
    return pred.to(dtype).requires_grad_(), target.to(dtype)


def _terms(p, t):
    return {"mse": F.mse_loss(p, t), "mae": F.l1_loss(p, t), "huber": F.huber_loss(p, t)}


def _relobralo(a, b):
    """The first call's weights: lhat with L(t') = L(t); rho is 0 or 1 (a draw), lambda(-1) = 1."""
    lhat = 2 * torch.softmax(torch.stack([a / (0.1 * a + EPS), b / (0.1 * b + EPS)]), 0)
    return [0.999 + 0.001 * lhat, lhat]  # rho = 1, rho = 0


# source -> the total of the first call at step 3, from float64 terms (balancer weights detached)
PROGRAMS = {
    "0.7*huber(delta=1) + 0.3*mse": lambda T: 0.7 * T["huber"] + 0.3 * T["mse"],
    "mse + linear(0, 1, steps=7)*mae": lambda T: T["mse"] + (3 / 7) * T["mae"],
    "log(mse) + mae*huber": lambda T: torch.log(T["mse"]) + T["mae"] * T["huber"],
    'mse + balance(mae, huber, method="ema")': lambda T: T["mse"] + sum(
        T[k] / (T[k].detach() + EPS) for k in ("mae", "huber")),
    'mse + balance(mae, huber, method="uncertainty")': lambda T: T["mse"] + 0.5 * T["mae"] + 0.5 * T["huber"],
    '2*balance(mae, huber, method="dwa")': lambda T: 2 * (T["mae"] + T["huber"]),
    'mse + balance(mae, huber, method="cov")': lambda T: T["mse"] + sum(
        0.5 * T[k] / (T[k].detach() + EPS) for k in ("mae", "huber")),
    'mse + balance(mae, huber, method="softadapt")': lambda T: T["mse"] + 0.5 * T["mae"] + 0.5 * T["huber"],
}
RELOBRALO = 'mse + balance(mae, huber, method="relobralo")'
CONVERSIONS = {
    "double": lambda m: m.double(),
    "half": lambda m: m.half(),
    "bfloat16": lambda m: m.bfloat16(),
    "to(float64)": lambda m: m.to(torch.float64),
}
INPUTS = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _reference(source, p, t):
    T = {k: v for k, v in _terms(p, t).items()}
    if source == RELOBRALO:
        return None, T
    return PROGRAMS[source](T), T


@pytest.mark.parametrize("dtype", INPUTS, ids=[str(d)[6:] for d in INPUTS])
@pytest.mark.parametrize("convert", list(CONVERSIONS))
@pytest.mark.parametrize("source", [*PROGRAMS, RELOBRALO])
def test_every_program_runs_after_a_dtype_conversion(source, convert, dtype):
    crit = CONVERSIONS[convert](lossdsl.compile(source))
    pred, target = _data(dtype)
    total = crit(pred, target, step=3)
    assert total.dtype == dtype and total.shape == ()
    total.backward()
    assert pred.grad.dtype == dtype and torch.isfinite(pred.grad).all()
    wide = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    assert all(v.dtype == wide for v in crit.terms.values())
    assert all(w.dtype == wide for w in crit.weights.values())
    # the float64 formula on the same (rounded) inputs
    p64 = pred.detach().double().requires_grad_()
    want, T = _reference(source, p64, target.double())
    if want is None:  # relobralo: check the weights it reports against its formula
        options = _relobralo(T["mae"].detach(), T["huber"].detach())
        got = torch.stack([crit.weights["mae"], crit.weights["huber"]]).double()
        rtol = 1e-10 if dtype == F64 and convert in ("double", "to(float64)") else 1e-2
        assert any(torch.allclose(got, o, rtol=rtol, atol=0) for o in options)
        want = T["mse"] + sum(w * T[k] for w, k in zip(got, ("mae", "huber")))
    (want_grad,) = torch.autograd.grad(want, p64)
    if dtype == F64 and convert in ("double", "to(float64)"):
        torch.testing.assert_close(total.detach(), want.detach(), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(pred.grad, want_grad, rtol=1e-10, atol=1e-10)
    else:  # float32 (or half) state or inputs: close at their precision
        rtol = 1e-5 if dtype in (F64, torch.float32) and convert in ("double", "to(float64)") else 3e-2
        assert float(total.detach()) == pytest.approx(float(want.detach()), rel=rtol, abs=rtol)
        torch.testing.assert_close(pred.grad.double(), want_grad, rtol=rtol, atol=rtol * float(want_grad.abs().max()))


@pytest.mark.parametrize("convert", [None, "double"])
def test_float64_weights_are_exact_and_equal_the_gradient_of_the_total(convert):
    cases = {
        "0.7*huber": (lambda T: 0.7 * T["huber"], ["huber"]),
        "mse*mae": (lambda T: T["mse"] * T["mae"], ["mse", "mae"]),
        "log(mse) + 0.3*linear(0, 1, steps=7)*mae + huber/mae": (  # the second mae is mae_2
            lambda T: torch.log(T["mse"]) + 0.3 * (3 / 7) * T["mae"] + T["huber"] / T["mae_2"],
            ["mse", "mae", "huber", "mae_2"],
        ),
        'mse + 3*balance(mae, huber, method="ema")': (
            lambda T: T["mse"] + 3 * sum(T[k] / (T[k].detach() + EPS) for k in ("mae", "huber")),
            ["mse", "mae", "huber"],
        ),
    }
    for source, (formula, names) in cases.items():
        crit = lossdsl.compile(source)
        if convert:
            crit = crit.double()
        pred, target = _data(F64, seed=1)
        crit(pred, target, step=3)
        T = {k: v.detach().requires_grad_() for k, v in _terms(pred.detach(), target).items()}
        T["mae_2"] = T["mae"].detach().clone().requires_grad_()
        grads = torch.autograd.grad(formula(T), [T[n] for n in names])
        for name, g in zip(names, grads):
            w = crit.weights[name]
            assert w.dtype == F64, (source, name)
            assert float(w) == pytest.approx(float(g), rel=1e-12, abs=1e-12), (source, name)


def test_the_constant_weight_is_the_number_written():
    crit = lossdsl.compile("0.7*huber + 0.3*mse")
    crit(*_data(F64))
    assert crit.weights["huber"].item() == 0.7 and crit.weights["mse"].item() == 0.3
    crit.half().float()  # a round trip through half precision does not round them
    crit(*_data(torch.float32))
    assert crit.weights["huber"].item() == float(torch.tensor(0.7, dtype=torch.float32))
    crit(*_data(F64))
    assert crit.weights["huber"].item() == 0.7


# --- half precision combines in float32 -----------------------------------------------------

# (mse + 255)(mae + 255) - 65025 = mse*mae + 255 (mse + mae): in half precision the product
# (about 66000) overflows float16 and loses its last digits in bfloat16
CANCELLING = "(mse + 255)*(mae + 255) - 65025 + log(huber) + sqrt(mae) + max(huber, 0.1*mse)"


def _cancelling(T):
    return (
        (T["mse"] + 255) * (T["mae"] + 255) - 65025 + torch.log(T["huber"]) + torch.sqrt(T["mae"])
        + torch.maximum(T["huber"], 0.1 * T["mse"])
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_non_linear_programs_combine_in_float32(dtype):
    pred, target = _data(dtype, seed=2, scale=1.7)
    crit = lossdsl.compile(CANCELLING)
    total = crit(pred, target)
    assert total.dtype == dtype
    total.backward()
    p64 = pred.detach().double().requires_grad_()
    T = _terms(p64, target.double())
    want = _cancelling(T)
    (want_grad,) = torch.autograd.grad(want, p64)
    # one rounding of the total to half precision (and the terms' own), not of each step
    assert float(total.detach()) == pytest.approx(float(want.detach()), rel=2 ** -7)
    torch.testing.assert_close(pred.grad.double(), want_grad, rtol=2e-2, atol=2e-2 * float(want_grad.abs().max()))
    # the weights are float32: d total / d mse = mae + 255 (the mse inside max is mse_2)
    assert crit.weights["mse"].dtype == torch.float32
    assert float(crit.weights["mse"]) == pytest.approx(float(T["mae"].detach()) + 255, rel=1e-2)
    # the same formula combined in half precision is far off (or inf): the test can tell
    h = {k: v.detach().to(dtype) for k, v in T.items()}
    in_half = (h["mse"] + 255) * (h["mae"] + 255) - 65025
    exact = (T["mse"] + 255) * (T["mae"] + 255) - 65025
    assert not math.isclose(float(in_half), float(exact.detach()), rel_tol=0.02)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_term_beyond_float16_counts_as_computed(dtype):
    # e = 120000 is beyond float16 (65504); mae and charbonnier compute in float32 inside
    pred = torch.full((8,), 60000.0, dtype=dtype, requires_grad=True)
    target = -pred.detach()
    crit = lossdsl.compile("0.001*mae + log(charbonnier)")
    total = crit(pred, target)
    e = pred.detach().double() - target.double()
    want = 0.001 * e.abs().mean() + torch.log(torch.sqrt(e * e + 1e-6).mean())
    assert total.dtype == dtype and float(total.detach()) == pytest.approx(float(want), rel=2 ** -7)
    assert crit.terms["mae"].dtype == torch.float32
    assert float(crit.terms["mae"]) == pytest.approx(float(e.abs().mean()), rel=2 ** -8)
    total.backward()
    assert torch.isfinite(pred.grad).all()
