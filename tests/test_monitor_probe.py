"""The gradient-norm probe (DESIGN.md §7): each weighted term's gradient norm with respect to
the inputs, against torch.autograd.grad of the same formula written out in the test."""

import copy

import pytest
import torch
import torch.nn.functional as F

import lossdsl

SOURCE = "0.7*huber(delta=1) + 0.3*temporal_diff + watch(mse)"


def reference_terms(pred, target):
    """The weighted terms of SOURCE, written out by hand."""
    d_pred, d_target = pred[:, 1:] - pred[:, :-1], target[:, 1:] - target[:, :-1]
    return {
        "huber": 0.7 * F.huber_loss(pred, target, delta=1.0),
        "temporal_diff": 0.3 * (d_pred - d_target).abs().mean(),
        "mse": 0.0 * F.mse_loss(pred, target),
    }


def reference_norms(pred, target):
    leaf = pred.detach().requires_grad_()
    norms = {}
    for name, value in reference_terms(leaf, target).items():
        (grad,) = torch.autograd.grad(value, leaf)
        norms[name] = grad.norm().item()
    return norms


def test_probe_equals_autograd_of_each_weighted_term():
    crit = lossdsl.compile(SOURCE)
    crit.monitor.probe(every=1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        pred = torch.randn(3, 6, 2, generator=gen, requires_grad=True)
        target = torch.randn(3, 6, 2, generator=gen)
        crit(pred, target).backward()
        logs = crit.monitor.as_dict()
        for name, norm in reference_norms(pred, target).items():
            assert logs[f"loss/{name}/grad_norm"] == pytest.approx(norm, rel=1e-5, abs=1e-12), name


def test_probe_every_n_averages_the_probed_calls_only():
    crit = lossdsl.compile(SOURCE)
    crit.monitor.probe(every=3)
    gen = torch.Generator().manual_seed(1)
    expected = []
    for i in range(7):
        pred = torch.randn(2, 5, 2, generator=gen, requires_grad=True)
        target = torch.randn(2, 5, 2, generator=gen)
        crit(pred, target)
        if i % 3 == 0:  # calls 1, 4, 7
            expected.append(reference_norms(pred, target)["huber"])
    logs = crit.monitor.as_dict()
    assert logs["loss/huber/grad_norm"] == pytest.approx(sum(expected) / 3, rel=1e-5)
    assert crit.monitor.stats()["huber"]["grad_norm"] == pytest.approx(sum(expected) / 3, rel=1e-5)


def test_probe_leaves_parameter_and_input_gradients_alone():
    torch.manual_seed(2)
    model = torch.nn.Linear(4, 2)
    twin = copy.deepcopy(model)
    x = torch.randn(3, 6, 4)
    target = torch.randn(3, 6, 2)

    crit = lossdsl.compile(SOURCE)
    crit.monitor.probe(every=1)
    pred = model(x)
    pred.retain_grad()
    crit(pred, target).backward()

    ref_pred = twin(x)
    ref_pred.retain_grad()
    sum(reference_terms(ref_pred, target).values()).backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    torch.testing.assert_close(pred.grad, ref_pred.grad)
    assert "loss/huber/grad_norm" in crit.monitor.as_dict()


def test_probe_skips_quietly_without_grad():
    crit = lossdsl.compile(SOURCE)
    crit.monitor.probe(every=1)
    crit(torch.randn(2, 4, 1), torch.randn(2, 4, 1))  # pred does not require grad
    with torch.no_grad():
        crit(torch.randn(2, 4, 1, requires_grad=True), torch.randn(2, 4, 1))
    logs = crit.monitor.as_dict()
    assert "loss/huber" in logs and not any(k.endswith("/grad_norm") for k in logs)


def test_probe_over_several_inputs():
    crit = lossdsl.compile("2*mse + mae(pred=aux)")
    crit.monitor.probe(every=1, inputs=("pred", "aux"))
    gen = torch.Generator().manual_seed(3)
    pred = torch.randn(5, generator=gen, requires_grad=True)
    aux = torch.randn(5, generator=gen, requires_grad=True)
    target = torch.randn(5, generator=gen)
    crit(pred, target, aux=aux)
    p, a = pred.detach().requires_grad_(), aux.detach().requires_grad_()
    (g_mse,) = torch.autograd.grad(2 * F.mse_loss(p, target), p)
    (g_mae,) = torch.autograd.grad(F.l1_loss(a, target), a)
    logs = crit.monitor.as_dict()
    assert logs["loss/mse/grad_norm"] == pytest.approx(g_mse.norm().item(), rel=1e-5)
    assert logs["loss/mae/grad_norm"] == pytest.approx(g_mae.norm().item(), rel=1e-5)


def test_probe_of_an_input_no_term_reads_is_an_error():
    crit = lossdsl.compile("mse + mae(pred=aux)")
    with pytest.raises(lossdsl.LossDSLError, match="axu") as info:
        crit.monitor.probe(inputs=("pred", "axu"))
    assert "aux" in info.value.hint
