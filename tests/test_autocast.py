"""Mixed precision (DESIGN.md §5, §9): under ``torch.autocast("cpu", dtype=torch.bfloat16)``
the model's output is bfloat16; every term computes in float32 inside, so the loss and the
gradients stay finite and within bfloat16's rounding of the float32 values.

Tolerance: bfloat16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.2 %); the linear
layer rounds its inputs, weights and output, so values and gradients are compared at 3 %
relative (plus 3 % of the largest gradient entry, absolute), against references written with
``torch.nn.functional`` in float32 without autocast.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import lossdsl

RTOL = 3e-2


def _log_cosh(e):
    """log cosh e = |e| + log(1 + exp(-2|e|)) - log 2, which does not overflow for large |e|."""
    return e.abs() + torch.log1p(torch.exp(-2 * e.abs())) - math.log(2)


def _diff(x, dim=1):
    return x.narrow(dim, 1, x.shape[dim] - 1) - x.narrow(dim, 0, x.shape[dim] - 1)


# term -> (target kind, float32 reference of the value)
CASES = {
    "mse": ("real", lambda p, t: F.mse_loss(p, t)),
    "mae": ("real", lambda p, t: F.l1_loss(p, t)),
    "huber": ("real", lambda p, t: F.huber_loss(p, t)),
    "huber(delta=0.5)": ("real", lambda p, t: F.huber_loss(p, t, delta=0.5)),
    "smooth_l1(beta=2)": ("real", lambda p, t: F.smooth_l1_loss(p, t, beta=2.0)),
    "log_cosh": ("real", lambda p, t: _log_cosh(p - t).mean()),
    "charbonnier(eps=0.01)": ("real", lambda p, t: torch.sqrt((p - t) ** 2 + 1e-4).mean()),
    "quantile(q=0.8)": ("real", lambda p, t: torch.maximum(0.8 * (t - p), -0.2 * (t - p)).mean()),
    "temporal_diff": ("real", lambda p, t: (_diff(p) - _diff(t)).abs().mean()),
    "bce_logits": ("binary", lambda p, t: F.binary_cross_entropy_with_logits(p, t)),
    "cross_entropy": ("class", lambda p, t: F.cross_entropy(p, t)),
    "cosine_distance": ("real", lambda p, t: (1 - F.cosine_similarity(p, t, dim=-1)).mean()),
}


def _data(kind: str, scale: float = 1.0):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(32, 6, generator=gen)
    if kind == "real":
        target = torch.randn(32, 4, generator=gen) * scale
    elif kind == "binary":
        target = (torch.rand(32, 4, generator=gen) > 0.5).float()
    else:
        target = torch.randint(0, 4, (32,), generator=gen)
    return x, target


def _model(scale: float = 1.0):
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    with torch.no_grad():
        model.weight.mul_(scale)
        model.bias.mul_(scale)
    return model


def _value_and_grads(model, fn, x, target, autocast: bool):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        pred = model(x)
        loss = fn(pred, target)
    loss.backward()
    return pred.dtype, loss.detach().float(), [p.grad.clone() for p in model.parameters()]


def _assert_near(got, ref):
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, rtol=RTOL, atol=RTOL * float(ref.abs().max()) + 1e-6)


@pytest.mark.parametrize("source", list(CASES))
def test_term_under_bfloat16_autocast_is_close_to_float32(source):
    kind, reference = CASES[source]
    x, target = _data(kind)
    model = _model()
    crit = lossdsl.compile(source)
    dtype, value, grads = _value_and_grads(model, crit, x, target, autocast=True)
    assert dtype == torch.bfloat16  # the model really ran in bfloat16
    _, ref_value, ref_grads = _value_and_grads(model, reference, x, target, autocast=False)
    _assert_near(value, ref_value)
    for g, r in zip(grads, ref_grads):
        _assert_near(g, r)


def test_a_mixture_with_a_schedule_under_autocast():
    source = "0.7*huber(delta=1) + 0.3*temporal_diff + linear(0, 2, steps=10)*mae + watch(mse)"

    def reference(p, t):
        ramp = 2 * 4 / 10
        return 0.7 * F.huber_loss(p, t) + 0.3 * CASES["temporal_diff"][1](p, t) + ramp * F.l1_loss(p, t)

    x, target = _data("real")
    model = _model()
    crit = lossdsl.compile(source)
    _, value, grads = _value_and_grads(model, lambda p, t: crit(p, t, step=4), x, target, autocast=True)
    _, ref_value, ref_grads = _value_and_grads(model, reference, x, target, autocast=False)
    _assert_near(value, ref_value)
    for g, r in zip(grads, ref_grads):
        _assert_near(g, r)
    for name, raw in crit.terms.items():
        assert torch.isfinite(raw).all(), name
    torch.testing.assert_close(crit.weights["mae"].float(), torch.tensor(0.8), rtol=1e-6, atol=0)


@pytest.mark.parametrize("source", ["mse", "log_cosh", "huber", "charbonnier(eps=0.01)"])
def test_large_errors_under_autocast_stay_finite(source):
    # |e| ~ 1e4: e^2 ~ 1e8 is far inside bfloat16's range, and log cosh must not overflow
    kind, reference = CASES[source]
    x, target = _data("real", scale=1e4)
    model = _model(scale=1e3)
    crit = lossdsl.compile(source)
    _, value, grads = _value_and_grads(model, crit, x, target, autocast=True)
    _, ref_value, ref_grads = _value_and_grads(model, reference, x, target, autocast=False)
    _assert_near(value, ref_value)
    for g, r in zip(grads, ref_grads):
        _assert_near(g, r)
