"""Regression terms (and temporal_diff, which also compares pred with target) against
torch.nn.functional or their DESIGN.md §5 formula written out, in float64 through
lossdsl.compile; weight/mask formulas; adaptive_huber's detached delta; log_cosh's stable form.

CASES (also read by test_terms_common.py) maps a program to
``(make_inputs, reference, extreme_inputs)``: make_inputs() gives float64 inputs, reference
computes the expected value from them, extreme_inputs(dtype) gives inputs at abs(e) = 1e4.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import lossdsl

SHAPE = (3, 4, 5)


def _pair(seed=0, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    target = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    return {"pred": pred, "target": target}


def _extreme_pair(dtype):
    # errors of +-1e4 next to tiny ones: both branches of every piecewise formula
    pred = torch.tensor([[1e4, -1e4, 0.5, 1e-3], [2.0, -3e3, 1e4, 0.0]], dtype=dtype)
    target = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.5, 1e3, -1e4, 0.1]], dtype=dtype)
    return {"pred": pred, "target": target}


def _huber(e, delta):
    a = e.abs()
    return torch.where(a <= delta, 0.5 * e**2, delta * (a - 0.5 * delta))


# elementwise losses, written from the §5 formulas, e = pred - target
ELEMENTWISE = {
    "mse": lambda e: e**2,
    "mae": lambda e: e.abs(),
    "l1": lambda e: e.abs(),
    "huber(delta=0.7)": lambda e: _huber(e, 0.7),
    "smooth_l1(beta=0.5)": lambda e: torch.where(e.abs() < 0.5, 0.5 * e**2 / 0.5, e.abs() - 0.25),
    "log_cosh": lambda e: torch.log(torch.cosh(e)),
    "quantile(q=0.3)": lambda e: torch.maximum(0.3 * -e, (0.3 - 1) * -e),
    "charbonnier(eps=0.01)": lambda e: torch.sqrt(e**2 + 0.01**2),
}


def _adaptive_reference(pred, target, scale=0.5):
    e = pred - target
    delta = scale * e.abs().mean().item()
    return _huber(e, delta).mean()


def _step_differences(x, order, dim):
    # D written out with slices, one order at a time
    for _ in range(order):
        n = x.shape[dim]
        x = x.narrow(dim, 1, n - 1) - x.narrow(dim, 0, n - 1)
    return x


def _temporal_reference(order, dim, p):
    def reference(pred, target):
        d = _step_differences(pred, order, dim) - _step_differences(target, order, dim)
        return (d.abs() ** p).mean()

    return reference


CASES = {
    "mse": (_pair, lambda pred, target: F.mse_loss(pred, target), _extreme_pair),
    "mae": (_pair, lambda pred, target: F.l1_loss(pred, target), _extreme_pair),
    "l1": (_pair, lambda pred, target: F.l1_loss(pred, target), _extreme_pair),
    "huber(delta=0.7)": (_pair, lambda pred, target: F.huber_loss(pred, target, delta=0.7), _extreme_pair),
    "smooth_l1(beta=0.5)": (
        _pair, lambda pred, target: F.smooth_l1_loss(pred, target, beta=0.5), _extreme_pair,
    ),
    "adaptive_huber(scale=0.5)": (_pair, _adaptive_reference, _extreme_pair),
    "log_cosh": (_pair, lambda pred, target: torch.log(torch.cosh(pred - target)).mean(), _extreme_pair),
    "quantile(q=0.3)": (
        _pair, lambda pred, target: ELEMENTWISE["quantile(q=0.3)"](pred - target).mean(), _extreme_pair,
    ),
    "charbonnier(eps=0.01)": (
        _pair, lambda pred, target: torch.sqrt((pred - target) ** 2 + 1e-4).mean(), _extreme_pair,
    ),
    "temporal_diff": (_pair, _temporal_reference(1, 1, 1), _extreme_pair),
    "temporal_diff(order=2, dim=-1, p=2)": (_pair, _temporal_reference(2, -1, 2), _extreme_pair),
    "temporal_diff(order=1, dim=0, p=1.5)": (_pair, _temporal_reference(1, 0, 1.5), _extreme_pair),
}


def test_defaults_follow_the_catalogue():
    inputs = _pair(1)
    pred, target = inputs["pred"], inputs["target"]
    e = pred - target
    expected = {
        "huber": _huber(e, 1.0).mean(),
        "smooth_l1": F.smooth_l1_loss(pred, target, beta=1.0),
        "quantile": torch.maximum(0.5 * -e, -0.5 * -e).mean(),
        "charbonnier": torch.sqrt(e**2 + 1e-6).mean(),
        "adaptive_huber": _adaptive_reference(pred, target, 0.5),
    }
    for name, value in expected.items():
        torch.testing.assert_close(lossdsl.compile(name)(pred, target), value, rtol=1e-10, atol=1e-10)


def test_huber_and_smooth_l1_are_torch_at_other_parameters():
    inputs = _pair(2)
    for d in (0.1, 2.5):
        got = lossdsl.compile(f"huber(delta={d})")(**inputs)
        torch.testing.assert_close(got, F.huber_loss(*inputs.values(), delta=d), rtol=1e-10, atol=0)
        got = lossdsl.compile(f"smooth_l1(beta={d})")(**inputs)
        torch.testing.assert_close(got, F.smooth_l1_loss(*inputs.values(), beta=d), rtol=1e-10, atol=0)


ELEMENTWISE_SRC = list(ELEMENTWISE) + ["adaptive_huber(scale=0.5)"]


def _elementwise(src, e, mask=None):
    if src.startswith("adaptive_huber"):
        a = e.abs()
        delta = 0.5 * (a.mean() if mask is None else (a * mask).sum() / mask.sum())
        return _huber(e, delta)
    return ELEMENTWISE[src](e)


@pytest.mark.parametrize("src", ELEMENTWISE_SRC)
def test_weight_and_mask_formulas(src):
    inputs = _pair(3)
    pred, target = inputs["pred"], inputs["target"]
    e = pred - target
    g = torch.Generator().manual_seed(4)
    w = torch.rand(SHAPE, generator=g, dtype=torch.float64) * 3
    m = (torch.rand(SHAPE, generator=g) > 0.4).to(torch.float64)
    call = src.replace(")", ", weight=w, mask=m)") if "(" in src else f"{src}(weight=w, mask=m)"
    l = _elementwise(src, e)
    lm = _elementwise(src, e, m)

    weighted = lossdsl.compile(src.replace("(", "(weight=w, ") if "(" in src else f"{src}(weight=w)")
    torch.testing.assert_close(weighted(pred, target, w=w), (w * l).mean(), rtol=1e-10, atol=1e-12)
    # weight=None from a default-routed input is the plain mean
    torch.testing.assert_close(lossdsl.compile(src)(pred, target), l.mean(), rtol=1e-10, atol=1e-12)
    masked = lossdsl.compile(src)(pred, target, mask=m)
    torch.testing.assert_close(masked, (m * lm).sum() / m.sum(), rtol=1e-10, atol=1e-12)
    both = lossdsl.compile(call)(pred, target, w=w, m=m)
    torch.testing.assert_close(both, (m * w * lm).sum() / m.sum(), rtol=1e-10, atol=1e-12)
    # a weight that broadcasts (one per feature) is allowed
    wf = torch.linspace(0.5, 2.0, SHAPE[-1], dtype=torch.float64)
    got = lossdsl.compile(src)(pred, target, weight=wf)
    torch.testing.assert_close(got, (wf * l).mean(), rtol=1e-10, atol=1e-12)
    summed = lossdsl.compile(src.replace(")", ', reduction="sum")') if "(" in src else f'{src}(reduction="sum")')
    torch.testing.assert_close(summed(pred, target), l.sum(), rtol=1e-10, atol=1e-10)


def test_all_zero_mask_gives_zero_not_nan():
    inputs = _pair(5)
    pred = inputs["pred"].clone().requires_grad_()
    out = lossdsl.compile("huber")(pred, inputs["target"], mask=torch.zeros(SHAPE, dtype=torch.float64))
    out.backward()
    assert out.item() == 0.0 and torch.isfinite(pred.grad).all()


def test_adaptive_huber_delta_is_detached_and_masked():
    inputs = _pair(6)
    pred = inputs["pred"].clone().requires_grad_()
    target = inputs["target"]
    lossdsl.compile("adaptive_huber(scale=0.3)")(pred, target).backward()
    # reference gradient: huber with delta a constant taken from the batch
    ref_pred = inputs["pred"].clone().requires_grad_()
    e = ref_pred - target
    delta = 0.3 * e.detach().abs().mean()
    _huber(e, delta).mean().backward()
    torch.testing.assert_close(pred.grad, ref_pred.grad, rtol=1e-12, atol=1e-14)
    # both branches are in use at this scale, so the detach matters
    a = e.detach().abs()
    assert (a <= delta).any() and (a > delta).any()
    # masked-out elements do not move delta: huge garbage under the mask changes nothing
    m = torch.ones(SHAPE, dtype=torch.float64)
    m[0] = 0
    garbage = inputs["pred"].clone()
    garbage[0] = 1e6
    crit = lossdsl.compile("adaptive_huber")
    clean = crit(inputs["pred"], target, mask=m)
    torch.testing.assert_close(crit(garbage, target, mask=m), clean, rtol=1e-12, atol=0)


def test_log_cosh_is_stable_for_large_errors():
    e = torch.tensor([1e4, -1e4, 500.0, -90.0], dtype=torch.float32, requires_grad=True)
    out = lossdsl.compile('log_cosh(reduction="sum")')(e, torch.zeros(4))
    out.backward()
    # log(cosh(x)) = abs(x) - log 2 + log(1 + exp(-2 abs(x))); the last part is below 1e-70 here
    expected = sum(abs(x) - math.log(2.0) for x in (1e4, 1e4, 500.0, 90.0))
    assert out.item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(e.grad, torch.tanh(e.detach()))
    # and exact (not only asymptotic) near 0, where the correction matters
    small = torch.tensor([0.0, 1e-3, 0.7, -2.0], dtype=torch.float64)
    got = lossdsl.compile('log_cosh(reduction="sum")')(small, torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(got, torch.log(torch.cosh(small)).sum(), rtol=1e-12, atol=1e-15)


def _log_cosh_float64(x):
    """log(cosh(x)) in float64 from three independent formulas: the Taylor series near 0
    (where log(cosh) itself cancels), log(cosh) in the middle, the asymptotic form far out."""
    a = x.abs()
    series = a**2 / 2 - a**4 / 12 + a**6 / 45 - 17 * a**8 / 2520 + 31 * a**10 / 14175
    direct = torch.log(torch.cosh(a.clamp_max(300.0)))
    far = a - math.log(2.0) + torch.log1p(torch.exp(-2.0 * a))
    return torch.where(a < 1e-2, series, torch.where(a < 300.0, direct, far))


def test_log_cosh_float32_is_accurate_from_tiny_to_huge_errors():
    magnitudes = torch.logspace(-6, 4, 4001, dtype=torch.float64)
    e = torch.cat([magnitudes, -magnitudes]).float()  # float32 inputs, 1e-6 .. 1e4 both signs
    crit = lossdsl.compile('log_cosh(reduction="sum")')
    one_at_a_time = e[::20]
    values = torch.stack([crit(x[None], torch.zeros(1)) for x in one_at_a_time]).double()
    expected = _log_cosh_float64(one_at_a_time.double())
    rel = ((values - expected).abs() / expected).max().item()
    assert rel <= 1e-5, rel
    # all of them at once: the sum, and the gradient element by element
    pred = e.clone().requires_grad_()
    out = crit(pred, torch.zeros_like(e))
    (grad,) = torch.autograd.grad(out, pred)
    torch.testing.assert_close(grad.double(), torch.tanh(e.double()), rtol=1e-6, atol=0)
    total = _log_cosh_float64(e.double()).sum()
    assert abs(out.item() - total.item()) <= 1e-6 * total.item()


def test_log_cosh_is_exactly_zero_at_zero_with_zero_gradient():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        pred = torch.zeros(3, dtype=dtype, requires_grad=True)
        out = lossdsl.compile("log_cosh")(pred, torch.zeros(3, dtype=dtype))
        out.backward()
        assert out.item() == 0.0 and (pred.grad == 0).all()


def test_log_cosh_residual_form_agrees_with_the_term():
    # two terms on e = pred - target share e and call the residual form; alone, the term
    # is called with pred and target: the same numbers either way, masked or not
    g = torch.Generator().manual_seed(8)
    pred = (torch.randn(64, generator=g) * torch.logspace(-5, 3, 64)).requires_grad_()
    target = torch.zeros(64)
    mask = (torch.rand(64, generator=g) > 0.3).float()
    for kwargs in ({}, {"mask": mask}):
        shared = lossdsl.compile("log_cosh + 0*mae")
        total = shared(pred, target, **kwargs)
        alone = lossdsl.compile("log_cosh")(pred, target, **kwargs)
        assert shared.terms["log_cosh"].item() == alone.item()
        g1 = torch.autograd.grad(total, pred)[0]
        g2 = torch.autograd.grad(alone, pred)[0]
        torch.testing.assert_close(g1, g2, rtol=0, atol=0)


def test_log_cosh_has_a_second_derivative():
    e = torch.tensor([-3.0, -1e-3, 0.0, 0.4, 50.0], dtype=torch.float64, requires_grad=True)
    crit = lossdsl.compile('log_cosh(reduction="sum")')
    assert torch.autograd.gradgradcheck(lambda x: crit(x, torch.zeros(5, dtype=torch.float64)), (e,))
    (grad,) = torch.autograd.grad(crit(e, torch.zeros(5, dtype=torch.float64)), e, create_graph=True)
    (second,) = torch.autograd.grad(grad.sum(), e)
    torch.testing.assert_close(second, 1 - torch.tanh(e.detach()) ** 2, rtol=1e-12, atol=1e-15)


def test_quantile_minimiser_is_the_quantile():
    # the value is minimised by the q-th quantile of the target (a property, checked on a grid)
    target = torch.arange(1, 101, dtype=torch.float64)
    crit = lossdsl.compile("quantile(q=0.9)")
    grid = torch.linspace(1, 100, 397, dtype=torch.float64)
    values = torch.stack([crit(torch.full_like(target, c.item()), target) for c in grid])
    best = grid[values.argmin()].item()
    assert 89.0 <= best <= 91.0


@pytest.mark.parametrize("src", ["mse", "huber", "log_cosh", "quantile", "charbonnier", "adaptive_huber"])
def test_no_broadcasting_between_pred_and_target(src):
    with pytest.raises(lossdsl.LossInputError) as info:
        lossdsl.compile(src)(torch.zeros(4, 1), torch.zeros(4))
    assert src in str(info.value) and info.value.term == src


def test_bad_weight_shape_is_an_input_error():
    with pytest.raises(lossdsl.LossInputError, match="weight"):
        lossdsl.compile("charbonnier")(torch.zeros(4, 3), torch.zeros(4, 3), weight=torch.ones(2))


def test_temporal_diff_needs_enough_steps_and_a_real_axis():
    crit = lossdsl.compile("temporal_diff(order=3)")
    with pytest.raises(lossdsl.LossInputError, match="order 3"):
        crit(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1))
    with pytest.raises(lossdsl.LossInputError, match="out of range"):
        lossdsl.compile("temporal_diff(dim=5)")(torch.zeros(2, 3), torch.zeros(2, 3))


def test_temporal_diff_below_one_power_has_finite_gradient_on_flat_stretches():
    # equal neighbours give D = 0, where abs(x)^0.5 has an infinite slope
    pred = torch.tensor([[0.0, 0.0, 1.0, 1.0, 3.0]], dtype=torch.float64, requires_grad=True)
    out = lossdsl.compile("temporal_diff(p=0.5)")(pred, torch.zeros(1, 5, dtype=torch.float64))
    out.backward()
    d = torch.tensor([0.0, 1.0, 0.0, 2.0], dtype=torch.float64)
    assert out.item() == pytest.approx(d.sqrt().mean().item(), rel=1e-12)
    assert torch.isfinite(pred.grad).all()
