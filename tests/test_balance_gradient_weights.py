"""Weights computed from the terms' gradients (DESIGN.md §6.1): ``lra`` and ``gradnorm``.

The references are the papers' formulas written here, with each term's gradient on the
shared layer taken by ``torch.autograd.grad`` in the test."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lossdsl

LRA = 'balance(mse(pred=a, target=ya), mse(pred=b, target=yb), method="lra", alpha={alpha}, every={every})'
GRADNORM = 'balance(mse(pred=a, target=ya), mse(pred=b, target=yb), method="gradnorm", alpha={alpha}, every={every})'


class Net(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.a, self.b = nn.Linear(8, 1), nn.Linear(8, 1)

    def forward(self, x):
        h = self.trunk(x)
        return self.a(h), self.b(h)


def data(seed: int = 1, n: int = 32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    ya = x[:, :1] * 3.0
    yb = torch.sin(3 * x[:, 1:2] * x[:, 2:3])  # a harder target: it trains slower than ya
    return x, ya, yb


def term_grads(model, x, ya, yb):
    """Each unweighted term and its gradient on the trunk, flattened (built here)."""
    a, b = model(x)
    terms = [F.mse_loss(a, ya), F.mse_loss(b, yb)]
    shared = list(model.trunk.parameters())
    grads = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(t, shared, retain_graph=True)]) for t in terms]
    return [t.detach() for t in terms], grads


def test_lra_weights_follow_the_formula_on_update_calls_and_hold_between():
    alpha, every = 0.3, 3
    model, (x, ya, yb) = Net(), data()
    crit = lossdsl.compile(LRA.format(alpha=alpha, every=every))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    lam, count = 1.0, 0
    for call in range(8):
        terms, grads = term_grads(model, x, ya, yb)
        if count % every == 0:  # the first training call, then every `every`: updated before use
            lam = (1 - alpha) * lam + alpha * float(grads[0].abs().max() / grads[1].abs().mean())
        a, b = model(x)
        loss = crit(a=a, ya=ya, b=b, yb=yb, shared=model.trunk)
        assert float(crit.weights["mse"]) == 1.0  # the reference term
        assert float(crit.weights["mse_2"]) == pytest.approx(lam, rel=1e-5)
        assert loss.item() == pytest.approx(float(terms[0] + lam * terms[1]), rel=1e-5)
        count += 1
        opt.zero_grad()
        loss.backward()  # between updates the weights are constants: an ordinary backward
        opt.step()
        if call == 4:  # validation calls neither update nor count
            with torch.no_grad():
                crit(*(), a=model(x)[0], ya=ya, b=model(x)[1], yb=yb)
            crit.eval()
            a, b = model(x)
            crit(a=a, ya=ya, b=b, yb=yb)
            crit.train()
            assert float(crit.weights["mse_2"]) == pytest.approx(lam, rel=1e-5)
    assert lam > 1.5  # the small term's gradient is lifted towards the reference's


def test_lra_resumes_from_state_dict_identically():
    source = LRA.format(alpha=0.2, every=2)
    x, ya, yb = data()

    def run(model, crit, opt, calls):
        seen = []
        for _ in range(calls):
            a, b = model(x)
            loss = crit(a=a, ya=ya, b=b, yb=yb, shared=model.trunk)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen.append((loss.detach(), crit.weights["mse_2"].clone()))
        return seen

    model = Net()
    crit = lossdsl.compile(source)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    run(model, crit, opt, 3)  # three calls: the next one is not an update, the one after is
    saved = copy.deepcopy((model.state_dict(), crit.state_dict(), opt.state_dict()))
    rest = run(model, crit, opt, 4)
    model2, crit2 = Net(seed=5), lossdsl.compile(source)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.05)
    model2.load_state_dict(saved[0])
    crit2.load_state_dict(saved[1])
    opt2.load_state_dict(saved[2])
    again = run(model2, crit2, opt2, 4)
    for (l1, w1), (l2, w2) in zip(rest, again):
        assert torch.equal(l1, l2) and torch.equal(w1, w2)
    assert not torch.equal(rest[0][1], rest[-1][1])  # the weights did move after the resume


def test_gradnorm_weights_gradient_is_the_gradient_norm_loss():
    alpha, every = 1.5, 2
    model, (x, ya, yb) = Net(), data()
    crit = lossdsl.compile(GRADNORM.format(alpha=alpha, every=every))
    (weights,) = list(crit.parameters())  # the learnable weights, for the optimizer
    opt = torch.optim.Adam([*model.parameters(), weights], lr=0.02)
    initial = None
    for call in range(6):
        terms, grads = term_grads(model, x, ya, yb)
        initial = terms if initial is None else initial
        a, b = model(x)
        loss = crit(a=a, ya=ya, b=b, yb=yb, shared=model.trunk)
        w = torch.stack([crit.weights["mse"], crit.weights["mse_2"]])
        assert float(w.sum()) == pytest.approx(2.0, abs=1e-6)  # renormalised to K at each call
        assert loss.item() == pytest.approx(float(w[0] * terms[0] + w[1] * terms[1]), rel=1e-5)
        opt.zero_grad()
        loss.backward()
        if call % every == 0:  # GradNorm's L_grad = sum |w_i n_i - mean(w n) r_i^alpha|, target constant
            n = torch.stack([g.norm() for g in grads])
            rate = torch.stack(terms) / torch.stack(initial)
            target = (w * n).mean() * (rate / rate.mean()) ** alpha
            want = torch.sign(w * n - target) * n
            assert torch.allclose(weights.grad, want, rtol=1e-4, atol=1e-7)
        else:  # between updates the weights get no gradient, not even the total's
            assert torch.equal(weights.grad, torch.zeros(2))
        opt.step()


def test_gradnorm_lifts_the_task_that_trains_slower():
    model, (x, ya, yb) = Net(), data(n=128)
    crit = lossdsl.compile(GRADNORM.format(alpha=1.5, every=1))
    opt = torch.optim.Adam([*model.parameters(), *crit.parameters()], lr=0.01)
    first = None
    for _ in range(150):
        a, b = model(x)
        loss = crit(a=a, ya=ya, b=b, yb=yb, shared=model.trunk)
        first = dict(crit.terms) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert float(crit.weights["mse"] + crit.weights["mse_2"]) == pytest.approx(2.0, abs=1e-5)
    rate = {k: float(crit.terms[k] / first[k]) for k in ("mse", "mse_2")}
    assert rate["mse"] < rate["mse_2"]  # task a trains faster than task b ...
    assert float(crit.weights["mse_2"]) > 1.2 > 0.8 > float(crit.weights["mse"])  # ... so b's weight grows


def test_a_weight_producer_needs_shared_on_training_calls_only():
    model, (x, ya, yb) = Net(), data()
    source = LRA.format(alpha=0.1, every=1)
    crit = lossdsl.compile(source)
    a, b = model(x)
    with pytest.raises(lossdsl.LossInputError) as info:
        crit(a=a, ya=ya, b=b, yb=yb)
    err = info.value
    assert 'balance(method="lra")' in str(err) and "shared=" in str(err) and "shared=model.trunk" in err.hint
    assert err.line == 1 and err.column == 1
    with torch.no_grad():  # a validation call reads the stored weights only
        assert float(crit(a=a, ya=ya, b=b, yb=yb)) == pytest.approx(float(F.mse_loss(a, ya) + F.mse_loss(b, yb)))
    with pytest.raises(lossdsl.LossInputError, match="module or an iterable of parameters"):
        crit(a=a, ya=ya, b=b, yb=yb, shared=3)


def test_monitor_records_shared_gradient_norms_on_update_calls():
    model, (x, ya, yb) = Net(), data()
    crit = lossdsl.compile(LRA.format(alpha=0.1, every=2))
    norms = []
    for call in range(4):
        _, grads = term_grads(model, x, ya, yb)
        if call % 2 == 0:
            norms.append([float(g.norm()) for g in grads] + [float(F.cosine_similarity(grads[0], grads[1], dim=0))])
        a, b = model(x)
        crit(a=a, ya=ya, b=b, yb=yb, shared=model.trunk).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.05 * p.grad
                p.grad = None
    logs = crit.monitor.as_dict()
    want = [sum(col) / len(norms) for col in zip(*norms)]
    got = [logs["loss/mse/shared_grad_norm"], logs["loss/mse_2/shared_grad_norm"], logs["loss/mse~mse_2/cos"]]
    assert got == pytest.approx(want, rel=1e-4)


@pytest.mark.slow
def test_torch_compile_of_an_lra_program_matches_eager():
    source = LRA.format(alpha=0.3, every=2)
    x, ya, yb = data()
    results = []
    for compiled in (False, True):
        torch._dynamo.reset()
        model, crit = Net(), lossdsl.compile(source)
        run = torch.compile(crit) if compiled else crit
        seen = []
        for call in range(5):
            a, b = model(x)
            loss = run(a=a, ya=ya, b=b, yb=yb * (1 + call), shared=model.trunk)
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.05 * p.grad
                    p.grad = None
            seen.append((loss.detach(), crit.weights["mse_2"].clone()))
        crit.eval()
        with torch.no_grad():  # evaluation calls read the stored weights: one graph, no break
            a, b = model(x)
            full = torch.compile(crit, fullgraph=True) if compiled else crit
            seen.append((full(a=a, ya=ya, b=b, yb=yb), crit.weights["mse_2"].clone()))
        results.append(seen)
    for (l1, w1), (l2, w2) in zip(*results):
        assert torch.allclose(l1, l2, rtol=1e-5) and torch.allclose(w1, w2, rtol=1e-5)
    assert len({round(float(w), 6) for _, w in results[1]}) > 1  # the weights moved
