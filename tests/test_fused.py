"""compile(..., fuse=True): the one-pass value-and-gradient path for elementwise programs.

References are the formulas written out here with torch.nn.functional and autograd, in
float64 to 1e-10; the unfused Loss is compared too.
"""

import math
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl import fused_pass as fused_module

TOL = dict(rtol=1e-10, atol=1e-10)


def _log_cosh(e):
    return (e.abs() + F.softplus(-2.0 * e.abs()) - math.log(2.0)).mean()


def _quantile(p, t, q):
    u = t - p
    return torch.maximum(q * u, (q - 1.0) * u).mean()


# (source, hand-written reference f(p, t), {term: reference raw value f(p, t)})
PROGRAMS = [
    ("mse", lambda p, t: F.mse_loss(p, t), {"mse": lambda p, t: F.mse_loss(p, t)}),
    (
        "0.7*huber(delta=1) + 0.3*mse",
        lambda p, t: 0.7 * F.huber_loss(p, t, delta=1.0) + 0.3 * F.mse_loss(p, t),
        {"huber": lambda p, t: F.huber_loss(p, t, delta=1.0)},
    ),
    (
        "0.4*huber(delta=0.5) + 0.2*mse + 0.1*mae + 0.1*smooth_l1(beta=0.5)"
        " + 0.05*charbonnier(eps=0.01) + 0.15*log_cosh + 0.3*quantile(q=0.2)",
        lambda p, t: 0.4 * F.huber_loss(p, t, delta=0.5) + 0.2 * F.mse_loss(p, t)
        + 0.1 * F.l1_loss(p, t) + 0.1 * F.smooth_l1_loss(p, t, beta=0.5)
        + 0.05 * torch.sqrt((p - t) ** 2 + 1e-4).mean() + 0.15 * _log_cosh(p - t)
        + 0.3 * _quantile(p, t, 0.2),
        {
            "smooth_l1": lambda p, t: F.smooth_l1_loss(p, t, beta=0.5),
            "log_cosh": lambda p, t: _log_cosh(p - t),
            "quantile": lambda p, t: _quantile(p, t, 0.2),
            "charbonnier": lambda p, t: torch.sqrt((p - t) ** 2 + 1e-4).mean(),
        },
    ),
    (
        "l1 - 0.5*mse/4 + 2",
        lambda p, t: F.l1_loss(p, t) - 0.125 * F.mse_loss(p, t) + 2.0,
        {"l1": lambda p, t: F.l1_loss(p, t)},
    ),
    (
        'huber(delta=2, reduction="sum") + -mse',
        lambda p, t: F.huber_loss(p, t, delta=2.0, reduction="sum") - F.mse_loss(p, t),
        {"huber": lambda p, t: F.huber_loss(p, t, delta=2.0, reduction="sum")},
    ),
    (
        "a = mse + mae\n2*a + watch(huber) + mse",
        lambda p, t: 3 * F.mse_loss(p, t) + 2 * F.l1_loss(p, t),
        {"a": lambda p, t: F.mse_loss(p, t) + F.l1_loss(p, t), "huber": lambda p, t: F.huber_loss(p, t)},
    ),
]


def _shapes():
    # one chunk, several chunks with a ragged end, and a small 3-d batch
    return [(7,), (3, fused_module.CHUNK + 1001), (2, 3, 4)]


def _data(shape, seed, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    pred = (scale * torch.randn(shape, generator=gen, dtype=torch.float64)).requires_grad_()
    target = torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()
    return pred, target


def _value_and_grads(fn, pred, target):
    pred.grad = target.grad = None
    value = fn(pred, target)
    value.backward()
    return value.detach(), pred.grad.clone(), target.grad.clone()


@pytest.mark.parametrize("source, reference, raw", PROGRAMS, ids=[p[0][:30] for p in PROGRAMS])
@pytest.mark.parametrize("shape", _shapes(), ids=str)
def test_fused_equals_unfused_and_hand_written(source, reference, raw, shape):
    pred, target = _data(shape, seed=len(source))
    fused = lossdsl.compile(source, fuse=True)
    plain = lossdsl.compile(source)
    assert fused.fused and not plain.fused
    want = _value_and_grads(reference, pred, target)
    for crit in (fused, plain):
        got = _value_and_grads(crit, pred, target)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **TOL)
    with torch.no_grad():
        for name, fn in raw.items():
            torch.testing.assert_close(fused.terms[name].double(), fn(pred, target), **TOL)
    assert fused.terms.keys() == plain.terms.keys()
    for name in plain.weights:
        assert float(fused.weights[name]) == pytest.approx(float(plain.weights[name]), abs=1e-7)


def test_weights_are_the_constant_coefficients():
    crit = lossdsl.compile("a = mse + mae\n2*a + watch(huber) - 0.5*mse/4", fuse=True)
    pred, target = _data((5, 6), seed=1)
    crit(pred, target).backward()
    # d total / d term, written out: mse appears through a (x2) and on its own (-0.125)
    want = {"mse": 2.0, "mae": 2.0, "a": 2.0, "huber": 0.0, "mse_2": -0.125}
    assert {k: pytest.approx(float(v)) for k, v in crit.weights.items()} == want


def test_target_gradient_and_scaled_upstream():
    pred, target = _data((4, 9), seed=2)
    crit = lossdsl.compile("0.3*huber + 0.7*log_cosh", fuse=True)
    ref = lambda p, t: 0.3 * F.huber_loss(p, t) + 0.7 * _log_cosh(p - t)  # noqa: E731
    (3.0 * crit(pred, target)).backward()
    gp, gt = pred.grad.clone(), target.grad.clone()
    pred.grad = target.grad = None
    (3.0 * ref(pred, target)).backward()
    torch.testing.assert_close(gp, pred.grad, **TOL)
    torch.testing.assert_close(gt, target.grad, **TOL)
    torch.testing.assert_close(gt, -gp, **TOL)


def test_retain_graph_backward_twice_accumulates():
    pred, target = _data((3, 8), seed=3)
    loss = lossdsl.compile("mse", fuse=True)(pred, target)
    loss.backward(retain_graph=True)
    loss.backward()
    want = 2 * (2 * (pred - target) / pred.numel())  # two backward passes of d mse / d pred
    torch.testing.assert_close(pred.grad, want.detach(), **TOL)


def test_no_grad_call_and_pred_without_grad():
    pred, target = _data((6, 5), seed=4)
    crit = lossdsl.compile("0.5*mse + 0.5*mae", fuse=True)
    want = 0.5 * F.mse_loss(pred, target) + 0.5 * F.l1_loss(pred, target)
    with torch.no_grad():
        got = crit(pred, target)
    assert not got.requires_grad
    torch.testing.assert_close(got, want.detach(), **TOL)
    got = crit(pred.detach(), target.detach())
    torch.testing.assert_close(got, want.detach(), **TOL)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_lower_precision_matches_the_unfused_path(dtype, tol):
    gen = torch.Generator().manual_seed(5)
    pred = torch.randn(4, 300, generator=gen).to(dtype).requires_grad_()
    target = torch.randn(4, 300, generator=gen).to(dtype)
    source = "0.6*huber + 0.2*charbonnier + 0.2*quantile(q=0.7)"
    results = []
    for fuse in (True, False):
        pred.grad = None
        loss = lossdsl.compile(source, fuse=fuse)(pred, target)
        loss.backward()
        assert loss.dtype == dtype and pred.grad.dtype == dtype
        results.append((loss.float(), pred.grad.float()))
    (lf, gf), (lu, gu) = results
    torch.testing.assert_close(lf, lu, rtol=tol, atol=tol)
    torch.testing.assert_close(gf, gu, rtol=tol, atol=tol * float(gu.abs().max()))


@pytest.mark.parametrize(
    "source, kwargs",
    [
        ("mse + temporal_diff", {}),
        ("linear(0, 1, steps=10)*mse + mae", {}),
        ("mse * mae", {}),
        ("log(mse)", {}),
        ("mse(weight=w)", {}),
        ("mse(pred=out.depth)", {}),
        ("detach(mse) + mae", {}),
        ("mse + mae", {"nonfinite": "zero_term"}),
        ("mse + mae", {"terms": {"mae": lambda pred, target: (pred - target).abs().mean()}}),
    ],
)
def test_ineligible_programs_fall_back_with_a_warning(source, kwargs):
    with pytest.warns(UserWarning, match="fuse=True ignored"):
        crit = lossdsl.compile(source, fuse=True, **kwargs)
    assert crit.fused is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lossdsl.compile(source, **kwargs).fused is False  # no warning without fuse


def test_weight_and_mask_inputs_take_the_normal_path():
    pred, target = _data((4, 5), seed=6)
    w = torch.rand(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    crit = lossdsl.compile("mse + mae", fuse=True)
    assert crit.fused
    got = _value_and_grads(lambda p, t: crit(p, t, weight=w), pred, target)
    want = _value_and_grads(
        lambda p, t: (w * (p - t) ** 2).mean() + (w * (p - t).abs()).mean(), pred, target
    )
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, **TOL)
    m = (w > 0.5).to(torch.float64)
    with torch.no_grad():
        got = crit(pred, target, mask=m)
        e = pred - target
        want = (m * e * e).sum() / m.sum() + (m * e.abs()).sum() / m.sum()
    torch.testing.assert_close(got, want, **TOL)


def test_input_errors_are_the_normal_ones():
    crit = lossdsl.compile("mse + mae", fuse=True)
    with pytest.raises(lossdsl.LossInputError, match="shape"):
        crit(torch.zeros(3, 4), torch.zeros(4, 3))
    with pytest.raises(lossdsl.LossInputError, match="target"):
        crit(torch.zeros(3))


def test_nonfinite_is_reported_under_fuse():
    crit = lossdsl.compile("mse + 0.5*mae", fuse=True)
    pred = torch.tensor([0.0, float("nan")])
    with pytest.raises(lossdsl.NonFiniteLossError, match="mse"):
        crit(pred, torch.zeros(2))


def test_pickled_fused_loss_still_fuses():
    crit = lossdsl.compile("0.5*huber + 0.5*mse", fuse=True)
    clone = pickle.loads(pickle.dumps(crit))
    assert clone.fused
    pred, target = _data((3, 4), seed=8)
    want = 0.5 * F.huber_loss(pred, target) + 0.5 * F.mse_loss(pred, target)
    torch.testing.assert_close(clone(pred, target), want, **TOL)


def test_only_the_gradient_is_saved_for_backward():
    pred, target = _data((16, 32), seed=9)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    crit = lossdsl.compile("0.4*huber + 0.3*charbonnier + 0.3*log_cosh", fuse=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = crit(pred, target)
    assert len(saved) == 1 and saved[0].shape == pred.shape  # d total / d pred, nothing else
    loss.backward()
    ref = 0.4 * F.huber_loss(pred, target) + 0.3 * torch.sqrt((pred - target) ** 2 + 1e-6).mean()
    ref = ref + 0.3 * _log_cosh(pred - target)
    grad = torch.autograd.grad(ref, pred)[0]
    torch.testing.assert_close(pred.grad, grad, **TOL)


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference"])
def test_chunks_on_two_torch_threads_give_the_same_result(mode):
    gen = torch.Generator().manual_seed(10)
    shape = (3, fused_module.CHUNK + 77)
    pred = torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()
    target = torch.randn(shape, generator=gen, dtype=torch.float64)
    crit = lossdsl.compile("0.5*huber + 0.5*log_cosh", fuse=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # each op of a chunk is spread over torch's threads
    try:
        if mode == "grad":
            got = crit(pred, target)
            grad = torch.autograd.grad(got, pred)[0]
        else:
            context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
            with context:
                got = crit(pred, target)
    finally:
        torch.set_num_threads(threads)
    want = 0.5 * F.huber_loss(pred, target) + 0.5 * _log_cosh(pred - target)
    torch.testing.assert_close(got.detach(), want.detach(), **TOL)
    if mode == "grad":
        torch.testing.assert_close(grad, torch.autograd.grad(want, pred)[0], **TOL)
