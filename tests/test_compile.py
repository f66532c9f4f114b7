"""Compile and call (DESIGN.md §4): values and gradients against PyTorch written out here,
effective weights against autograd, input routing, strict mode and state."""

import io
import itertools
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl import LossDSLError, LossInputError

F64 = torch.float64


def data(seed, shape=(4, 6, 3)):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(shape, generator=g, dtype=F64) * 2
    target = torch.randn(shape, generator=g, dtype=F64)
    return pred, target


def value_and_grad(source, pred, target, **kw):
    pred = pred.detach().clone().requires_grad_(True)
    crit = lossdsl.compile(source)
    total = crit(pred, target, **kw)
    (grad,) = torch.autograd.grad(total, pred)
    return total.detach(), grad, crit


# --- the design card against hand-written PyTorch -------------------------------------------


def hand_card(pred, target):
    huber = F.huber_loss(pred, target, delta=1.0)
    temporal = (torch.diff(pred, dim=1) - torch.diff(target, dim=1)).abs().mean()
    return 0.7 * huber + 0.3 * temporal, huber, temporal


def test_design_card_matches_hand_written_pytorch():
    pred, target = data(0)
    total, grad, crit = value_and_grad("0.7*huber(delta=1) + 0.3*temporal_diff", pred, target)
    p = pred.detach().clone().requires_grad_(True)
    expected, huber, temporal = hand_card(p, target)
    (expected_grad,) = torch.autograd.grad(expected, p)
    assert total.dtype == F64
    torch.testing.assert_close(total, expected.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-10)
    assert set(crit.terms) == {"huber", "temporal_diff"}
    torch.testing.assert_close(crit.terms["huber"], huber.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(crit.terms["temporal_diff"], temporal.detach(), rtol=0, atol=1e-10)
    assert {k: float(v) for k, v in crit.weights.items()} == pytest.approx(
        {"huber": 0.7, "temporal_diff": 0.3}, abs=1e-7
    )
    assert not crit.terms["huber"].requires_grad  # terms are detached


# --- algebraic equivalences through compile --------------------------------------------------

TERMS = ["mse", "mae", "huber(delta=0.5)"]
EQUIVALENT = [
    ("{a} + {b}", "{b} + {a}"),
    ("2*({a} + {b})", "2*{a} + 2*{b}"),
    ("{a} - {b}", "{a} + (-1)*{b}"),
    ("({a}*{b})/{b}", "{a}"),
    ("{a}^2", "{a}*{a}"),
    ("-{a}^2", "-({a}*{a})"),
    ("({a} + {b})^2", "{a}^2 + 2*{a}*{b} + {b}^2"),
    ("exp(log({a}))", "{a}"),
]


@pytest.mark.parametrize("left, right", EQUIVALENT)
@pytest.mark.parametrize("a, b", list(itertools.permutations(TERMS, 2))[:4])
def test_algebraic_equivalences_hold_numerically(left, right, a, b):
    pred, target = data(1)
    v1, g1, _ = value_and_grad(left.format(a=a, b=b), pred, target)
    v2, g2, _ = value_and_grad(right.format(a=a, b=b), pred, target)
    torch.testing.assert_close(v1, v2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


# --- effective weights = d total / d term, against autograd -----------------------------------


def leaf(x):
    """A term whose value is its input: autograd then gives d total / d term directly."""
    return x


NONLINEAR = (
    "leaf(x=x1)*leaf(x=x2) + log(leaf(x=x3)) + leaf(x=x4)^2/leaf(x=x5)"
    " + sqrt(leaf(x=x6))*exp(leaf(x=x7)) + max(leaf(x=x8), leaf(x=x9)) + clamp(leaf(x=x10), max=0.1)"
    " + 3*linear(0, 1, steps=10)*leaf(x=x11) - detach(leaf(x=x12)) + watch(leaf(x=x13))"
    " + abs(leaf(x=x14))^1.5 + leaf(x=x15)^leaf(x=x16) + min(leaf(x=x17), 2)"
)


def test_weights_equal_autograd_on_a_nonlinear_program():
    crit = lossdsl.compile(NONLINEAR, terms={"leaf": leaf})
    g = torch.Generator().manual_seed(3)
    xs = {f"x{i}": (torch.rand((), generator=g, dtype=F64) + 0.5).requires_grad_() for i in range(1, 18)}
    xs["x14"] = (-xs["x14"]).detach().requires_grad_()  # abs of a negative value
    total = crit(step=4, **xs)
    # detach(...) and watch(...) take no gradient: autograd leaves them out (weight 0)
    grads = torch.autograd.grad(total, list(xs.values()), allow_unused=True)
    expected = {x: 0.0 if g is None else g for x, g in zip(xs, grads)}
    names = ["leaf"] + [f"leaf_{i}" for i in range(2, 18)]
    assert crit.term_names == names
    for name, x in zip(names, xs):
        assert float(crit.weights[name]) == pytest.approx(float(expected[x]), rel=1e-6, abs=1e-7), name
    # a few by hand as a check of the check
    assert float(crit.weights["leaf"]) == pytest.approx(float(xs["x2"].detach()), rel=1e-6)
    assert float(crit.weights["leaf_11"]) == pytest.approx(3 * 0.4, rel=1e-6)
    assert float(crit.weights["leaf_12"]) == 0.0 and float(crit.weights["leaf_13"]) == 0.0


def test_weight_of_a_named_composite():
    crit = lossdsl.compile("a = leaf(x=u) + leaf(x=v)\na^2 + 3*a", terms={"leaf": leaf})
    u, v = torch.tensor(0.25, dtype=F64), torch.tensor(1.5, dtype=F64)
    crit(u=u, v=v)
    a = 0.25 + 1.5
    assert crit.term_names == ["leaf", "leaf_2", "a"]
    for name in crit.term_names:  # d(a^2 + 3a)/da = 2a + 3, and da/du = da/dv = 1
        assert float(crit.weights[name]) == pytest.approx(2 * a + 3, rel=1e-6)
    assert float(crit.terms["a"]) == pytest.approx(a)


def test_weights_follow_a_schedule():
    crit = lossdsl.compile("mse + linear(0, 1, steps=100)*mae")
    pred, target = data(2)
    for step, w in [(0, 0.0), (25, 0.25), (100, 1.0), (400, 1.0)]:
        crit(pred, target, step=step)
        assert float(crit.weights["mae"]) == pytest.approx(w, abs=1e-7)
        assert float(crit.weights["mse"]) == 1.0


# --- input routing ----------------------------------------------------------------------------


def test_routing_by_keyword():
    pred, target = data(4)
    crit = lossdsl.compile("mse(pred=recon, target=image)")
    total = crit(recon=pred, image=target)
    torch.testing.assert_close(total, F.mse_loss(pred, target), rtol=0, atol=1e-12)


@pytest.mark.parametrize("wrap", [lambda t: {"depth": t}, lambda t: SimpleNamespace(depth=t)], ids=["dict", "attr"])
def test_dotted_reference_reads_a_key_or_an_attribute(wrap):
    pred, target = data(5)
    crit = lossdsl.compile("mae(pred=out.depth)")
    total = crit(target=target, out=wrap(pred))
    torch.testing.assert_close(total, (pred - target).abs().mean(), rtol=0, atol=1e-12)


def test_optional_and_explicitly_routed_inputs():
    pred, target = data(6)
    w = torch.rand(pred.shape, dtype=F64)
    # weight left out: the plain mean
    plain = lossdsl.compile("mse")
    torch.testing.assert_close(plain(pred, target), ((pred - target) ** 2).mean(), rtol=0, atol=1e-12)
    torch.testing.assert_close(plain(pred, target, weight=w), (w * (pred - target) ** 2).mean(), rtol=0, atol=1e-12)
    routed = lossdsl.compile("0.5*mae + mse(weight=w)")
    torch.testing.assert_close(
        routed(pred, target, w=w),
        0.5 * (pred - target).abs().mean() + (w * (pred - target) ** 2).mean(),
        rtol=0, atol=1e-12,
    )
    # an input routed explicitly is required even though weight has a default
    with pytest.raises(LossInputError) as caught:
        routed(pred, target)
    err = caught.value
    assert str(err) == (
        "term 'mse' needs input 'w' for its 'weight', but the call did not give it (line 1, column 11)\n"
        "  0.5*mae + mse(weight=w)\n"
        "            ^^^^^^^^^^^^^\n"
        "hint: pass w=... to the loss call"
    )
    assert err.term == "mse"


def test_missing_target_names_the_term_and_its_place():
    crit = lossdsl.compile("recon = huber\nrecon + mae")
    pred, _ = data(7)
    with pytest.raises(LossInputError) as caught:
        crit(pred)
    err = caught.value
    assert err.term == "recon" and (err.line, err.column) == (1, 9)
    assert "term 'recon' needs input 'target'" in str(err)


def test_shape_mismatch_names_the_term_and_its_place():
    crit = lossdsl.compile("0.5*mae + mse")
    pred, target = data(8)
    with pytest.raises(LossInputError) as caught:
        crit(pred, target[:, :4])
    err = caught.value
    assert err.term == "mae" and (err.line, err.column) == (1, 5)
    message = str(err)
    assert "term 'mae'" in message and "(4, 6, 3)" in message and "(4, 4, 3)" in message
    assert "  0.5*mae + mse\n      ^^^" in message


# --- strict mode ------------------------------------------------------------------------------


def test_strict_refuses_an_unread_keyword_input_with_a_suggestion():
    crit = lossdsl.compile("mse(weight=w) + mae(pred=recon)")
    pred, target = data(9)
    with pytest.raises(LossInputError) as caught:
        crit(pred, target, w=torch.ones_like(pred), recn=pred)
    message = str(caught.value)
    assert message.startswith("no term reads the input 'recn'")
    assert "did you mean 'recon'?" in message and "strict=False" in message


def test_strict_ignores_unread_pred_and_target():
    crit = lossdsl.compile("mse(pred=a, target=b)")
    pred, target = data(10)
    total = crit(pred, target, a=target, b=target)  # pred/target given but not read
    assert float(total) == 0.0


def test_strict_false_allows_extra_inputs():
    crit = lossdsl.compile("mse", strict=False)
    pred, target = data(11)
    torch.testing.assert_close(crit(pred, target, extra=1, other="x"), F.mse_loss(pred, target))


# --- state ------------------------------------------------------------------------------------


def _states_with_source(state):
    return [v for v in state.values() if isinstance(v, dict) and "source" in v]


def test_state_dict_carries_the_canonical_source_and_the_step():
    crit = lossdsl.compile("mse + linear(0, 1, steps=10)*mae")
    crit(*data(12), step=5)
    state = crit.state_dict()
    (extra,) = _states_with_source(state)
    assert extra["source"] == "mse + linear(0, 1, steps=10) * mae"
    # the same program written another way loads, and resumes at the saved step
    other = lossdsl.compile("mse+linear(0,1,steps=10)*mae()  # resumed")
    other.load_state_dict(state)
    other(*data(12))
    assert float(other.weights["mae"]) == pytest.approx(0.5)


def test_loading_state_from_a_different_program_raises():
    state = lossdsl.compile("mse + mae").state_dict()
    with pytest.raises(LossDSLError, match="different loss program"):
        lossdsl.compile("mse + 2*mae").load_state_dict(state)


def test_torch_save_and_load_round_trip():
    crit = lossdsl.compile("recon = huber(delta=2)\n0.5*recon + linear(0, 1, steps=10)*mae(weight=w)")
    pred, target = data(13)
    w = torch.rand(pred.shape, dtype=F64)
    before = crit(pred, target, w=w, step=3)
    buffer = io.BytesIO()
    torch.save(crit, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert isinstance(loaded, lossdsl.Loss) and loaded is not crit
    assert loaded.source == crit.source and loaded.term_names == ["recon", "mae"]
    after = loaded(pred, target, w=w)  # the stored step (3) came along
    torch.testing.assert_close(after, before, rtol=0, atol=1e-12)
    assert float(loaded.weights["mae"]) == pytest.approx(0.3)


def test_each_compile_builds_a_fresh_module():
    a, b = lossdsl.compile("mse + linear(0, 1, steps=4)*mae"), lossdsl.compile("mse + linear(0, 1, steps=4)*mae")
    assert a is not b
    a(*data(14), step=2)
    assert int(b.step) == 0
    assert a.source == "mse + linear(0, 1, steps=4)*mae"


def test_unknown_nonfinite_policy_is_refused():
    with pytest.raises(LossDSLError, match="nonfinite"):
        lossdsl.compile("mse", nonfinite="ignore")


def test_the_last_call_does_not_keep_its_graph_alive():
    # crit.terms/crit.weights and the monitor keep detached values only: a loss computed and
    # dropped without backward() must free its graph (and what it saved) at once
    import gc
    import weakref

    markers = []

    class Marker:
        pass

    class Hold(torch.autograd.Function):
        # its ctx, and so the marker, lives exactly as long as this graph node
        @staticmethod
        def forward(ctx, x):
            ctx.marker = Marker()
            markers.append(weakref.ref(ctx.marker))
            return x * 1

        @staticmethod
        def backward(ctx, grad):
            return grad

    def keep(pred):
        return Hold.apply(pred).mean()

    crit = lossdsl.compile("keep + watch(keep)", terms={"keep": keep})
    loss = crit(torch.randn(8, requires_grad=True))
    gc.collect()
    # the loss holds the first term's graph; nothing holds the watched term's graph
    assert len(markers) == 2 and markers[0]() is not None and markers[1]() is None
    del loss
    gc.collect()
    assert all(ref() is None for ref in markers)
    assert set(crit.terms) == {"keep", "keep_2"}


def test_balancers_are_per_loss():
    a = lossdsl.compile("mse + mae")
    assert len(a.balancers) == 0
    c, d = (lossdsl.compile('balance(mse, mae, method="ema")') for _ in range(2))
    assert len(c.balancers) == 1 and c.balancers[0] is not d.balancers[0]
    pred, target = data(0)
    c(pred, target)
    assert int(c.balancers[0].count) == 1 and int(d.balancers[0].count) == 0


def test_fuse_is_gone_with_a_warning_and_the_loss_still_runs():
    # torch.compile(crit) fuses elementwise programs faster than the old one-pass path
    with pytest.warns(FutureWarning, match="torch.compile"):
        crit = lossdsl.compile("mse + mae", fuse=True)
    pred, target = data(0)
    torch.testing.assert_close(crit(pred, target), F.mse_loss(pred, target) + F.l1_loss(pred, target))


# --- torch.compile: one graph per loss and dtype ---------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, F64], ids=["bf16", "f32", "f64"])
def test_compiled_loss_traces_once_per_dtype(dtype):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    crit = lossdsl.compile("log(mse) + linear(0, 1, steps=10)*mae + max(huber, 0.1) + clamp(mae, max=5)")
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(crit, fullgraph=True, backend=counter)
    pred, target = (x.to(dtype) for x in data(7))
    for s in range(4):  # a changing step passed as a tensor
        total = compiled(pred, target, step=torch.tensor(s))
    assert counter.frame_count == 1
    p, t = pred.double(), target.double()
    want = (
        torch.log(F.mse_loss(p, t)) + 0.3 * F.l1_loss(p, t) + torch.clamp(F.huber_loss(p, t), min=0.1)
        + torch.clamp(F.l1_loss(p, t), max=5)
    )
    assert total.dtype == dtype
    rtol = 1e-10 if dtype == F64 else 1e-5 if dtype == torch.float32 else 2e-2
    assert float(total) == pytest.approx(float(want), rel=rtol)
    for _ in range(3):  # the stored step: one more graph (another call signature), then none
        compiled(pred, target)
    assert counter.frame_count == 2
