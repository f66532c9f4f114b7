"""Non-finite terms (DESIGN.md §8): the four policies of ``nonfinite=``.

The bad term is a custom one, registered for one loss with ``terms={...}``: the square root of
``gate * e^2``, NaN in value *and* gradient where the ``gate`` input is negative. Training
feeds ``gate = -1`` at a known step. References are written out here with
``torch.nn.functional``.
"""

import logging
import math

import pytest
import torch
import torch.nn.functional as F

import lossdsl

BAD_STEP = 2
STEPS = 5


def spiky(pred, target, gate):
    """sqrt(gate * e^2): NaN (value and gradient) where gate < 0."""
    return torch.sqrt(gate * (pred - target) ** 2 + 1e-6).mean()


def blowup(pred, target, gate):
    """-log(gate + 1): +inf where gate = -1, gradient inf."""
    return -torch.log(gate + 1.0).mean() + 0.0 * pred.sum()


def spiky_ref(pred, target):
    return torch.sqrt((pred - target) ** 2 + 1e-6).mean()


SOURCE = "recon = mse\n0.5*recon + 2*spiky"
SPIKY_AT = (2, SOURCE.splitlines()[1].index("spiky") + 1)  # line, column


def _crit(policy, source=SOURCE):
    return lossdsl.compile(source, terms={"spiky": spiky, "blowup": blowup}, nonfinite=policy)


def _batches():
    gen = torch.Generator().manual_seed(7)
    for step in range(STEPS):
        x = torch.randn(16, 3, generator=gen)
        y = torch.randn(16, 2, generator=gen)
        gate = torch.full((16, 2), -1.0 if step == BAD_STEP else 1.0)
        yield step, x, y, gate


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def test_raise_names_the_term_its_place_and_the_step():
    crit, model = _crit("raise"), _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(lossdsl.NonFiniteLossError) as info:
        for step, x, y, gate in _batches():
            opt.zero_grad()
            crit(model(x), y, gate=gate, step=step).backward()
            opt.step()
    err = info.value
    assert isinstance(err, lossdsl.LossDSLError)
    assert err.term == "spiky"
    line, column = SPIKY_AT
    assert (err.line, err.column) == (line, column)
    message = str(err)
    assert f"at step {BAD_STEP}" in message
    assert f"(line {line}, column {column})" in message
    assert "'spiky'" in message and "nan" in message
    assert "^^^^^" in message  # the caret under the term
    assert err.hint and "zero_term" in err.hint
    assert int(crit.step) == BAD_STEP


def test_raise_records_the_bad_call_before_raising():
    crit = lossdsl.compile("0.5*mse + mae", nonfinite="raise")
    target = torch.zeros(4)
    crit(torch.ones(4), target)
    with pytest.raises(lossdsl.NonFiniteLossError):
        crit(torch.tensor([1.0, float("nan"), 1.0, 1.0]), target)
    assert math.isnan(float(crit.terms["mse"])) and math.isnan(float(crit.terms["mae"]))
    stats = crit.monitor.stats()
    for name in ("mse", "mae"):
        assert stats[name]["count"] == 1 and stats[name]["nonfinite"] == 1  # count: finite calls
        assert stats[name]["mean"] == pytest.approx(1.0)  # of the finite value: (1 - 0)^2, |1 - 0|
    assert stats["total"]["nonfinite"] == 1


def test_raise_names_every_bad_term():
    source = "mse + spiky + 3*blowup"
    crit = _crit("raise", source)
    pred, target = torch.zeros(4, 2), torch.ones(4, 2)
    with pytest.raises(lossdsl.NonFiniteLossError) as info:
        crit(pred, target, gate=torch.full((4, 2), -1.0), step=11)
    message = str(info.value)
    assert f"'spiky' = nan (line 1, column {source.index('spiky') + 1})" in message
    assert f"'blowup' = inf (line 1, column {source.index('blowup') + 1})" in message
    assert "step 11" in message and "'mse'" not in message


def test_raise_when_only_the_combination_overflows():
    # both terms finite (0), their quotient is not
    crit = lossdsl.compile("mse / mae")
    with pytest.raises(lossdsl.NonFiniteLossError, match="the total is nan at step 0"):
        crit(torch.ones(3), torch.ones(3))


def test_warn_logs_and_goes_on(caplog):
    crit, model = _crit("warn"), _model()
    losses = []
    with caplog.at_level(logging.WARNING, logger="lossdsl"):
        for step, x, y, gate in _batches():
            losses.append(crit(model(x), y, gate=gate, step=step).detach())
    bad = [r for r in caplog.records if r.name == "lossdsl"]
    assert len(bad) == 1
    text = bad[0].getMessage()
    assert "'spiky'" in text and f"step {BAD_STEP}" in text
    assert "(line {}, column {})".format(*SPIKY_AT) in text
    assert math.isnan(float(losses[BAD_STEP]))
    assert all(math.isfinite(float(v)) for i, v in enumerate(losses) if i != BAD_STEP)


def test_without_a_gate_the_bad_term_poisons_the_gradient():
    # what zero_term must prevent: the term's own backward makes NaN even if its value is
    # replaced after the fact (0 * inf = NaN inside its graph)
    pred = torch.zeros(4, 2, requires_grad=True)
    value = spiky(pred, torch.ones(4, 2), torch.full((4, 2), -1.0))
    torch.where(torch.isfinite(value), value, 0.0).backward()
    assert torch.isnan(pred.grad).all()


def _train(policy):
    """SGD over the batches; returns per step (loss, grads, params before, params after)."""
    crit, model = _crit(policy), _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    record = []
    for step, x, y, gate in _batches():
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        loss = crit(model(x), y, gate=gate, step=step)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        record.append((loss.detach(), grads, before, x, y, crit.terms))
    return crit, model, record


def _hand_grads(params, x, y, spiky_weight):
    """The gradient of 0.5*mse (+ spiky_weight * spiky) by hand, with torch.nn.functional."""
    w, b = (p.clone().requires_grad_(True) for p in params)
    pred = F.linear(x, w, b)
    total = 0.5 * F.mse_loss(pred, y)
    if spiky_weight:
        total = total + spiky_weight * spiky_ref(pred, y)
    return total.detach(), torch.autograd.grad(total, [w, b])


def test_zero_term_drops_the_bad_term_and_its_gradient_exactly():
    crit, model, record = _train("zero_term")
    for step, (loss, grads, before, x, y, terms) in enumerate(record):
        bad = step == BAD_STEP
        value, hand = _hand_grads(before, x, y, spiky_weight=0.0 if bad else 2.0)
        torch.testing.assert_close(loss, value, rtol=1e-6, atol=1e-7)
        for g, h in zip(grads, hand):
            assert torch.isfinite(g).all()
            torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-7)
        # the raw value is still reported as it was
        assert math.isnan(float(terms["spiky"])) == bad
    assert all(torch.isfinite(p).all() for p in model.parameters())
    stats = crit.monitor.stats()
    assert stats["spiky"]["nonfinite"] == 1 and stats["recon"]["nonfinite"] == 0


def test_zero_term_gradient_of_the_bad_term_is_exactly_zero():
    # the gradient equals, bit for bit, that of the same program without the bad term
    x, y = torch.randn(8, 2), torch.randn(8, 2)
    pred_a = x.clone().requires_grad_(True)
    pred_b = x.clone().requires_grad_(True)
    _crit("zero_term", "0.5*mse + 2*spiky")(pred_a, y, gate=torch.full((8, 2), -1.0)).backward()
    (0.5 * lossdsl.compile("mse")(pred_b, y)).backward()
    assert torch.equal(pred_a.grad, pred_b.grad)
    assert torch.equal(pred_a.grad, (pred_b - y).detach() * (2 * 0.5 / y.numel()))


def test_zero_term_inside_a_named_composite_and_with_inf():
    source = "both = spiky + blowup\nmse + both"
    crit = _crit("zero_term", source)
    pred = torch.randn(5, 2, requires_grad=True)
    target = torch.randn(5, 2)
    loss = crit(pred, target, gate=torch.full((5, 2), -1.0))
    loss.backward()
    torch.testing.assert_close(loss.detach(), F.mse_loss(pred.detach(), target))
    torch.testing.assert_close(pred.grad, 2 * (pred - target).detach() / pred.numel())
    assert float(crit.terms["both"]) == 0.0  # the composite is built from the zeros


def test_skip_batch_returns_zero_with_zero_gradient_and_leaves_the_model():
    crit, model, record = _train("skip_batch")
    for step, (loss, grads, before, x, y, terms) in enumerate(record):
        if step == BAD_STEP:
            assert float(loss.detach()) == 0.0
            assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
            after = record[step + 1][2]
            assert all(torch.equal(a, b) for a, b in zip(before, after))  # SGD did not move
        else:
            value, hand = _hand_grads(before, x, y, spiky_weight=2.0)
            torch.testing.assert_close(loss, value, rtol=1e-6, atol=1e-7)
            for g, h in zip(grads, hand):
                torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-7)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skip_batch_when_only_the_combination_is_not_finite():
    crit = lossdsl.compile("mse / mae + mse", nonfinite="skip_batch")
    pred = torch.ones(3, requires_grad=True)
    loss = crit(pred, torch.ones(3))  # 0 / 0
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(pred.grad, torch.zeros(3))


def test_skip_batch_with_learnable_balancer_weights_gives_them_zero_gradient():
    crit = _crit("skip_batch", 'balance(mse, spiky, method="uncertainty")')
    pred = torch.randn(4, 2, requires_grad=True)
    loss = crit(pred, torch.randn(4, 2), gate=torch.full((4, 2), -1.0))
    loss.backward()
    assert float(loss.detach()) == 0.0
    params = list(crit.parameters())
    assert params and all(torch.equal(p.grad, torch.zeros_like(p)) for p in params)
    assert torch.equal(pred.grad, torch.zeros_like(pred))


@pytest.mark.parametrize("policy", ["zero_term", "skip_batch", "raise", "warn"])
def test_policies_run_on_the_meta_device(policy):
    # a meta tensor cannot be read on the host: any .item()/bool() would raise here
    crit = _crit(policy, "mse + spiky")
    pred = torch.empty(4, 2, device="meta", requires_grad=True)
    target = torch.empty(4, 2, device="meta")
    loss = crit(pred, target, gate=torch.empty(4, 2, device="meta"))
    loss.backward()
    assert loss.device.type == "meta" and pred.grad.shape == pred.shape


def test_unknown_policy_is_refused():
    with pytest.raises(lossdsl.LossDSLError, match="unknown nonfinite policy"):
        lossdsl.compile("mse", nonfinite="ignore")


def test_zero_term_under_torch_compile_fullgraph():
    crit = _crit("zero_term", "0.5*mse + 2*spiky")
    compiled = torch.compile(crit, fullgraph=True, backend="aot_eager")
    x, y = torch.randn(6, 2), torch.randn(6, 2)
    for gate_value in (-1.0, 1.0):
        pred = x.clone().requires_grad_(True)
        loss = compiled(pred, y, gate=torch.full((6, 2), gate_value))
        loss.backward()
        ref_pred = x.clone().requires_grad_(True)
        ref = 0.5 * F.mse_loss(ref_pred, y)
        if gate_value > 0:
            ref = ref + 2 * spiky_ref(ref_pred, y)
        ref.backward()
        torch.testing.assert_close(loss.detach(), ref.detach())
        torch.testing.assert_close(pred.grad, ref_pred.grad)


@pytest.mark.parametrize("policy", ["zero_term", "skip_batch"])
def test_an_inline_term_is_gated_under_torch_compile_fullgraph(policy):
    compiled = torch.compile(lossdsl.compile("mean(sqrt(pred)) + mse", nonfinite=policy), fullgraph=True, backend="aot_eager")
    y = torch.zeros(3)
    for values, bad in (([1.0, -1.0, 2.0], True), ([1.0, 4.0, 2.0], False)):
        pred = torch.tensor(values, requires_grad=True)
        loss = compiled(pred, y)
        loss.backward()
        ref_pred = torch.tensor(values, requires_grad=True)
        if bad:  # sqrt of a negative: the term counts 0 (zero_term), or the batch does (skip_batch)
            ref = F.mse_loss(ref_pred, y) if policy == "zero_term" else 0.0 * ref_pred.sum()
        else:
            ref = ref_pred.sqrt().mean() + F.mse_loss(ref_pred, y)
        ref.backward()
        torch.testing.assert_close(loss.detach(), ref.detach())
        torch.testing.assert_close(pred.grad, ref_pred.grad)


def test_raise_is_skipped_while_torch_compile_traces():
    # documented: the check needs the host, so a compiled loss returns the NaN instead
    crit = _crit("raise", "mse + spiky")
    compiled = torch.compile(crit, fullgraph=True, backend="aot_eager")
    loss = compiled(torch.zeros(3, 2), torch.ones(3, 2), gate=torch.full((3, 2), -1.0))
    assert math.isnan(float(loss.detach()))
