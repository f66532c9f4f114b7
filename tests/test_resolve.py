"""Names, kinds, hyperparameters, input routes and constant folding (DESIGN.md §3, §4)."""

import pytest
import torch

import lossdsl
from lossdsl import LossArgumentError, LossNameError, LossTypeError
from lossdsl.resolve.ir import Route, Term


def names(source, **kw):
    return lossdsl.compile(source, **kw).term_names


# --- term names (§4) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, expected",
    [
        # function names, repeats numbered in source order
        ("0.7*huber(delta=1) + 0.3*temporal_diff", ["huber", "temporal_diff"]),
        ("mse + mae + mse + mse", ["mse", "mae", "mse_2", "mse_3"]),
        # a binding that is exactly one call is logged under the binding's name
        ("recon = huber(delta=2)\nrecon + huber + huber", ["recon", "huber", "huber_2"]),
        # a binding used twice is one term, computed once
        ("a = mse\na + 2*a", ["a"]),
        # a named composite is logged after its parts
        ("a = mse + mae\n2*a + mse", ["mse", "mae", "a", "mse_2"]),
        ("r = huber\nc = r + mae\nc", ["r", "mae", "c"]),
        # a binding to a number or a schedule is not a term
        ("k = 2\nw = linear(0, 1, steps=10)\nk*w*mse", ["mse"]),
        # watch(...) terms are logged
        ("mse + watch(mae)", ["mse", "mae"]),
        ("a = mae\nmse + watch(a)", ["a", "mse"]),
        # a user's binding name wins over a generated repeat name
        ("mse_2 = mse + mse\nmse_2", ["mse", "mse_3", "mse_2"]),
        ("mse_2 = mae\nmse + mse + mse_2", ["mse_2", "mse", "mse_3"]),
        # balance keeps the names of its inner terms
        ('x = mse\nbalance(x, mae, huber, method="ema")', ["x", "mae", "huber"]),
    ],
)
def test_term_names(source, expected):
    assert names(source) == expected


def test_watch_terms_have_weight_zero():
    crit = lossdsl.compile("0.5*mse + watch(mae) + watch(huber)")
    crit(torch.zeros(3), torch.ones(3))
    assert {k: float(v) for k, v in crit.weights.items()} == {"mse": 0.5, "mae": 0.0, "huber": 0.0}
    # the watched terms are computed: mean|0-1| = 1 and huber(e=1, delta=1) = 0.5
    assert {k: float(v) for k, v in crit.terms.items()} == {"mse": 1.0, "mae": 1.0, "huber": 0.5}


# --- name resolution order: binding -> registered term -> built-in --------------------------


def test_a_binding_shadows_a_registered_term():
    crit = lossdsl.compile("mse = mae\nmse")
    pred, target = torch.tensor([0.0, 0.0]), torch.tensor([3.0, 1.0])
    assert float(crit(pred, target)) == 2.0  # mean |e|, not mean e^2 = 5
    assert crit.term_names == ["mse"]


def test_a_binding_may_name_the_term_it_calls():
    crit = lossdsl.compile('mse = mse(reduction="sum")\n0.5*mse')
    assert float(crit(torch.zeros(2), torch.tensor([1.0, 2.0]))) == 0.5 * 5.0


def test_built_in_names_cannot_be_bound():
    with pytest.raises(LossNameError, match="'watch' is a built-in function"):
        lossdsl.compile("watch = mse\nwatch")


def test_binding_errors():
    with pytest.raises(LossNameError, match="'a' is bound twice"):
        lossdsl.compile("a = mse\na = mae\na")
    with pytest.raises(LossNameError, match="'a' is used before it is defined"):
        lossdsl.compile("a = a + mse\na")
    with pytest.raises(LossArgumentError, match="'a' is a binding and takes no arguments"):
        lossdsl.compile("a = mse\na(1)")
    with pytest.raises(LossNameError, match="binding 'k' is never used"):
        lossdsl.compile("k = 2\nmse")


# --- hyperparameters ------------------------------------------------------------------------


def hyper(source, index=0):
    return dict(lossdsl.check(source).logged[index].node.hyper)


def test_hyperparameters_are_validated_and_defaulted():
    assert hyper("huber(delta=2)") == {"delta": 2.0, "reduction": "mean"}
    assert hyper("huber") == {"delta": 1.0, "reduction": "mean"}
    # positional arguments of a term fill its hyperparameters in order
    assert hyper("huber(0.5)")["delta"] == 0.5


def test_a_hyperparameter_from_a_const_binding():
    assert hyper("k = 2\nhuber(delta=k)")["delta"] == 2.0
    # a folded integer constant stays an integer where the parameter wants one
    assert hyper("k = 0.5*4\ntemporal_diff(order=k)")["order"] == 2
    assert isinstance(hyper("k = 0.5*4\ntemporal_diff(order=k)")["order"], int)


def test_a_hyperparameter_cannot_be_a_loss_or_a_schedule():
    with pytest.raises(LossTypeError, match="'delta' of huber must be a number, not a loss"):
        lossdsl.compile("huber(mse)")
    with pytest.raises(LossArgumentError, match="'delta' of huber is a hyperparameter"):
        lossdsl.compile("w = linear(0, 1, steps=5)\nhuber(delta=w)")


def test_a_keyword_naming_a_tensor_parameter_needs_an_input_name():
    for literal in ("1", '"pred"', "true", "none", "[1, 2]"):
        with pytest.raises(LossArgumentError, match="'pred' is a tensor input of mse"):
            lossdsl.compile(f"mse(pred={literal})")


# --- input routes ---------------------------------------------------------------------------


def test_input_routes():
    resolved = lossdsl.check("mse(pred=out.depth, target=image)")
    (item,) = resolved.logged
    term = item.node
    assert isinstance(term, Term)
    assert term.routes == (
        Route("pred", ("out", "depth"), required=True),
        Route("target", ("image",), required=True),
        Route("weight", ("weight",), required=False),
        Route("mask", ("mask",), required=False),
    )
    assert resolved.inputs_read == {"out", "image", "weight", "mask"}


def test_an_explicit_route_is_required_even_with_a_default():
    (item,) = lossdsl.check("mse(weight=w)").logged
    assert Route("weight", ("w",), required=True) in item.node.routes


def test_private_segments_are_refused_anywhere_in_a_path():
    for path in ("_x", "out._x", "out.a._b"):
        with pytest.raises(LossArgumentError, match="reads a private name"):
            lossdsl.compile(f"mse(pred={path})")


# --- kinds ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    ["mse * mae", "mse / mae", "2 + mse", "mse ^ 2", "2 ^ mse", "linear(0, 1, steps=5) * mse",
     "clamp(linear(0, 1, steps=5), min=0.5) * mse", "mse ^ linear(1, 2, steps=5)", "-mse",
     "detach(mse) * mae", "max(mse, 1)", "log(mse)"],
)
def test_loss_kinds_are_allowed(source):
    assert isinstance(lossdsl.compile(source), lossdsl.Loss)


@pytest.mark.parametrize(
    "source", ["2", "linear(0, 1, steps=5)", "2 * linear(0, 1, steps=5) + 1", "k = 3\nk", "-(1)"]
)
def test_a_program_without_a_loss_term_is_refused(source):
    with pytest.raises(LossTypeError, match="the expression has no loss term"):
        lossdsl.compile(source)


def test_schedule_arguments_must_be_numbers():
    with pytest.raises(LossTypeError, match="'start' of linear must be a number, not a loss"):
        lossdsl.compile("linear(mse, 1, steps=10) * mae")


# --- constant folding -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, weight",
    [
        ("2*0.5*mse", 1.0),
        ("(1 + 1)*mse", 2.0),
        ("(-2^2 + 5)*mse", 1.0),  # '^' binds tighter than unary minus: -2^2 = -4
        ("2^-1*mse", 0.5),
        ("2^3^2/512*mse", 1.0),  # right-associative: 2^(3^2) = 512
        ("mse/(4/2)", 0.5),
        ("(max(1, 3) - min(2, 5) + clamp(7, max=2) + abs(-1) + sqrt(4) + exp(0) + log(1))*mse", 7.0),
        ("k = 3\nm = k*2\nm*mse", 6.0),
    ],
)
def test_constant_sub_expressions_fold(source, weight):
    crit = lossdsl.compile(source)
    crit(torch.zeros(2), torch.ones(2))
    assert float(crit.weights["mse"]) == pytest.approx(weight, rel=1e-12)


def test_canonical_and_given_source():
    resolved = lossdsl.check("0.7*huber(delta=1)+0.3*temporal_diff()  # card")
    assert resolved.source == "0.7*huber(delta=1)+0.3*temporal_diff()  # card"
    assert resolved.canonical == "0.7 * huber(delta=1) + 0.3 * temporal_diff"


# --- watch(...) only logs -------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "log(watch(mae)) + mse",  # would be log(0)
        "mse / watch(mae)",  # would divide by 0
        "2*watch(mae) + mse",
        "mse * (watch(mae) + watch(huber))",
        "w = watch(mae)\nmse * w",
        "detach(watch(mae)) + mse",
        "watch(watch(mae)) + mse",
        'balance(watch(mae), mse, method="ema")',
    ],
)
def test_watch_cannot_be_part_of_a_calculation(source):
    with pytest.raises(LossTypeError, match=r"watch\(\.\.\.\) only logs a term"):
        lossdsl.compile(source)


def test_watch_may_be_added_or_bound():
    pred, target = torch.zeros(3), torch.full((3,), 2.0)
    for source in ("w = watch(mae)\nmse + w", "mse - watch(mae)", "mse + (watch(mae) + watch(huber))"):
        crit = lossdsl.compile(source)
        assert float(crit(pred, target)) == 4.0  # mean e^2 alone; the watched terms add 0
        assert float(crit.terms["mae"]) == 2.0 and float(crit.weights["mae"]) == 0.0
