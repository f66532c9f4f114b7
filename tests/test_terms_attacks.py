"""Hostile and careless uses of the term catalogue and of custom terms.

Each test holds the catalogue to a promise of DESIGN.md §4, §5, §8: a value the contract
defines, or a failure that is a ``LossDSLError`` naming the term with a caret and a hint.
Every value is checked against a formula or ``torch.nn.functional`` written here.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl import LossArgumentError, LossDSLError, LossInputError


def _located(err: LossDSLError, term: str) -> None:
    """The error names the term, shows the line with a caret and gives a hint."""
    text = str(err)
    assert term in text, text
    assert "^" in text and err.span is not None, text
    assert err.hint, text


# --- custom terms whose function returns the wrong thing ----------------------------------


@pytest.mark.parametrize("result, expected", [(torch.tensor(3), 1.5), (torch.tensor(True), 0.5)])
def test_custom_term_with_an_integer_result_is_not_truncated(result, expected):
    """``0.5*mine`` with ``mine`` = 3 is 1.5 (or a refusal that names the term), never 1."""
    crit = lossdsl.compile("0.5*mine", terms={"mine": lambda pred, target: result})
    try:
        total = crit(torch.zeros(2), torch.zeros(2))
    except LossDSLError as err:
        _located(err, "mine")
        return
    assert total.is_floating_point() and float(total) == expected, total


def test_custom_term_of_shape_one_gives_a_0dim_loss():
    """A term returning ``shape (1,)``: the loss is still 0-dim (DESIGN §2), or refused."""
    crit = lossdsl.compile("mine", terms={"mine": lambda pred, target: ((pred - target) ** 2).mean().reshape(1)})
    pred, target = torch.tensor([1.0, 3.0]), torch.zeros(2)
    try:
        total = crit(pred, target)
    except LossDSLError as err:
        _located(err, "mine")
        return
    assert total.shape == () and float(total) == 5.0, total


BAD_RESULTS = {
    "vector": lambda pred, target: (pred - target) ** 2,
    "none": lambda pred, target: None,
    "string": lambda pred, target: "loss",
    "generator": lambda pred, target: (x for x in [pred.mean()]),
    "complex": lambda pred, target: torch.tensor(1 + 2j),
}


@pytest.mark.parametrize("kind", sorted(BAD_RESULTS))
@pytest.mark.parametrize("source", ["mine", "0.5*mine + mse"])
def test_custom_term_with_a_result_that_is_no_loss_is_a_loss_error(kind, source):
    crit = lossdsl.compile(source, terms={"mine": BAD_RESULTS[kind]})
    with pytest.raises(LossDSLError) as info:
        crit(torch.randn(4, 3), torch.randn(4, 3))
    _located(info.value, "mine")


def test_custom_term_that_raises_keeps_its_exception_and_names_the_term():
    """The user's own exception comes through (the traceback points into their code), with a
    note naming the term."""
    def broken(pred, target):
        raise ZeroDivisionError("inside the user's term")

    crit = lossdsl.compile("0.5*broken + mse", terms={"broken": broken})
    with pytest.raises(ZeroDivisionError) as info:
        crit(torch.zeros(2), torch.zeros(2))
    assert any("broken" in note for note in getattr(info.value, "__notes__", []))


def test_custom_term_that_is_nan_is_reported_at_the_term():
    crit = lossdsl.compile("mse + 0.5*bad", terms={"bad": lambda pred, target: torch.tensor(float("nan"))})
    with pytest.raises(lossdsl.NonFiniteLossError) as info:
        crit(torch.zeros(2), torch.ones(2))
    _located(info.value, "bad")


def test_registration_refuses_builtin_names_and_star_parameters():
    with pytest.raises(ValueError, match="built-in function"):
        lossdsl.term(name="mean")(lambda pred: pred.mean())
    with pytest.raises(ValueError, match="already registered"):
        lossdsl.term(name="huber")(lambda pred: pred.mean())

    def star(pred, *rest):
        return pred.mean()

    def keywords(pred, **rest):
        return pred.mean()

    for func in (star, keywords):
        with pytest.raises(TypeError, match="cannot take"):
            lossdsl.term(func)
    assert "star" not in lossdsl.registry and "keywords" not in lossdsl.registry
    with pytest.raises(LossDSLError, match="built-in function"):
        lossdsl.compile("mean", terms={"mean": lambda pred: pred.mean()})


def test_unannotated_hyperparameter_takes_any_literal():
    """Without an annotation a hyperparameter is ``Any``: the literal arrives as written."""
    def scaled(pred, *, s=1.0):
        return s * pred.mean()

    crit = lossdsl.compile("scaled(s=3)", terms={"scaled": scaled})
    assert float(crit(torch.tensor([1.0, 2.0]))) == pytest.approx(4.5)


# --- errors of built-in terms --------------------------------------------------------------


@pytest.mark.parametrize("source", ["sum(mae(reduction='none'))", "mse(target=a) + sum(mae(reduction='none'))"])
def test_term_error_inside_a_tensor_expression_has_a_caret(source):
    crit = lossdsl.compile(source)
    extra = {"a": torch.zeros(4, 3)} if "target=a" in source else {}
    with pytest.raises(LossInputError) as info:
        crit(torch.zeros(4, 3), torch.zeros(4, 2), **extra)
    _located(info.value, "mae")


def test_term_error_in_a_weighted_sum_has_a_caret():
    crit = lossdsl.compile("0.5*huber + mse")
    with pytest.raises(LossInputError) as info:
        crit(torch.zeros(4, 3), torch.zeros(4, 3), weight=torch.ones(2, 4, 3))
    _located(info.value, "huber")
    assert info.value.span == (4, 9)


def test_feature_distance_with_integer_features_is_a_loss_error():
    crit = lossdsl.compile("feature_distance")
    with pytest.raises(LossInputError) as info:
        crit(torch.randn(4, 3), torch.randn(4, 3), net=lambda x: (x * 10).long())
    _located(info.value, "feature_distance")


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_cross_entropy_class_indices_of_another_integer_dtype(dtype):
    logits = torch.randn(4, 2, dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    crit = lossdsl.compile("cross_entropy")
    try:
        value = crit(logits, labels.to(dtype))
    except LossDSLError as err:
        _located(err, "cross_entropy")
        return
    torch.testing.assert_close(value, F.cross_entropy(logits, labels))


def test_focal_ce_takes_int32_class_indices():
    logits = torch.randn(5, 3, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 1, 0])
    logp = logits.log_softmax(1).gather(1, labels[:, None])[:, 0]
    expected = (-(1 - logp.exp()) ** 2 * logp).mean()
    torch.testing.assert_close(lossdsl.compile("focal_ce")(logits, labels.int()), expected)


# --- hyperparameters -------------------------------------------------------------------------

ACCEPTED = [
    "info_nce(temperature=1e-4)", "nt_xent(temperature=1e4)", "ssim(window=255)", "ssim(window=1)",
    "focal(alpha=1)", "focal(alpha=-5)", "focal(gamma=0)", "bce(eps=0.4999999)",
    "cross_entropy(label_smoothing=1.0)", "quantile(q=1e-300)", "out_of_bounds(lower=none, upper=none)",
]
REFUSED = [
    "info_nce(temperature=9.9e-5)", "distill_kl(temperature=10000.1)", "ssim(window=256)", "ssim(window=2)",
    "ssim(window=11.0)", "focal(alpha=1.0001)", "focal(gamma=-0.1)", "bce(eps=0.5)", "bce(eps=0)",
    "quantile(q=0)", "quantile(q=1)", "huber(delta=-0.0)", "huber(delta=true)", "huber(delta='1')",
    "tversky(alpha=1.1)", "focal_tversky(gamma=0)", "temporal_diff(order=0)", "tv(p=0)",
    "cross_entropy(label_smoothing=1.01)", "cross_entropy(class_weights=[1, -1])",
    "cross_entropy(class_weights=[])", "bce_logits(pos_weight=-1)", "ctc(blank=-1)", "l2_reg(biases=1)",
    "out_of_bounds(lower=0, upper=1, power=0.5)", "cosine_distance(dim=1.5)", "hinge(targets='x')",
    "huber(reduction='avg')", "huber(delta=1e400)",
]


@pytest.mark.parametrize("source", ACCEPTED)
def test_hyperparameters_at_their_bounds_compile(source):
    lossdsl.compile(source)


@pytest.mark.parametrize("source", REFUSED)
def test_hyperparameters_beyond_their_bounds_are_refused_with_a_caret(source):
    with pytest.raises(LossDSLError) as info:
        lossdsl.compile(source)
    text = str(info.value)
    assert "^" in text and info.value.hint, text


def test_out_of_bounds_with_lower_above_upper_is_refused():
    with pytest.raises(LossArgumentError) as info:
        lossdsl.compile("out_of_bounds(lower=2, upper=1)")
    assert "^" in str(info.value)


def test_charbonnier_tiny_eps_keeps_the_gradient_finite():
    try:
        crit = lossdsl.compile("charbonnier(eps=1e-23)")
    except LossArgumentError:
        return
    pred = torch.zeros(4, requires_grad=True)
    value = crit(pred, torch.zeros(4))
    value.backward()
    # d/de sqrt(e^2 + eps^2) = e / sqrt(e^2 + eps^2) = 0 at e = 0, and the value is eps
    assert torch.equal(pred.grad, torch.zeros(4)), pred.grad
    assert float(value.detach()) == pytest.approx(1e-23, abs=1e-22)


@pytest.mark.parametrize("name", ["dice", "jaccard", "tversky"])
def test_overlap_terms_with_a_tiny_smooth_stay_finite(name):
    try:
        crit = lossdsl.compile(f"{name}(smooth=1e-46, from_logits=false)")
    except LossArgumentError:
        return
    empty = torch.zeros(2, 1, 4, 4)
    # (0 + smooth) / (0 + smooth) = 1: the loss of two empty masks is 0
    assert float(crit(empty, empty)) == 0.0


# --- dtypes, devices and compilation ---------------------------------------------------------


def test_bce_half_precision_gradient_at_0_and_1_is_finite_with_an_eps_float16_can_hold():
    """The gradient at p = 0, t = 1 is -1/(N eps): 250 for eps = 1e-3 (README, Terms; the
    default eps gives 2.5e6, beyond float16)."""
    pred = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float16, requires_grad=True)
    target = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float16)
    value = lossdsl.compile("bce(eps=1e-3)")(pred, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(pred.grad).all(), pred.grad
    expected = torch.tensor([-250.0, 250.0, 0.25, -0.25])  # -t/p + (1-t)/(1-p), p clamped, over N
    torch.testing.assert_close(pred.grad.float(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
@pytest.mark.parametrize("source", ["mse", "bce_logits", "cross_entropy", "ssim", "giou", "tv"])
def test_pred_that_is_not_real_floating_is_refused_at_the_term(source, dtype):
    pred = torch.ones(2, 3, 12, 12) if source != "giou" else torch.ones(3, 4)
    target = torch.zeros(2, 12, 12, dtype=torch.long) if source == "cross_entropy" else torch.zeros_like(pred)
    with pytest.raises(LossInputError) as info:
        lossdsl.compile(source)(pred.to(dtype), target)
    _located(info.value, source)
    assert str(dtype) in str(info.value)


@pytest.mark.parametrize("what", ["target", "weight", "mask"])
def test_inputs_on_another_device_are_refused(what):
    pred = torch.randn(4, 3)
    given = {"target": torch.randn(4, 3), "weight": None, "mask": None}
    given[what] = torch.ones(4, 3, device="meta")
    extra = {k: v for k, v in given.items() if k != "target" and v is not None}
    with pytest.raises(LossInputError, match="meta") as info:
        lossdsl.compile("huber")(pred, given["target"], **extra)
    assert "^" in str(info.value) and info.value.hint


def test_target_of_another_float_dtype_is_computed_in_preds_dtype():
    pred, target = torch.randn(5, 3), torch.randn(5, 3, dtype=torch.float64)
    value = lossdsl.compile("huber(delta=0.5)")(pred, target)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, F.huber_loss(pred, target.float(), delta=0.5))


def test_weight_that_broadcasts_per_column_and_a_nan_weight_under_a_zero_mask():
    pred, target = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    weight = torch.tensor([1.0, float("nan"), 2.0], dtype=torch.float64)
    mask = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    got = lossdsl.compile("sum(mse(reduction='none'))")(pred, target, weight=weight, mask=mask)
    e2 = (pred - target) ** 2
    torch.testing.assert_close(got, (e2[:, 0] + 2 * e2[:, 2]).sum())


def test_ctc_under_torch_compile_equals_eager():
    """Without fullgraph: torch's ctc_loss has a data-dependent shape inside (README, Terms)."""
    torch.manual_seed(0)
    log_probs = torch.randn(8, 2, 5).log_softmax(-1)
    labels = torch.tensor([[1, 2, 3], [4, 1, 2]])
    lengths = {"input_lengths": torch.tensor([8, 7]), "target_lengths": torch.tensor([3, 2])}
    crit = lossdsl.compile("ctc")
    compiled = torch.compile(crit, backend="eager")
    expected = F.ctc_loss(log_probs, labels, lengths["input_lengths"], lengths["target_lengths"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(compiled(log_probs, labels, **lengths), expected)
