"""Balancing where the gradients or the state are degenerate (DESIGN.md §6, §6.1, §8, §9;
README "Balancing gradients", "Reliability"): a Jacobian of zeros or of NaN, a solver that
fails, a refused call, a state that does not fit, inputs on another device.

References: the formula of the case (a zero gradient, the state as before the call), a run
of the same loss without the offending call, or the documented error type and place.
"""

import contextlib
import logging

import pytest
import torch
from torch import nn

import lossdsl
from lossdsl.runtime import jacobian

pytest.importorskip("torchjd")

TWO = 'balance(mse(pred=a, target=y1), mae(pred=b, target=y2), method="{m}")'
AGGREGATORS = ["upgrad", "mgda", "pcgrad", "cagrad", "imtl_g", "aligned_mtl", "nash_mtl", "dualproj", "graddrop", "mean"]


def model(seed=0, device="cpu"):
    torch.manual_seed(seed)
    trunk, head_a, head_b = (nn.Linear(5, 6, device=device), nn.Linear(6, 3, device=device), nn.Linear(6, 3, device=device))
    x, y1, y2 = (torch.randn(8, n, device=device) for n in (5, 3, 3))
    return trunk, head_a, head_b, x, y1, y2


def call(crit, net, x=None, y1=None):
    trunk, head_a, head_b, x0, y10, y2 = net
    h = trunk(x0 if x is None else x)
    return crit(a=head_a(h), b=head_b(h), y1=y10 if y1 is None else y1, y2=y2, shared=trunk)


def with_nan(t):
    bad = t.clone()
    bad[0, 0] = float("nan")
    return bad


def balancer_state(crit):
    return {k: v.clone() for k, v in crit.state_dict().items() if torch.is_tensor(v) and k.startswith("balancers")}


def same_state(a, b):
    """Equal entry for entry, NaN equal to NaN (GradDrop's weights)."""
    def same(x, y):
        return torch.equal(x.isnan(), y.isnan()) and torch.equal(x.nan_to_num(), y.nan_to_num())

    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", AGGREGATORS)
def test_unreached_shared_aggregates_to_zero_and_keeps_the_state(method):
    # a parameter no term reaches has a Jacobian of zeros: its aggregate is zero
    net = model()
    crit = lossdsl.compile(TWO.format(m=method))
    call(crit, net)
    before = balancer_state(crit)
    stranger = nn.Linear(2, 2)
    crit.backward(shared=stranger)
    assert stranger.weight.grad is None or torch.equal(stranger.weight.grad, torch.zeros(2, 2))
    assert same_state(before, balancer_state(crit))


@pytest.mark.parametrize("method", AGGREGATORS)
def test_skip_batch_gives_an_exactly_zero_gradient(method):
    net = model()
    crit = lossdsl.compile(TWO.format(m=method), nonfinite="skip_batch")
    call(crit, net)
    crit.backward()
    before = balancer_state(crit)
    for m in net[:3]:
        m.zero_grad(set_to_none=True)
    out = call(crit, net, y1=with_nan(net[4]))
    crit.backward()
    assert float(out.detach()) == 0.0
    for m in net[:3]:
        assert all(p.grad is None or torch.equal(p.grad, torch.zeros_like(p)) for p in m.parameters())
    assert same_state(before, balancer_state(crit))


@pytest.mark.parametrize("method", AGGREGATORS)
def test_warn_nan_logs_and_leaves_the_state(method, caplog):
    net = model()
    crit = lossdsl.compile(TWO.format(m=method), nonfinite="warn")
    call(crit, net)
    crit.backward()
    before = balancer_state(crit)
    with caplog.at_level(logging.WARNING, logger="lossdsl"):
        call(crit, net, y1=with_nan(net[4]))
        crit.backward()
    assert any(f'method="{method}"' in r.getMessage() and "not finite" in r.getMessage() for r in caplog.records)
    assert same_state(before, balancer_state(crit))
    # the terms' gradients are NaN, so is the update (as loss.backward() of a NaN loss)
    assert not torch.isfinite(net[0].weight.grad).all()


def test_a_solver_failure_is_a_lossdsl_error_at_the_balance(monkeypatch):
    def fail(balancer, matrix):
        raise ValueError("Problem does not follow DCP rules.")

    monkeypatch.setattr(jacobian, "aggregate", fail)
    text = "0.1*mse(pred=a, target=y1) +\n" + TWO.format(m="nash_mtl")
    crit = lossdsl.compile(text)
    call(crit, model())
    with pytest.raises(lossdsl.LossDSLError) as caught:
        crit.backward()
    err = caught.value
    assert (err.line, err.column) == (2, 1) and "nash_mtl" in str(err) and "ValueError" in str(err)
    assert int(crit.state_dict()["balancers.0.carried"].sum()) == 2  # the initial solution, kept


@pytest.mark.parametrize("method, policy", [("pcgrad", "zero_term"), ("nash_mtl", "zero_term"), ("upgrad", "skip_batch"),
                                            ("graddrop", "zero_term"), ("graddrop", "skip_batch")])
def test_a_refused_call_is_as_if_not_made(method, policy):
    def run(insert):
        net = model()
        crit = lossdsl.compile(TWO.format(m=method), nonfinite=policy)
        grads = []
        for i in range(3):
            if insert and i == 1:
                call(crit, net, y1=with_nan(net[4]))
                crit.backward()
            for p in net[0].parameters():
                p.grad = None
            call(crit, net, x=torch.randn(8, 5, generator=torch.Generator().manual_seed(i)))
            crit.backward()
            grads.append(net[0].weight.grad.clone())
        return torch.stack(grads), balancer_state(crit)

    (with_bad, state_bad), (plain, state_plain) = run(True), run(False)
    assert torch.equal(with_bad, plain) and same_state(state_bad, state_plain)


@pytest.mark.parametrize("policy", ["raise", "zero_term", "skip_batch"])
def test_gradnorm_bad_call_is_as_if_not_made(policy):
    def run(insert):
        net = model()
        text = 'balance(mse(pred=a, target=y1), mae(pred=b, target=y2), method="gradnorm", every=2)'
        crit = lossdsl.compile(text, nonfinite=policy)
        totals = []
        for i in range(4):
            if insert and i == 2:
                with pytest.raises(lossdsl.NonFiniteLossError) if policy == "raise" else contextlib.nullcontext():
                    call(crit, net, y1=with_nan(net[4]))
            totals.append(call(crit, net, x=torch.randn(8, 5, generator=torch.Generator().manual_seed(i))).detach())
        return torch.stack(totals), balancer_state(crit)

    (with_bad, state_bad), (plain, state_plain) = run(True), run(False)
    assert torch.equal(with_bad, plain) and same_state(state_bad, state_plain)


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.pop("balancers.0.count"),
        lambda s: s.clear(),
        lambda s: s.update({"balancers.0.extra": torch.zeros(1)}),
        lambda s: s.update({"balancers.0.count": 3.0}),
    ],
    ids=["missing", "empty", "unexpected", "not-a-tensor"],
)
def test_a_state_that_does_not_fit_changes_nothing(change):
    crit = lossdsl.compile('balance(mse, mae, method="ema")')
    crit(torch.randn(3), torch.randn(3))
    before = {k: v.clone() for k, v in crit.state_dict().items() if torch.is_tensor(v)}
    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in crit.state_dict().items()}
    state["step"] = torch.tensor(7)
    state["balancers.0.ema"] = torch.full((2,), 9.0)
    change(state)
    with pytest.raises(lossdsl.LossDSLError):
        crit.load_state_dict(state)
    assert all(torch.equal(before[k], v) for k, v in crit.state_dict().items() if torch.is_tensor(v))


def test_wrong_shape_refused_without_strict_too():
    crit = lossdsl.compile('balance(mse, mae, method="dwa", window=2)')
    state = crit.state_dict()
    state["balancers.0.history"] = torch.zeros(3, 2)
    state["step"] = torch.tensor(5)
    with pytest.raises(lossdsl.LossDSLError, match=r"\(3, 2\).*\(4, 2\)"):
        crit.load_state_dict(state, strict=False)
    assert int(crit.state_dict()["step"]) == 0


@pytest.mark.parametrize("method", ["ema", "dwa", "relobralo", "uncertainty"])
def test_a_meta_call_leaves_the_state_where_it_is(method):
    crit = lossdsl.compile(f'balance(mse, mae, method="{method}")')
    p, y = torch.randn(4, 3), torch.randn(4, 3)
    crit(p, y)
    before = {k: v.clone() for k, v in crit.state_dict().items() if torch.is_tensor(v) and k.startswith("balancers")}
    total = crit(p.to("meta"), y.to("meta"))
    assert total.device.type == "meta" and total.shape == ()
    after = crit.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items())


def test_state_moved_to_meta_starts_anew_on_real_inputs():
    # a loss moved to meta whole holds no numbers: its first real call is a first call (1 / L_i)
    crit = lossdsl.compile('balance(mse, mae, method="ema")').to("meta")
    p, y = torch.randn(4, 3), torch.randn(4, 3)
    crit(p, y)
    want = [1 / float(nn.functional.mse_loss(p, y)), 1 / float(nn.functional.l1_loss(p, y))]
    assert [float(w) for w in crit.weights.values()] == pytest.approx(want, rel=1e-5)


def test_aggregator_on_the_meta_device():
    trunk, head_a, head_b, x, y1, y2 = model(device="meta")
    crit = lossdsl.compile(TWO.format(m="upgrad")).to("meta")
    h = trunk(x)
    crit(a=head_a(h), b=head_b(h), y1=y1, y2=y2, shared=trunk)
    crit.backward()
    assert trunk.weight.grad.device.type == "meta" and trunk.weight.grad.shape == trunk.weight.shape


def test_step_on_meta_is_a_loss_input_error():
    crit = lossdsl.compile("linear(0, 1, steps=10)*mse")
    with pytest.raises(lossdsl.LossInputError, match="meta"):
        crit.set_step(torch.tensor(3, device="meta"))
