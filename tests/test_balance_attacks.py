"""Hostile and careless uses of balancing (DESIGN.md §6, §6.1, §7, §8; README "Weights that
change", "Balancing gradients", "Seeing the balance", "Configs", "Command line", "Reliability").

Each test states a promise and checks it against a reference written here: a formula, a run
of the same loss without the offending call, or the documented error type.
"""

import logging
import subprocess
import sys

import pytest
import torch
from torch import nn

import lossdsl

pytest.importorskip("torchjd")

TWO = 'balance(mse(pred=a, target=y1), mae(pred=b, target=y2), method="{m}"{extra})'


def model(dtype=torch.float32, seed=0):
    """A trunk shared by two heads, its input and the two targets."""
    torch.manual_seed(seed)
    trunk, head_a, head_b = nn.Linear(5, 6), nn.Linear(6, 3), nn.Linear(6, 3)
    for m in (trunk, head_a, head_b):
        m.to(dtype)
    x, y1, y2 = torch.randn(8, 5, dtype=dtype), torch.randn(8, 3, dtype=dtype), torch.randn(8, 3, dtype=dtype)
    return trunk, head_a, head_b, x, y1, y2


def call(crit, net, x=None, y1=None, **kw):
    trunk, head_a, head_b, x0, y10, y2 = net
    h = trunk(x0 if x is None else x)
    return crit(a=head_a(h), b=head_b(h), y1=y10 if y1 is None else y1, y2=y2, shared=trunk, **kw)


def with_nan(t):
    bad = t.clone()
    bad[0, 0] = float("nan")
    return bad


def lra_reference(net, xs, alpha=0.1, every=1):
    """LRA's totals by its formula (DESIGN §6.1), one per row of ``xs``."""
    trunk, head_a, head_b, _, y1, y2 = net
    lam, totals = 1.0, []
    for i, x in enumerate(xs):
        h = trunk(x)
        la, lb = ((head_a(h) - y1) ** 2).mean(), (head_b(h) - y2).abs().mean()
        if i % every == 0:
            ga = torch.autograd.grad(la, list(trunk.parameters()), retain_graph=True)
            gb = torch.autograd.grad(lb, list(trunk.parameters()), retain_graph=True)
            biggest = max(g.abs().max() for g in ga)
            mean = sum(g.abs().sum() for g in gb) / sum(g.numel() for g in gb)
            lam = (1 - alpha) * lam + alpha * float(biggest / mean)
        totals.append(float(la + lam * lb))
    return totals


# ---------------------------------------------------------------- promises that hold


def test_lra_follows_its_formula_with_every():
    net = model()
    xs = [torch.randn(8, 5, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    crit = lossdsl.compile(TWO.format(m="lra", extra=", every=2"))
    got = [float(call(crit, net, x=x)) for x in xs]
    assert got == pytest.approx(lra_reference(net, xs, every=2), rel=1e-5)


@pytest.mark.parametrize("method", ["ema", "dwa", "cov", "softadapt", "relobralo", "uncertainty"])
def test_value_balancer_inside_log_reports_chain_rule_weights(method):
    extra = ", window=2" if method == "dwa" else ""
    p, y = torch.randn(4, 3), torch.randn(4, 3)
    plain = lossdsl.compile(f'balance(mse, mae, method="{method}"{extra})')
    logged = lossdsl.compile(f'log(balance(mse, mae, method="{method}"{extra}))')
    for _ in range(3):
        inner = plain(p, y)
        logged(p, y)
    for name in ("mse", "mae"):  # d log(B) / d L = (d B / d L) / B
        assert float(logged.weights[name]) == pytest.approx(float(plain.weights[name]) / float(inner), rel=1e-5)


@pytest.mark.parametrize("method", ["lra", "gradnorm"])
def test_validation_calls_do_not_count_towards_every(method):
    net = model()
    xs = [torch.randn(8, 5, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    runs = []
    for interleave in (False, True):
        crit, totals = lossdsl.compile(TWO.format(m=method, extra=", every=2")), []
        for x in xs:
            if interleave:
                crit.eval()
                call(crit, net, x=xs[0])
                crit.train()
                with torch.no_grad():
                    call(crit, net, x=xs[0])
            totals.append(call(crit, net, x=x).detach())
        runs.append(torch.stack(totals))
    assert torch.equal(runs[0], runs[1])


def test_loading_another_program_leaves_state_alone():
    a, b = lossdsl.compile('balance(mse, mae, method="ema")'), lossdsl.compile('balance(mse, huber, method="ema")')
    p, y = torch.randn(3), torch.randn(3)
    a(p, y)
    b(p + 1, y)
    before = {k: v.clone() for k, v in a.state_dict().items() if torch.is_tensor(v)}
    with pytest.raises(lossdsl.LossDSLError):
        a.load_state_dict(b.state_dict())
    assert all(torch.equal(before[k], v) for k, v in a.state_dict().items() if torch.is_tensor(v))


@pytest.mark.parametrize("target", [{"hubr": 0.5}, {"mse": 1.5}, {"mse": -0.1}, {"mse": float("nan")}])
def test_suggest_weights_refuses_bad_targets(target):
    crit = lossdsl.compile("0.7*mse + 0.3*mae")
    crit(torch.randn(4, 3), torch.randn(4, 3))
    with pytest.raises(lossdsl.LossDSLError):
        crit.monitor.suggest_weights(target=target)


def test_gradnorm_weights_get_the_gradient_norm_loss_gradient():
    # README: on update calls the weights' gradient is that of sum |w_i G_i - mean(w G) r_i^alpha|
    # (target constant), r_i = L_i(t)/L_i(0) over its mean; renormalised to sum to K per call.
    trunk, head_a, head_b, _, y1, y2 = model()
    crit = lossdsl.compile(TWO.format(m="gradnorm", extra=""))
    opt = torch.optim.SGD(list(crit.parameters()), lr=0.1)
    w, first = torch.ones(2), None
    for step in range(3):
        h = trunk(torch.randn(8, 5, generator=torch.Generator().manual_seed(step)))
        a, b = head_a(h), head_b(h)
        losses = [((a - y1) ** 2).mean(), (b - y2).abs().mean()]
        norms = torch.stack([
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(v, list(trunk.parameters()), retain_graph=True)]).norm()
            for v in losses
        ])
        now = torch.stack(losses).detach()
        first = now if first is None else first
        w = w * 2 / w.sum()
        r = now / first
        r = r / r.mean()
        want = torch.sign(w * norms - (w * norms).mean() * r ** 1.5) * norms
        opt.zero_grad()
        total = crit(a=a, b=b, y1=y1, y2=y2, shared=trunk)
        assert float(total) == pytest.approx(float(w[0] * losses[0] + w[1] * losses[1]), rel=1e-5)
        total.backward()
        assert torch.allclose(next(crit.parameters()).grad, want, atol=1e-6)
        opt.step()
        w = w - 0.1 * want


def test_mean_aggregator_backward_of_the_last_call():
    # the trunk gets the mean of the terms' gradients, a head the plain sum's; a second call
    # before crit.backward replaces the first; the monitor logs the weights after backward.
    trunk, head_a, head_b, x, y1, y2 = model()
    crit = lossdsl.compile(TWO.format(m="mean", extra=""))
    h = trunk(torch.randn(8, 5))
    crit(a=head_a(h), b=head_b(h), y1=y1, y2=y2, shared=trunk)
    h = trunk(x)
    a, b = head_a(h), head_b(h)
    crit(a=a, b=b, y1=y1, y2=y2, shared=trunk)
    la, lb = ((a - y1) ** 2).mean(), (b - y2).abs().mean()
    want_trunk = 0.5 * sum(torch.autograd.grad(v, trunk.weight, retain_graph=True)[0] for v in (la, lb))
    want_head = torch.autograd.grad(la + lb, head_a.weight, retain_graph=True)[0]
    crit.backward()
    assert torch.allclose(trunk.weight.grad, want_trunk, atol=1e-7)
    assert torch.allclose(head_a.weight.grad, want_head, atol=1e-7)
    # the first call had no backward, so it keeps the weight 1 it had; the second's is 0.5
    assert crit.monitor.as_dict()["loss/mse/weight"] == pytest.approx((1 + 0.5) / 2)


@pytest.mark.parametrize("method", ["upgrad", "dualproj", "mean"])
def test_aggregator_on_float16_model_is_finite(method):
    trunk, head_a, head_b, x, y1, y2 = model()
    for m in (trunk, head_a, head_b):
        m.half()
    crit = lossdsl.compile(TWO.format(m=method, extra="")).half()
    h = trunk(x.half())
    crit(a=head_a(h), b=head_b(h), y1=y1.half(), y2=y2.half(), shared=trunk)
    crit.backward()
    assert trunk.weight.grad.dtype == torch.float16 and torch.isfinite(trunk.weight.grad).all()


# ---------------------------------------------------------------- known breaks


def test_nash_mtl_skip_batch_gives_zero_gradient_not_a_solver_error():
    net = model()
    crit = lossdsl.compile(TWO.format(m="nash_mtl", extra=""), nonfinite="skip_batch")
    call(crit, net)
    crit.backward()
    for p in net[0].parameters():
        p.grad = None
    out = call(crit, net, y1=with_nan(net[4]))
    crit.backward()  # README: skip_batch returns a zero loss whose gradient is exactly zero
    assert float(out) == 0.0
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in net[0].parameters())


def test_nash_mtl_with_unreached_shared_is_a_lossdsl_error_or_zero():
    net = model()
    crit = lossdsl.compile(TWO.format(m="nash_mtl", extra=""))
    call(crit, net)
    stranger = nn.Linear(2, 2)
    try:
        crit.backward(shared=stranger)
    except lossdsl.LossDSLError:
        return
    assert stranger.weight.grad is None or torch.equal(stranger.weight.grad, torch.zeros(2, 2))


@pytest.mark.parametrize("method", ["cagrad", "imtl_g", "nash_mtl"])
def test_warn_nan_term_backward_never_raises_a_bare_exception(method, caplog):
    net = model()
    crit = lossdsl.compile(TWO.format(m=method, extra=""), nonfinite="warn")
    with caplog.at_level(logging.CRITICAL, logger="lossdsl"):
        call(crit, net, y1=with_nan(net[4]))
    try:
        crit.backward()
    except lossdsl.LossDSLError:
        pass  # a clear refusal is fine; a solver's exception is not


@pytest.mark.parametrize(
    "method, dtype",
    [(m, torch.float16) for m in ("cagrad", "imtl_g", "aligned_mtl")]
    + [(m, torch.bfloat16) for m in ("upgrad", "cagrad", "imtl_g", "aligned_mtl", "nash_mtl", "dualproj")],
)
def test_aggregator_on_half_precision_model(method, dtype):
    # README Reliability: .half()/.bfloat16() work for every program; terms in half precision
    # are combined in float32. Reference: the same step in float32 from the same weights.
    ref_net, half_net = model(torch.float32), model(torch.float32)
    for m in half_net[:3]:
        m.to(dtype)
    half_net = (*half_net[:3], *(t.to(dtype) for t in half_net[3:]))
    ref, crit = lossdsl.compile(TWO.format(m=method, extra="")), lossdsl.compile(TWO.format(m=method, extra="")).to(dtype)
    call(ref, ref_net)
    ref.backward()
    call(crit, half_net)
    crit.backward()
    got, want = half_net[0].weight.grad.float(), ref_net[0].weight.grad
    assert torch.isfinite(got).all()
    assert torch.allclose(got, want, rtol=0.05, atol=0.05 * float(want.abs().max()))


def _lra_run(policy, bad_at):
    net = model()
    xs = [torch.randn(8, 5, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    crit, totals = lossdsl.compile(TWO.format(m="lra", extra=", every=2"), nonfinite=policy), []
    for i, x in enumerate(xs):
        if i == bad_at:
            try:
                call(crit, net, x=x, y1=with_nan(net[4]))
            except lossdsl.NonFiniteLossError:
                pass
        totals.append(float(call(crit, net, x=x)))
    return net, xs, totals


@pytest.mark.parametrize("policy", ["raise", "zero_term", "skip_batch"])
def test_lra_bad_call_is_as_if_not_made(policy):
    # README Reliability: the run goes on bit for bit as if the call had not been made (and a
    # refused call under raise leaves the balancer's state unchanged).
    net, xs, totals = _lra_run(policy, bad_at=2)
    assert totals == pytest.approx(lra_reference(net, xs, every=2), rel=1e-5)


def test_warn_nan_leaves_aggregator_state():
    net = model()
    crit = lossdsl.compile(TWO.format(m="upgrad", extra=""), nonfinite="warn")
    call(crit, net)
    crit.backward()
    before = {k: v.clone() for k, v in crit.state_dict().items() if torch.is_tensor(v) and "balancers" in k}
    logging.getLogger("lossdsl").disabled = True
    try:
        call(crit, net, y1=with_nan(net[4]))
        crit.backward()
    finally:
        logging.getLogger("lossdsl").disabled = False
    after = crit.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("outer", ["mgda", "upgrad", "lra", "gradnorm"])
def test_aggregator_nested_in_a_gradient_balance_is_refused(outer):
    # An inner aggregate put in by a correction of the outer one's gradient gives weights
    # neither method gives (negative ones); refused when compiling, the caret under the inner.
    inner = 'balance(mse(pred=a, target=y1), mae(pred=b, target=y2), method="upgrad")'
    text = f'balance({inner}, huber(pred=a, target=y2), method="{outer}")'
    with pytest.raises(lossdsl.LossTypeError) as caught:
        lossdsl.compile(text)
    start = text.index(inner)
    assert caught.value.span == (start, start + len(inner))
    assert "flatten" in caught.value.hint and "one aggregator over all the terms" in caught.value.hint


def test_cli_explain_config_error_points_into_the_file(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("loss:\n  expr: |\n    0.7*mse + 0.3*temporl_diff\n")
    done = subprocess.run(
        [sys.executable, "-m", "lossdsl", "explain", "--config", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    # README Configs: the error names the file and key and gives the line and column in it
    assert str(path) in done.stderr and "(line 3, column 19)" in done.stderr


def test_suggest_weights_target_of_wrong_type():
    crit = lossdsl.compile("0.7*mse + 0.3*mae")
    crit(torch.randn(4, 3), torch.randn(4, 3))
    with pytest.raises(lossdsl.LossDSLError):
        crit.monitor.suggest_weights(target={"mse": "0.5"})


def test_probe_every_must_be_a_whole_number():
    with pytest.raises(lossdsl.LossDSLError):
        lossdsl.compile("mse + mae").monitor.probe(every=1.5)


def test_step_on_a_device_without_data():
    crit = lossdsl.compile("linear(0, 1, steps=10)*mse")
    with pytest.raises(lossdsl.LossDSLError):
        crit(torch.randn(4), torch.randn(4), step=torch.tensor(3, device="meta"))


def test_refused_corrupt_state_changes_nothing():
    crit = lossdsl.compile('balance(mse, mae, method="ema")')
    crit(torch.randn(3), torch.randn(3))
    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in crit.state_dict().items()}
    state["step"] = torch.tensor(7)
    state["balancers.0.ema"] = torch.zeros(5)
    with pytest.raises(lossdsl.LossDSLError):
        crit.load_state_dict(state)
    assert int(crit.state_dict()["step"]) == 0


def test_value_balancer_follows_the_inputs_device():
    # DESIGN §9: device and dtype follow the inputs (a program without a balancer does:
    # lossdsl.compile("mse + mae") on meta inputs gives a meta total).
    crit = lossdsl.compile('balance(mse, mae, method="ema")')
    total = crit(torch.randn(4, 3, device="meta"), torch.randn(4, 3, device="meta"))
    assert total.device.type == "meta" and total.shape == ()


@pytest.mark.parametrize("method", ["lra", "gradnorm"])
def test_weight_producer_on_the_meta_device(method):
    # DESIGN §9: the meta device has no hidden CPU tensors; a meta loss records nothing.
    trunk, head_a, head_b = (nn.Linear(5, 6, device="meta"), nn.Linear(6, 3, device="meta"), nn.Linear(6, 3, device="meta"))
    crit = lossdsl.compile(TWO.format(m=method, extra="")).to("meta")
    h = trunk(torch.randn(8, 5, device="meta"))
    total = crit(a=head_a(h), b=head_b(h), y1=torch.randn(8, 3, device="meta"), y2=torch.randn(8, 3, device="meta"), shared=trunk)
    total.backward()
    assert total.device.type == "meta" and trunk.weight.grad.device.type == "meta"
