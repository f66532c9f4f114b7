"""The per-call path of Loss.forward gives what the formula written out by hand gives.

Covers the generated program (values and gradients in float64 against torch.nn.functional),
the finiteness check on the host (errors and warnings), the meta device where nothing may be
read on the host, and the terms that share one ``e = pred - target``.
"""

import logging

import pytest
import torch
import torch.nn.functional as F

import lossdsl

TOL = dict(rtol=1e-10, atol=1e-10)


def _temporal(e):
    return torch.diff(e, dim=1).abs().mean()


def _data(shape=(3, 7, 2), seed=0):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()
    target = torch.randn(shape, generator=gen, dtype=torch.float64)
    return pred, target


def _grad(value, pred):
    return torch.autograd.grad(value, pred)[0]


def test_design_card_value_and_gradient_over_repeated_calls():
    crit = lossdsl.compile("0.7*huber(delta=1) + 0.3*temporal_diff")
    for seed in range(3):  # a later call must not see anything from an earlier one
        pred, target = _data(seed=seed)
        want = 0.7 * F.huber_loss(pred, target, delta=1.0) + 0.3 * _temporal(pred - target)
        got = crit(pred, target)
        torch.testing.assert_close(got, want, **TOL)
        torch.testing.assert_close(_grad(got, pred), _grad(want, pred), **TOL)
        torch.testing.assert_close(crit.terms["huber"], F.huber_loss(pred, target).detach(), **TOL)


@pytest.mark.parametrize("step", [0, 250, 1000, 5000])
def test_scheduled_mixture_follows_the_step(step):
    crit = lossdsl.compile(
        "0.4*huber(delta=1) + 0.2*mse + 0.1*mae + linear(0, 0.1, steps=1000)*temporal_diff"
    )
    pred, target = _data(seed=step)
    ramp = 0.1 * min(step / 1000, 1.0)
    want = (
        0.4 * F.huber_loss(pred, target) + 0.2 * F.mse_loss(pred, target)
        + 0.1 * F.l1_loss(pred, target) + ramp * _temporal(pred - target)
    )
    got = crit(pred, target, step=step)
    # the schedule's value is double precision (schedules.py): float64 to rounding
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_grad(got, pred), _grad(want, pred), rtol=1e-12, atol=1e-12)
    assert float(crit.weights["temporal_diff"]) == pytest.approx(ramp, rel=1e-15, abs=1e-15)


def test_huge_finite_values_are_not_reported():
    # 1e308 + 1e308 overflows although each is finite: only each value counts
    crit = lossdsl.compile("mse - mse")
    pred = torch.tensor([1e154], dtype=torch.float64)
    assert float(crit(pred, torch.zeros(1, dtype=torch.float64))) == 0.0
    assert float(crit.terms["mse"]) == pytest.approx(1e308)


def _sqrt_term(pred, target):
    """NaN where pred < target."""
    return torch.sqrt(pred - target).mean()


def test_nonfinite_term_still_raises_with_its_name():
    crit = lossdsl.compile("mse + 0.1*root", terms={"root": _sqrt_term})
    with pytest.raises(lossdsl.NonFiniteLossError, match="'root'") as info:
        crit(torch.zeros(3), torch.ones(3))
    assert info.value.column == 11


def test_watched_nonfinite_term_raises_although_the_total_is_finite():
    crit = lossdsl.compile("mse + watch(root)", terms={"root": _sqrt_term})
    with pytest.raises(lossdsl.NonFiniteLossError, match="'root'"):
        crit(torch.zeros(3), torch.ones(3))


def test_nonfinite_total_from_finite_terms_raises():
    crit = lossdsl.compile("mse / mae")
    with pytest.raises(lossdsl.NonFiniteLossError, match="total"):
        crit(torch.ones(3), torch.ones(3))  # 0 / 0


def test_warn_policy_logs_and_returns_the_value(caplog):
    crit = lossdsl.compile("mse + 0.1*root", terms={"root": _sqrt_term}, nonfinite="warn")
    with caplog.at_level(logging.WARNING, logger="lossdsl"):
        value = crit(torch.zeros(3), torch.ones(3))
    assert torch.isnan(value)
    assert "root" in caplog.text


def test_meta_device_runs_without_reading_values():
    crit = lossdsl.compile("0.7*huber(delta=1) + 0.3*temporal_diff")
    pred = torch.empty(2, 5, 3, device="meta", requires_grad=True)
    value = crit(pred, torch.empty(2, 5, 3, device="meta"))
    assert value.device.type == "meta" and value.shape == ()


def test_second_module_from_a_shared_plan_reports_its_own_errors():
    text = "0.5*mse + 0.5*huber  # fast path test"
    lossdsl.compile(text)
    crit = lossdsl.compile(text)
    with pytest.raises(lossdsl.LossInputError, match="target") as info:
        crit(torch.zeros(3))
    assert info.value.term == "mse"


@pytest.mark.parametrize("source", ["mse", "mse + smooth_l1(beta=0.5)", "0.3*mse + linear(0, 1, steps=9)*smooth_l1"])
def test_kept_values_do_not_hold_full_size_buffers(source):
    # F.mse_loss returns a 0-dim tensor whose storage is its full-size elementwise buffer;
    # the values the loss and its monitor keep between calls must be copies of their own.
    crit = lossdsl.compile(source)
    pred, target = torch.randn(64, 1024, requires_grad=True), torch.randn(64, 1024)
    for step in range(20):
        crit(pred, target, step=step).backward()
    kept = _kept_tensors(crit)
    assert len(kept) > 20  # the monitor keeps each call's values until it folds them
    for t in kept:
        assert t.untyped_storage().nbytes() <= 8 * 16, t.shape


def _kept_tensors(root):
    """The tensors reachable from ``root`` through attributes, containers and the package's
    own objects, its parameters and buffers left out: what it keeps between calls."""
    state = {id(t) for t in (*root.parameters(), *root.buffers())}
    seen, found, stack = set(), [], [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if id(obj) not in state:
                found.append(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, torch.nn.Module) or type(obj).__module__.startswith("lossdsl"):
            stack.extend(getattr(obj, "__dict__", {}).values())
            stack.extend(getattr(obj, name, None) for name in getattr(type(obj), "__slots__", ()))
    return found


SHARED = "charbonnier(eps=0.1) + log_cosh + 0.5*mae + quantile(q=0.2) + 0.3*temporal_diff + adaptive_huber(scale=0.5)"


def _shared_by_hand(pred, target):
    e = pred - target
    a = e.abs()
    delta = 0.5 * a.mean().detach()
    return (
        torch.sqrt(e * e + 0.01).mean()
        + torch.log(torch.cosh(e)).mean()
        + 0.5 * a.mean()
        + torch.maximum(0.2 * -e, -0.8 * -e).mean()
        + 0.3 * torch.diff(e, dim=1).abs().mean()
        + torch.where(a <= delta, 0.5 * e * e, delta * (a - 0.5 * delta)).mean()
    )


def test_terms_sharing_one_residual_match_the_formulas():
    crit = lossdsl.compile(SHARED)
    for seed in range(3):
        pred, target = _data(seed=seed)
        got, want = crit(pred, target), _shared_by_hand(pred, target)
        torch.testing.assert_close(got, want, **TOL)
        torch.testing.assert_close(_grad(got, pred), _grad(want, pred), **TOL)
        # the same values through the term functions called one by one
        torch.testing.assert_close(crit.terms["charbonnier"], lossdsl.terms.regression.charbonnier(pred, target, eps=0.1).detach(), **TOL)


def test_shared_residual_in_half_precision_returns_the_input_dtype():
    crit = lossdsl.compile("charbonnier + mae + temporal_diff")
    pred, target = _data()
    got = crit(pred.to(torch.bfloat16), target.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    want = crit(pred.to(torch.bfloat16).double(), target.to(torch.bfloat16).double())
    assert float(got) == pytest.approx(float(want), rel=1e-2)


def _full_size_saved(fn, pred, target):
    """Distinct full-size tensors autograd saves for backward while ``fn`` runs."""
    saved = set()

    def pack(t):
        if t.numel() == pred.numel():
            saved.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(pred, target)
    return len(saved)


def test_terms_sharing_one_residual_save_no_more_than_the_hand_written_formula():
    pred, target = torch.randn(4, 50, 3, requires_grad=True), torch.randn(4, 50, 3)
    source = "charbonnier + log_cosh + mae + quantile(q=0.3)"

    def by_hand(p, t):  # one e shared, as a careful engineer writes it
        e = p - t
        a = e.abs()
        return (
            torch.sqrt(e * e + 1e-6).mean() + (a + F.softplus(-2.0 * a)).mean() + a.mean()
            + torch.maximum(-0.3 * e, 0.7 * e).mean()
        )

    crit = lossdsl.compile(source)
    assert _full_size_saved(crit, pred, target) <= _full_size_saved(by_hand, pred, target)


def test_direct_term_path_names_a_missing_input():
    crit = lossdsl.compile("0.5*mse + charbonnier")
    pred, _ = _data()
    with pytest.raises(lossdsl.LossInputError) as err:
        crit(pred)
    assert "term 'mse' needs input 'target' for its 'target'" in str(err.value)
    assert "^" in str(err.value)

    def scaled_l1(pred, target, scale):
        return ((pred - target).abs() * scale).mean()

    crit = lossdsl.compile("scaled_l1", terms={"scaled_l1": scaled_l1})
    with pytest.raises(lossdsl.LossInputError, match="needs input 'scale'"):
        crit(pred, pred)
    assert float(crit(pred, pred + 1, scale=torch.tensor(2.0))) == pytest.approx(2.0)


def test_residual_terms_take_their_weight_and_mask_inputs():
    crit = lossdsl.compile("charbonnier(eps=0.1) + mae + log_cosh", strict=False)
    pred, target = _data()
    weight = torch.rand(pred.shape, dtype=torch.float64)
    mask = (torch.rand(pred.shape) > 0.5).double()
    e = pred - target
    elementwise = torch.sqrt(e * e + 0.01) + e.abs() + torch.log(torch.cosh(e))
    torch.testing.assert_close(crit(pred, target, weight=weight), (weight * elementwise).mean(), **TOL)
    want = (mask * elementwise).sum() / mask.sum()
    torch.testing.assert_close(crit(pred, target, mask=mask), want, **TOL)
