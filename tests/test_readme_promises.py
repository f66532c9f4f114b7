"""Promises of README.md ("The language", "Calling the loss", "Adding a term") and of the
public API that inputs meant to break them once did break; references are written here."""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

import lossdsl


@pytest.fixture
def pair():
    gen = torch.Generator().manual_seed(7)
    return torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)


# --- "`pred` and `target` always name the call's inputs" -------------------------------


@pytest.mark.parametrize("name", ["pred", "target"])
def test_a_binding_cannot_rebind_the_call_inputs(name):
    # before: `pred = mae` was accepted and `mean(pred^2)` then read the binding, not the input
    source = f"{name} = mae\nmse + mean({name}^2)"
    with pytest.raises(lossdsl.LossNameError) as caught:
        lossdsl.compile(source)
    err = caught.value
    assert (err.line, err.column, err.span) == (1, 1, (0, len(name)))
    assert "input" in err.message and err.hint


@pytest.mark.parametrize("name", ["pred", "target", "total"])
def test_a_registered_term_cannot_take_a_fixed_name(name):
    # before: @lossdsl.term(name="pred") shadowed the input in every later program, and a
    # term named `total` overwrote the monitor's column of the whole loss
    with pytest.raises(ValueError, match=name):
        lossdsl.term(name=name)(lambda pred, target: (pred - target).abs().mean())
    assert name not in lossdsl.registry


@pytest.mark.parametrize("name", ["pred", "target", "total", "none"])
def test_a_local_term_cannot_take_a_fixed_name(name, pair):
    pred, target = pair
    with pytest.raises(lossdsl.LossDSLError, match=name):
        lossdsl.compile("mse + mae", terms={name: lambda pred, target: pred.mean()})


def test_pred_in_an_expression_reads_the_input(pair):
    pred, target = pair
    crit = lossdsl.compile("mse + mean(pred^2)")
    expected = F.mse_loss(pred, target) + (pred**2).mean()
    assert torch.allclose(crit(pred, target), expected)


def test_the_monitor_total_is_the_whole_loss(pair):
    pred, target = pair
    crit = lossdsl.compile("mse + 0.5*mae")
    crit(pred, target)
    expected = F.mse_loss(pred, target) + 0.5 * F.l1_loss(pred, target)
    assert math.isclose(crit.monitor.as_dict()["loss/total"], float(expected), rel_tol=1e-6)


# --- "Bad input gets a clear LossDSLError", the public API's own arguments ----------------


@pytest.mark.parametrize("bad", [5, "mse", object()])
def test_terms_must_be_a_mapping(bad, pair):
    # before: terms=5 raised AttributeError: 'int' object has no attribute 'items'
    with pytest.raises(lossdsl.LossDSLError, match="terms= takes a mapping"):
        lossdsl.compile("mse", terms=bad)


def test_unparse_of_text_names_parse():
    # before: TypeError "not a keyword value: str"
    with pytest.raises(TypeError, match=r"lossdsl\.parse"):
        lossdsl.unparse("mse")
    assert lossdsl.unparse(lossdsl.parse("0.7*huber(delta=1)+0.3*temporal_diff")) == (
        "0.7 * huber(delta=1) + 0.3 * temporal_diff"
    )


# --- DESIGN §4: every public name imports and shows a runnable example ------------------

# loss.py and monitor.py are at the project's 400-line limit: their examples are on methods
_EXAMPLES_ON_METHODS = {"Loss", "Monitor"}


@pytest.mark.parametrize("name", lossdsl.__all__)
def test_every_public_name_has_a_runnable_example(name):
    obj = getattr(lossdsl, name)
    if name in _EXAMPLES_ON_METHODS:
        docs = [inspect.getdoc(m) or "" for m in vars(obj).values() if callable(m)]
    else:
        docs = [inspect.getdoc(obj) or ""]
    assert any(">>>" in doc for doc in docs), name


# --- README values checked against formulas written here --------------------------------


def test_power_binds_tighter_than_unary_minus(pair):
    pred, target = pair
    crit = lossdsl.compile("-2^2*mse + 10*mse")
    assert torch.allclose(crit(pred, target), 6 * F.mse_loss(pred, target))


def test_schedules_follow_the_table(pair):
    pred, target = pair

    def tau(s, steps, delay=0):
        return min(max((s - delay) / steps, 0.0), 1.0)

    table = {
        "linear(0.2, 1, steps=10, delay=3)": lambda s: 0.2 + 0.8 * tau(s, 10, 3),
        "cosine(1, 0, steps=7)": lambda s: 1 - (1 - math.cos(math.pi * tau(s, 7))) / 2,
        "cyclic(6, ratio=0.25, low=0.1, high=2)": lambda s: 0.1 + 1.9 * min(1, ((s % 6) / 6) / 0.25),
        "after(10)": lambda s: float(s >= 10),
        "piecewise(boundaries=[5, 10], values=[1, 2, 3])": lambda s: 1 + (s >= 5) + (s >= 10),
    }
    for expr, ref in table.items():
        crit = lossdsl.compile(f"mse + ({expr})*mae")
        for s in (0, 4, 5, 9, 10, 13, 1000):
            crit(pred, target, step=s)
            assert math.isclose(float(crit.weights["mae"]), ref(s), rel_tol=1e-6, abs_tol=1e-7), (expr, s)


def test_functions_match_torch(pair):
    pred, target = pair
    cases = {
        "mean(softplus(pred, beta=2))": F.softplus(pred, beta=2).mean(),
        "norm(pred - target, p=1)": torch.linalg.vector_norm(pred - target, ord=1),
        "var(pred, correction=0)": torch.var(pred, correction=0),
        "mean(std(pred, dim=[0, 1], keepdim=true))": torch.std(pred, dim=[0, 1], keepdim=True).mean(),
        "mean(logsumexp(pred, dim=-1))": torch.logsumexp(pred, -1).mean(),
        "mean(diff(pred, n=2, dim=1))": torch.diff(pred, n=2, dim=1).mean(),
        "mean(log_softmax(pred, 1) * target)": (torch.log_softmax(pred, 1) * target).mean(),
        "size(pred, -1) * mse": 5 * F.mse_loss(pred, target),
        "mean([1, 2, 0.5, 1, 3] * abs(pred - target))": (
            torch.tensor([1, 2, 0.5, 1, 3]) * (pred - target).abs()
        ).mean(),
    }
    for source, expected in cases.items():
        assert torch.allclose(lossdsl.compile(source)(pred, target), expected, atol=1e-6), source
