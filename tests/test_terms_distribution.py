"""Distribution terms (kl_div, vae_kl, gaussian_nll, poisson_nll) against
torch.nn.functional or their DESIGN.md §5 formula written out, in float64 through
lossdsl.compile. CASES is shared with test_terms_common.py (see test_terms_regression.py).
"""

import math

import pytest
import torch
import torch.nn.functional as F

import lossdsl


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _distributions(seed=0):
    g = _gen(seed)
    pred = torch.randn(4, 6, generator=g, dtype=torch.float64).log_softmax(-1)
    target = torch.randn(4, 6, generator=g, dtype=torch.float64).softmax(-1)
    target[0, :2] = 0.0  # t log t = 0 where t = 0
    return {"pred": pred, "target": target}


def _log_distributions(seed=0):
    g = _gen(seed)
    return {
        "pred": torch.randn(4, 6, generator=g, dtype=torch.float64).log_softmax(-1),
        "target": torch.randn(4, 6, generator=g, dtype=torch.float64).log_softmax(-1),
    }


def _extreme_distributions(dtype):
    # probabilities 0 and 1 in the target, log-probabilities down to -100 in pred
    pred = torch.tensor([[0.0, -100.0, -100.0], [-100.0, -1e-4, -10.0]], dtype=dtype)
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=dtype)
    return {"pred": pred, "target": target}


def _latent(seed=0, shape=(5, 3)):
    g = _gen(seed)
    return {
        "mu": torch.randn(shape, generator=g, dtype=torch.float64),
        "logvar": torch.randn(shape, generator=g, dtype=torch.float64),
    }


def _extreme_latent(dtype):
    # exp(logvar) must stay finite in float32: logvar up to 80 (exp(88.7) overflows)
    limit = 100.0 if dtype == torch.float64 else 80.0
    mu = torch.tensor([[1e4, -1e4], [0.0, 3.0]], dtype=dtype)
    logvar = torch.tensor([[limit, -limit], [0.0, -30.0]], dtype=dtype)
    return {"mu": mu, "logvar": logvar}


def _vae_reference(mu, logvar):
    # mean over the batch of -0.5 * sum over the latent, one sample at a time
    rows = mu.reshape(mu.shape[0], -1)
    lrows = logvar.reshape(mu.shape[0], -1)
    total = 0.0
    for m, lv in zip(rows, lrows):
        total = total + -0.5 * sum(1 + lv[k] - m[k] ** 2 - torch.exp(lv[k]) for k in range(len(m)))
    return total / mu.shape[0]


def _gaussian(seed=0, var_shape=(4, 3)):
    g = _gen(seed)
    return {
        "pred": torch.randn(4, 3, generator=g, dtype=torch.float64),
        "target": torch.randn(4, 3, generator=g, dtype=torch.float64),
        "var": torch.rand(var_shape, generator=g, dtype=torch.float64) + 0.1,
    }


def _extreme_gaussian(dtype):
    return {
        "pred": torch.tensor([1e4, -1e4, 0.0, 2.0], dtype=dtype),
        "target": torch.zeros(4, dtype=dtype),
        "var": torch.tensor([0.0, 1e4, 1e-12, 1.0], dtype=dtype),
    }


def _counts(seed=0):
    g = _gen(seed)
    return {
        "pred": torch.randn(5, 4, generator=g, dtype=torch.float64),
        "target": torch.poisson(torch.full((5, 4), 3.0, dtype=torch.float64), generator=g),
    }


def _rates(seed=0):
    g = _gen(seed)
    return {
        "pred": torch.rand(5, 4, generator=g, dtype=torch.float64) * 4 + 0.1,
        "target": torch.poisson(torch.full((5, 4), 3.0, dtype=torch.float64), generator=g),
    }


def _extreme_log_rates(dtype):
    limit = 100.0 if dtype == torch.float64 else 80.0  # exp(pred) must be finite
    return {"pred": torch.tensor([limit, -limit, 0.0], dtype=dtype), "target": torch.tensor([0.0, 5.0, 1e4], dtype=dtype)}


def _extreme_rates(dtype):
    return {"pred": torch.tensor([0.0, 1e4, 1.0], dtype=dtype), "target": torch.tensor([5.0, 0.0, 1e4], dtype=dtype)}


CASES = {
    "kl_div": (
        _distributions,
        lambda pred, target: F.kl_div(pred, target, reduction="batchmean"),
        _extreme_distributions,
    ),
    "kl_div(log_target=true)": (
        _log_distributions,
        lambda pred, target: (target.exp() * (target - pred)).sum() / pred.shape[0],
        lambda dtype: {  # log-probabilities of 1 and of ~0 on both sides
            "pred": torch.tensor([[0.0, -100.0, -100.0], [-100.0, -1e-4, -10.0]], dtype=dtype),
            "target": torch.tensor([[-100.0, 0.0, -100.0], [0.0, -100.0, -100.0]], dtype=dtype),
        },
    ),
    "vae_kl": (_latent, _vae_reference, _extreme_latent),
    "gaussian_nll": (
        _gaussian,
        lambda pred, target, var: F.gaussian_nll_loss(pred, target, var),
        _extreme_gaussian,
    ),
    "gaussian_nll(eps=0.05)": (
        lambda seed=0: _gaussian(seed, var_shape=(4,)),
        lambda pred, target, var: F.gaussian_nll_loss(pred, target, var, eps=0.05),
        _extreme_gaussian,
    ),
    "poisson_nll": (_counts, lambda pred, target: F.poisson_nll_loss(pred, target), _extreme_log_rates),
    "poisson_nll(log_input=false)": (
        _rates,
        lambda pred, target: (pred - target * torch.log(pred + 1e-8)).mean(),
        _extreme_rates,
    ),
}


def test_kl_div_written_out():
    inputs = _distributions(1)
    pred, target = inputs["pred"], inputs["target"]
    expected = 0.0
    for row_p, row_t in zip(pred, target):
        expected += sum(t * (math.log(t) - p) for p, t in zip(row_p.tolist(), row_t.tolist()) if t > 0)
    got = lossdsl.compile("kl_div")(pred, target)
    assert got.item() == pytest.approx(expected / pred.shape[0], rel=1e-10)


def test_vae_kl_of_the_prior_is_zero_and_latent_axes_are_summed():
    zeros = torch.zeros(3, 4, dtype=torch.float64)
    crit = lossdsl.compile("vae_kl")
    assert crit(mu=zeros, logvar=zeros).item() == 0.0
    # (batch, channels, h, w): every non-batch axis is latent
    inputs = _latent(2, shape=(2, 3, 2, 2))
    torch.testing.assert_close(crit(**inputs), _vae_reference(**inputs), rtol=1e-10, atol=0)
    # a 1-d mu is a single sample
    inputs = _latent(3, shape=(6,))
    expected = _vae_reference(inputs["mu"][None], inputs["logvar"][None])
    torch.testing.assert_close(crit(**inputs), expected, rtol=1e-10, atol=0)


def test_vae_kl_is_called_with_mu_and_logvar_next_to_pred_and_target():
    inputs = _latent(4)
    crit = lossdsl.compile("mse + 0.5*vae_kl")
    pred, target = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    got = crit(pred, target, **inputs)
    torch.testing.assert_close(got, 1.0 + 0.5 * _vae_reference(**inputs), rtol=1e-10, atol=0)
    with pytest.raises(lossdsl.LossInputError, match="logvar") as info:
        crit(pred, target, mu=inputs["mu"], logvar=inputs["logvar"][:, :2])
    assert info.value.term == "vae_kl"


def test_gaussian_nll_var_shapes_and_clamp_follow_torch():
    for var_shape in [(4, 3), (4,), (4, 1)]:
        inputs = _gaussian(5, var_shape)
        inputs["var"][0] = 0.0  # clamped to eps, as torch does
        got = lossdsl.compile("gaussian_nll")(**inputs)
        torch.testing.assert_close(got, F.gaussian_nll_loss(**{
            "input": inputs["pred"], "target": inputs["target"], "var": inputs["var"]}), rtol=1e-10, atol=0)
    # the clamp does not block the gradient (torch clamps under no_grad)
    var = torch.tensor([1e-9, 0.5], dtype=torch.float64, requires_grad=True)
    pred, target = torch.tensor([1.0, 1.0], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    lossdsl.compile("gaussian_nll")(pred, target, var=var).backward()
    ref_var = var.detach().clone().requires_grad_()
    F.gaussian_nll_loss(pred, target, ref_var).backward()
    torch.testing.assert_close(var.grad, ref_var.grad, rtol=1e-10, atol=0)
    with pytest.raises(lossdsl.LossInputError, match="var"):
        lossdsl.compile("gaussian_nll")(pred, target, var=torch.ones(3, dtype=torch.float64))


def test_gaussian_nll_of_a_large_negative_variance_is_the_clamped_value():
    # -1e10 clamped to eps: the value is exactly the one at eps (a straight-through clamp
    # written as v + (eps - v).detach() rounds it to 0 and gives log 0)
    var = torch.tensor([-1e10, 1.0], requires_grad=True)
    pred, target = torch.tensor([0.5, 0.5]), torch.zeros(2)
    out = lossdsl.compile("gaussian_nll")(pred, target, var=var)
    out.backward()
    clamped = torch.tensor([1e-6, 1.0], dtype=torch.float64)
    expected = F.gaussian_nll_loss(pred.double(), target.double(), clamped)
    assert out.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.isfinite(var.grad).all()
