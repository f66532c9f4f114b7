"""Gradient aggregators (DESIGN.md §6.1): ``crit.backward(shared=...)`` and ``features=``.

Every reference is built here: the Jacobian row of each term by ``torch.autograd.grad``, the
aggregate by TorchJD's own aggregator applied to it, the heads' gradients by the plain sum.
The data makes the terms conflict on the shared layer (a negative cosine, checked)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lossdsl
from lossdsl.language.balancers import counter_seed

torchjd = pytest.importorskip("torchjd")
from torchjd import aggregation as A  # noqa: E402

THREE = 'balance(mse(pred=a, target=ya), mse(pred=b, target=yb), mse(pred=c, target=yc), method="{m}"{extra})'
REFERENCE = {
    "upgrad": lambda: A.UPGrad(),
    "mgda": lambda: A.MGDA(),
    "pcgrad": lambda: A.PCGrad(),
    "cagrad": lambda: A.CAGrad(c=0.5),
    "imtl_g": lambda: A.IMTLG(),
    "aligned_mtl": lambda: A.AlignedMTL(),
    "nash_mtl": lambda: A.NashMTL(n_tasks=3),
    "dualproj": lambda: A.DualProj(),
    "graddrop": lambda: A.GradDrop(),
    "mean": lambda: A.Mean(),
}
RANDOM = {"pcgrad", "graddrop"}
# cvxpy says on every solve of the reference Nash-MTL's problem that it is not DPP
pytestmark = pytest.mark.filterwarnings("ignore:.*not DPP:UserWarning")


class TwoLayer(nn.Module):
    """A shared trunk and one head per task, in float64."""

    def __init__(self, heads: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(5, 6), nn.Tanh()).double()
        self.heads = nn.ModuleList(nn.Linear(6, 1).double() for _ in range(heads))
        with torch.no_grad():  # the first two heads start alike, so opposite targets conflict
            self.heads[1].weight.copy_(self.heads[0].weight)

    def forward(self, x):
        h = self.trunk(x)
        return h, [head(h) for head in self.heads]


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 5, generator=g, dtype=torch.float64)
    y = torch.randn(16, 1, generator=g, dtype=torch.float64)
    # the first two tasks want opposite outputs: their gradients on the trunk conflict
    return x, {"ya": 2 * y, "yb": -2 * y, "yc": torch.randn(16, 1, generator=g, dtype=torch.float64)}


def call(crit, model, x, targets, **extra):
    h, (a, b, c) = model(x)
    return h, crit(a=a, b=b, c=c, **targets, **extra)


def reference(model, x, targets):
    """The terms, the trunk's Jacobian (K, n) and each head's own gradient, built here."""
    h, outs = model(x)
    terms = [F.mse_loss(o, targets[k]) for o, k in zip(outs, ("ya", "yb", "yc"))]
    shared = list(model.trunk.parameters())
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(t, shared, retain_graph=True)]) for t in terms]
    heads = [torch.autograd.grad(t, list(head.parameters()), retain_graph=True) for t, head in zip(terms, model.heads)]
    return h, terms, torch.stack(rows), heads


def flat_grad(module):
    return torch.cat([p.grad.reshape(-1) for p in module.parameters()])


def weights_of(agg, matrix):
    return agg.weighting(matrix) if hasattr(agg, "weighting") else None


@pytest.mark.parametrize("method", list(REFERENCE))
def test_shared_gradient_is_torchjds_aggregate_of_the_jacobian(method):
    model = TwoLayer()
    x, targets = batch()
    _, _, jac, heads = reference(model, x, targets)
    cos = F.cosine_similarity(jac[0], jac[1], dim=0)
    assert cos < -0.1  # the terms really conflict on the trunk
    crit = lossdsl.compile(THREE.format(m=method, extra=""))
    _, loss = call(crit, model, x, targets)
    agg = REFERENCE[method]()
    rng_before = torch.get_rng_state()
    if method in RANDOM:  # the same draw: torch's generator seeded from the balancer's own state
        b = crit.balancers[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(counter_seed(b.rng_key, b.rng_counter)))
            want = agg(jac)
    else:
        want = agg(jac)
        want_weights = weights_of(agg, jac)
    crit.backward(shared=model.trunk)
    got = flat_grad(model.trunk)
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
    # not what the plain mean (but for "mean" itself) or the plain sum of the term gradients give
    assert method == "mean" or not torch.allclose(got, jac.mean(0), atol=1e-3)
    assert not torch.allclose(got, jac.sum(0), atol=1e-3)
    # every head gets the gradient of its own term (the plain sum, each weight 1)
    for head, grads in zip(model.heads, heads):
        assert torch.allclose(flat_grad(head), torch.cat([g.reshape(-1) for g in grads]), atol=1e-12)
    # the value is the plain sum of the terms
    assert loss.item() == pytest.approx(sum(float(v) for v in crit.terms.values()), rel=1e-12)
    reported = torch.stack(list(crit.weights.values())).double()
    if method == "graddrop":  # GradDrop combines signs, not rows: it has no weights
        assert torch.isnan(reported).all()
    elif method not in RANDOM:
        assert torch.allclose(reported, want_weights, atol=1e-5)
        assert torch.allclose(reported @ jac, got, atol=1e-5)
    else:
        assert torch.allclose(reported @ jac, got, atol=1e-5)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG was not used


def test_terms_outside_the_balance_add_their_ordinary_gradient_everywhere():
    model = TwoLayer()
    x, targets = batch()
    crit = lossdsl.compile(
        '0.5*balance(mse(pred=a, target=ya), mse(pred=b, target=yb), mse(pred=c, target=yc), method="upgrad")'
        " + 0.01*l2_reg(model=net)"
    )
    _, _, jac, heads = reference(model, x, targets)
    _, loss = call(crit, model, x, targets, net=model)
    crit.backward(shared=model.trunk)
    # l2_reg = 0.5 sum w^2 over the matrices (biases=false leaves the 1-d parameters out)
    weights_only = torch.cat([
        (p.detach() if p.dim() > 1 else torch.zeros_like(p)).reshape(-1) for p in model.trunk.parameters()
    ])
    want = 0.5 * A.UPGrad()(jac) + 0.01 * weights_only
    assert torch.allclose(flat_grad(model.trunk), want, atol=1e-6)
    for head, grads in zip(model.heads, heads):
        own = torch.cat([g.reshape(-1) for g in grads])
        reg = torch.cat([(p.detach() if p.dim() > 1 else torch.zeros_like(p)).reshape(-1) for p in head.parameters()])
        assert torch.allclose(flat_grad(head), 0.5 * own + 0.01 * reg, atol=1e-10)
    # the reported weights: the aggregator's, times the 0.5 written outside; l2_reg keeps 0.01
    w = A.UPGrad().weighting(jac)
    assert [float(crit.weights[n]) for n in ("mse", "mse_2", "mse_3")] == pytest.approx((0.5 * w).tolist(), abs=1e-6)
    assert float(crit.weights["l2_reg"]) == pytest.approx(0.01)


def test_features_aggregates_the_feature_jacobian_and_backpropagates_it_once():
    model = TwoLayer()
    x, targets = batch()
    crit = lossdsl.compile(THREE.format(m="upgrad", extra=""))
    h, (a, b, c) = model(x)
    crit(a=a, b=b, c=c, **targets)
    crit.backward(features=h)
    # reference: the Jacobian with respect to h, aggregated, then through the trunk
    h2, outs = model(x)
    terms = [F.mse_loss(o, targets[k]) for o, k in zip(outs, ("ya", "yb", "yc"))]
    jac_h = torch.stack([torch.autograd.grad(t, h2, retain_graph=True)[0].reshape(-1) for t in terms])
    g_h = A.UPGrad()(jac_h).view_as(h2)
    want = torch.autograd.grad(h2, list(model.trunk.parameters()), grad_outputs=g_h, retain_graph=True)
    assert torch.allclose(flat_grad(model.trunk), torch.cat([g.reshape(-1) for g in want]), atol=1e-6)
    for head, t in zip(model.heads, terms):
        own = torch.autograd.grad(t, list(head.parameters()), retain_graph=True)
        assert torch.allclose(flat_grad(head), torch.cat([g.reshape(-1) for g in own]), atol=1e-12)
    assert torch.allclose(torch.stack(list(crit.weights.values())).double(), A.UPGrad().weighting(jac_h), atol=1e-5)


def test_loss_backward_is_refused_and_says_to_call_crit_backward():
    model = TwoLayer()
    x, targets = batch()
    crit = lossdsl.compile(THREE.format(m="mgda", extra=""))
    _, loss = call(crit, model, x, targets)
    with pytest.raises(lossdsl.LossDSLError) as info:
        loss.backward()
    text = str(info.value)
    assert "crit.backward(shared=" in info.value.hint and "loss.backward()" in text
    assert info.value.line == 1 and info.value.column == 1 and "^^^^" in text
    assert all(p.grad is None for p in model.parameters())
    crit.backward(shared=model.trunk)  # the call is still there to back-propagate
    assert all(p.grad is not None for p in model.parameters())


def test_backward_uses_the_calls_shared_and_names_the_balancer_without_it():
    model = TwoLayer()
    x, targets = batch()
    crit = lossdsl.compile("mse(pred=a, target=ya) + " + THREE.format(m="upgrad", extra="").replace("(pred=a", "(pred=a2", 1))
    h, (a, b, c) = model(x)
    crit(a=a, a2=a, b=b, c=c, **targets)
    with pytest.raises(lossdsl.LossInputError) as info:
        crit.backward()
    assert "shared=" in str(info.value) and 'balance(method="upgrad")' in str(info.value)
    assert info.value.column == len("mse(pred=a, target=ya) + ") + 1  # the caret is under the balance
    # given to the call, shared is used by backward() too
    crit2 = lossdsl.compile(THREE.format(m="upgrad", extra=""))
    _, _, jac, _ = reference(model, x, targets)
    model.zero_grad()
    call(crit2, model, x, targets, shared=model.trunk)
    crit2.backward()
    assert torch.allclose(flat_grad(model.trunk), A.UPGrad()(jac), atol=1e-5)
    with pytest.raises(lossdsl.LossDSLError, match="no training call"):
        crit2.backward()  # once per call
    with pytest.raises(lossdsl.LossDSLError, match="loss.backward"):
        lossdsl.compile("mse").backward()


def test_shared_is_an_input_only_of_programs_with_a_gradient_balancer():
    model = TwoLayer()
    with pytest.raises(lossdsl.LossInputError, match="shared"):
        lossdsl.compile("mse")(torch.zeros(2), torch.ones(2), shared=model.trunk)
    crit = lossdsl.compile('balance(mse, mae, method="mean")')
    crit(torch.zeros(2, requires_grad=True), torch.ones(2), shared=model.trunk)  # accepted


def test_a_missing_extra_is_a_compile_time_error_naming_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "quadprog" else real(name, *a))
    source = 'balance(mse, mae, method="upgrad")'
    with pytest.raises(lossdsl.LossArgumentError) as info:
        lossdsl.compile(source)
    err = info.value
    assert "quadprog" in str(err) and err.hint.endswith("pip install 'lossdsl[mtl]'")
    assert source[err.span[0]: err.span[1]] == 'method="upgrad"'
    lossdsl.compile('balance(mse, mae, method="mgda")')  # needs torchjd alone


def test_random_aggregators_draw_from_their_own_generator_and_resume():
    x, targets = batch()
    source = THREE.format(m="graddrop", extra=", seed=3")

    def run(crit, model, steps):
        grads = []
        for _ in range(steps):
            model.zero_grad()
            call(crit, model, x, targets)
            crit.backward(shared=model.trunk)
            grads.append(flat_grad(model.trunk).clone())
        return grads

    model, crit = TwoLayer(), lossdsl.compile(source)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = run(crit, model, 2)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(first[0], first[1])  # a new draw at each backward
    saved = copy.deepcopy(crit.state_dict())
    later = run(crit, model, 2)
    resumed = lossdsl.compile(source)
    resumed.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(run(resumed, model, 2), later))
    # GradDrop keeps, per entry, the positive or the negative contributions of the rows
    _, _, jac, _ = reference(model, x, targets)
    got = later[-1]
    pos, neg = jac.clamp(min=0).sum(0), jac.clamp(max=0).sum(0)
    assert torch.all(torch.isclose(got, pos, atol=1e-12) | torch.isclose(got, neg, atol=1e-12))


def test_monitor_records_gradient_norms_and_cosines_on_shared():
    model = TwoLayer()
    x, targets = batch()
    crit = lossdsl.compile(THREE.format(m="upgrad", extra=""))
    _, _, jac, _ = reference(model, x, targets)
    for _ in range(2):
        call(crit, model, x, targets)
        crit.backward(shared=model.trunk)
    logs = crit.monitor.as_dict()
    norms = jac.norm(dim=1)
    for name, norm in zip(("mse", "mse_2", "mse_3"), norms):
        assert logs[f"loss/{name}/shared_grad_norm"] == pytest.approx(float(norm), rel=1e-9)
        assert f"loss/{name}/grad_norm" not in logs  # the probe w.r.t. pred keeps its own key
    cos = F.cosine_similarity(jac[0], jac[1], dim=0)
    assert logs["loss/mse~mse_2/cos"] == pytest.approx(float(cos), rel=1e-9) and float(cos) < 0
    assert {"loss/mse~mse_3/cos", "loss/mse_2~mse_3/cos"} <= set(logs)
    assert "loss/mse~mse_2/cos" not in crit.monitor.as_dict()  # the window was read
    summary = crit.monitor.summary()
    assert "shared_grad_norm" in summary and "mse~mse_2" in summary


def test_nash_mtl_carries_its_solution_in_the_state():
    x, targets = batch()
    source = THREE.format(m="nash_mtl", extra="")
    model = TwoLayer()
    crit = lossdsl.compile(source)
    reference_agg = A.NashMTL(n_tasks=3)
    for step in range(3):
        model.zero_grad()
        _, _, jac, _ = reference(model, x * (1 + step), targets)
        call(crit, model, x * (1 + step), targets)
        crit.backward(shared=model.trunk)
        assert torch.allclose(flat_grad(model.trunk), reference_agg(jac), atol=1e-5)
        if step == 1:
            saved = copy.deepcopy(crit.state_dict())
    resumed = lossdsl.compile(source)
    resumed.load_state_dict(saved)
    model.zero_grad()
    call(resumed, model, x * 3, targets)
    resumed.backward(shared=model.trunk)
    assert torch.allclose(torch.stack(list(resumed.weights.values())), torch.stack(list(crit.weights.values())), atol=1e-4)
    assert not math.isnan(float(resumed.weights["mse"]))
