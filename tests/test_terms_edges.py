"""The catalogue at the edges of its inputs, through lossdsl.compile: an empty batch, NaN or
garbage where weight or mask is 0, and inputs of the wrong kind (integer, bool or complex
values, class indices out of range). Each term is taken with the inputs of its first case in
the family files (test_terms_*.CASES), so a term added there is covered here too; a term
those tables leave out (feature_distance, whose input is a network) has its case in
EDGE_CASES below.
"""

import warnings

import pytest
import test_terms_classification
import test_terms_keras
import test_terms_regression
import torch
from test_terms_common import CASES, CATALOGUE, _name
from test_terms_image import TwoLayers, _images
from torch import Tensor

import lossdsl
from lossdsl.tools.catalogue import builtin_specs

FIRST_CASE = {}
for _src in CASES:
    FIRST_CASE.setdefault(_name(_src), _src)

BUILTIN = sorted(spec.name for spec in builtin_specs())
WEIGHTED = [n for n, (inputs, _) in CATALOGUE.items() if "weight" in inputs]
# the terms whose CASES use the elementwise reference: every one with weight and mask
WEIGHTED_CASES = {
    **test_terms_regression.CASES, **test_terms_classification.CASES, **test_terms_keras.CASES,
}


def _feature_case():
    return {**_images(5, (2, 3, 9, 9)), "net": TwoLayers().double().requires_grad_(False)}


# terms without a case in test_terms_common.CASES: (make, reference, extreme) as there; the
# edge tests call only make
EDGE_CASES = {"feature_distance": (_feature_case, None, None)}
# the batch axis where it is not an input's first: ctc's log-probabilities are (T, N, C)
BATCH_AXIS = {"ctc": {"pred": 1}}


def _case(name):
    if name in EDGE_CASES:
        return name, EDGE_CASES[name]
    if name not in FIRST_CASE:
        pytest.fail(f"term '{name}' has no case in the test_terms_* CASES tables")
    src = FIRST_CASE[name]
    return src, CASES[src]


def _emptied(inputs, axes=None):
    """The batch axis of every tensor input cut to length 0: the first axis, or the one
    ``axes`` names for that input (BATCH_AXIS); other inputs (a network) as they are."""

    def cut(x, axis):
        if not isinstance(x, Tensor):
            return x
        y = x.detach().narrow(axis, 0, 0) if x.dim() else x.detach()
        return y.requires_grad_() if x.is_floating_point() else y

    axes = axes or {}
    return {
        k: [cut(p, 0) for p in v] if isinstance(v, list) else cut(v, axes.get(k, 0))
        for k, v in inputs.items()
    }


def _leaves(inputs):
    out = []
    for v in inputs.values():
        for x in v if isinstance(v, list) else [v]:
            if isinstance(x, Tensor) and x.requires_grad:
                out.append(x)
    return out


# -- an empty batch ------------------------------------------------------------------------


def _assert_exact_zero_quietly(src, inputs):
    leaves = _leaves(inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning is a failure
        out = lossdsl.compile(src)(**inputs)
        grads = torch.autograd.grad(out, leaves, allow_unused=True)
    assert out.shape == () and out.item() == 0.0, (src, out)
    for leaf, g in zip(leaves, grads):
        assert g is None or (g.shape == leaf.shape and torch.isfinite(g).all()), (src, g)


@pytest.mark.parametrize("name", BUILTIN)
def test_empty_batch_gives_exactly_zero_with_finite_gradient(name):
    src, (make, _, _) = _case(name)
    _assert_exact_zero_quietly(src, _emptied(make(), BATCH_AXIS.get(name)))


def test_empty_batch_of_images_is_zero_for_ssim_not_one():
    # ssim is 1 - mean(SSIM map): taken literally, an empty batch would be 1 - 0 = 1 (or NaN).
    # The catalogue's rule wins: 1 - SSIM is a loss per pixel, and the mean over no pixels
    # is 0, so an empty batch adds nothing to a mixture, as with every other term
    pred = torch.rand(0, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    target = torch.rand(0, 3, 16, 16, dtype=torch.float64)
    _assert_exact_zero_quietly("ssim", {"pred": pred, "target": target})
    _assert_exact_zero_quietly("0.84*ssim + 0.16*l1", {"pred": pred, "target": target})


def test_empty_batch_of_pairs_is_zero_for_the_contrastive_terms():
    # N = 0 has no anchors and so no negatives: nothing to pull or push, the loss is 0
    # (one pair, N = 1, has no negatives either and is 0 by the formula, see test_terms_contrastive)
    for src in ("info_nce(symmetric=true)", "nt_xent"):
        anchor = torch.randn(0, 8, dtype=torch.float64, requires_grad=True)
        positive = torch.randn(0, 8, dtype=torch.float64, requires_grad=True)
        _assert_exact_zero_quietly(src, {"anchor": anchor, "positive": positive})


def test_empty_batch_of_sequences_is_zero_for_ctc_with_lists_and_concatenated_targets():
    pred = torch.randn(12, 0, 5, dtype=torch.float64).log_softmax(-1).requires_grad_()
    inputs = {"pred": pred, "target": torch.zeros(0, dtype=torch.long), "input_lengths": [], "target_lengths": []}
    _assert_exact_zero_quietly('ctc(reduction="sum")', inputs)
    _assert_exact_zero_quietly("ctc", inputs)


@pytest.mark.parametrize("which", ["weight", "mask"])
@pytest.mark.parametrize("name", WEIGHTED)
def test_empty_batch_with_weight_or_mask_is_zero(name, which):
    src, (make, _, _) = _case(name)
    inputs = _emptied(make())
    inputs[which] = torch.ones_like(inputs["pred"]).detach()
    _assert_exact_zero_quietly(src, inputs)


def test_empty_probability_targets_and_all_empty_mixture():
    pred = torch.zeros(0, 5, dtype=torch.float64, requires_grad=True)
    probabilities = torch.zeros(0, 5, dtype=torch.float64)
    _assert_exact_zero_quietly("cross_entropy", {"pred": pred, "target": probabilities})
    e = torch.zeros(0, 3, dtype=torch.float64, requires_grad=True)
    target = torch.zeros(0, 3, dtype=torch.float64)
    _assert_exact_zero_quietly("0.5*mse + 0.3*log_cosh + 0.2*mae", {"pred": e, "target": target})


# -- NaN, infinity or garbage where weight or mask is 0 ---------------------------------


def _row_shape(x):
    return (x.shape[0],) + (1,) * (x.dim() - 1)


@pytest.mark.parametrize("which", ["mask", "weight"])
@pytest.mark.parametrize("name", WEIGHTED)
def test_left_out_rows_holding_nan_change_nothing(name, which):
    src = next(s for s in WEIGHTED_CASES if _name(s) == name)
    make, reference, _ = WEIGHTED_CASES[src]
    inputs = make()
    pred, target = inputs["pred"], inputs["target"]
    rows = pred.shape[0]
    kept = torch.ones(rows, dtype=torch.bool)
    kept[[0, rows - 1]] = False
    zeros_at_left_out = kept.to(pred.dtype).reshape(_row_shape(pred))
    dirty_pred = pred.clone()
    dirty_pred[~kept] = float("nan")
    dirty_target = target.clone()
    dirty_target[~kept] = float("inf")

    leaf = dirty_pred.requires_grad_()
    out = lossdsl.compile(src)(leaf, dirty_target, **{which: zeros_at_left_out})
    (grad,) = torch.autograd.grad(out, leaf)

    # the reference on the kept rows alone: a masked mean is their mean; a weighted mean
    # divides their sum by every element, the left-out ones too
    clean = pred[kept].clone().requires_grad_()
    expected = reference(clean, target[kept])
    if which == "weight":
        expected = expected * kept.sum() / rows
    (expected_grad,) = torch.autograd.grad(expected, clean)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(grad).all()
    assert (grad[~kept] == 0).all()
    torch.testing.assert_close(grad[kept], expected_grad, rtol=1e-8, atol=1e-12)


def test_masked_nan_example():
    pred = torch.tensor([1.0, float("nan")], requires_grad=True)
    out = lossdsl.compile("mse")(pred, torch.zeros(2), mask=torch.tensor([1.0, 0.0]))
    out.backward()
    assert out.item() == 1.0
    assert pred.grad.tolist() == [2.0, 0.0]


def test_zero_weight_positions_may_hold_nan_weights_too():
    # a weight that is NaN where the mask is 0 does not leak either
    pred = torch.tensor([1.0, float("nan"), 3.0], requires_grad=True)
    weight = torch.tensor([2.0, float("nan"), 0.0])
    crit = lossdsl.compile("huber(weight=w, mask=m)")
    out = crit(pred, torch.zeros(3), w=weight, m=torch.tensor([1.0, 0.0, 1.0]))
    out.backward()
    # huber(1) = 0.5; (2 * 0.5 + 0 * huber(3)) / 2 counted elements
    assert out.item() == pytest.approx(0.5)
    assert torch.isfinite(pred.grad).all() and pred.grad[1] == 0 and pred.grad[2] == 0


@pytest.mark.parametrize("src", ["mse", "log_cosh", "charbonnier", "huber", "bce_logits", "focal"])
def test_float32_garbage_that_would_overflow_is_left_out(src):
    # padding filled with 1e30: its square overflows float32; left out, it is never computed
    pred = torch.tensor([[0.5, 1e30], [-0.25, -1e30]], requires_grad=True)
    target = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    out = lossdsl.compile(src)(pred, target, mask=mask)
    out.backward()
    alone = lossdsl.compile(src)(pred.detach()[:, :1].clone(), target[:, :1])
    torch.testing.assert_close(out.detach(), alone, rtol=1e-6, atol=0)
    assert torch.isfinite(pred.grad).all() and (pred.grad[:, 1] == 0).all()


# -- inputs of the wrong kind -----------------------------------------------------------


def _first_input(name):
    return lossdsl.registry[name].inputs[0].name


@pytest.mark.parametrize(
    "convert, words",
    [
        (lambda x: x.round().long(), "torch.int64"),
        (lambda x: x > 0, "torch.bool"),
        (lambda x: x.to(torch.complex128), "torch.complex128"),
    ],
    ids=["int64", "bool", "complex"],
)
@pytest.mark.parametrize("name", [n for n in BUILTIN if n != "l2_reg"])
def test_non_float_first_input_is_an_input_error_naming_the_dtype(name, convert, words):
    src, (make, _, _) = _case(name)
    inputs = make()
    which = _first_input(name)
    inputs[which] = convert(inputs[which])
    program = f"0.5 * {src}"
    with pytest.raises(lossdsl.LossInputError) as info:
        lossdsl.compile(program)(**inputs)
    err = info.value
    assert words in err.message and which in err.message
    assert f"{which}.float()" in err.hint
    # located at the term: its name in the message, the caret under it
    assert err.term == name and f"term '{name}'" in str(err)
    caret = next(line for line in str(err).splitlines() if line.strip().startswith("^"))
    assert caret.index("^") == 2 + program.index(src) and caret.count("^") == len(src)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64, torch.uint8])
def test_ctc_takes_integer_labels_and_lengths_and_refuses_other_kinds(index_dtype):
    # only pred must be floating: labels and lengths are counts, in any integer dtype
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(12, 3, 5, generator=g, dtype=torch.float64).log_softmax(-1)
    target = torch.randint(1, 5, (3, 4), generator=g)
    lengths = torch.tensor([12, 10, 7]), torch.tensor([4, 3, 2])
    crit = lossdsl.compile("ctc")
    got = crit(pred, target.to(index_dtype), input_lengths=lengths[0].to(index_dtype),
               target_lengths=lengths[1].to(index_dtype))
    expected = torch.nn.functional.ctc_loss(pred, target, *lengths)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    bad = [
        ({"target": target > 2}, "integer label sequences"),
        ({"target": target.to(torch.complex64)}, "integer label sequences"),
        ({"input_lengths": lengths[0] > 0}, "one integer length per sample"),
        ({"target_lengths": lengths[1].to(torch.complex64)}, "one integer length per sample"),
    ]
    for change, words in bad:
        inputs = {"target": target, "input_lengths": lengths[0], "target_lengths": lengths[1], **change}
        with pytest.raises(lossdsl.LossInputError, match=words) as info:
            crit(pred, **inputs)
        assert info.value.term == "ctc"


@pytest.mark.parametrize("src", ["cross_entropy", "focal_ce"])
@pytest.mark.parametrize("bad", [5, -1, 7])
def test_class_index_out_of_range_is_an_input_error_on_the_cpu(src, bad):
    pred = torch.randn(4, 5, dtype=torch.float64)
    target = torch.tensor([0, 4, bad, 2])
    program = f"mse(pred=aux, target=aux) + {src}"
    aux = torch.zeros(2)
    with pytest.raises(lossdsl.LossInputError) as info:
        lossdsl.compile(program)(pred, target, aux=aux)
    err = info.value
    assert err.term == src and f"class index {bad}" in err.message and "5 classes" in err.message
    caret = next(line for line in str(err).splitlines() if line.strip().startswith("^"))
    assert caret.index("^") == 2 + program.index(src)


def test_ignored_targets_are_not_out_of_range():
    pred = torch.randn(4, 5, dtype=torch.float64)
    target = torch.tensor([0, -100, 4, -100])
    got = lossdsl.compile("cross_entropy")(pred, target)
    torch.testing.assert_close(got, torch.nn.functional.cross_entropy(pred, target), rtol=1e-12, atol=0)
    # ignore_index inside the class range is an ordinary index; others still count
    labels = torch.tensor([2, 1, 2, 0])
    got = lossdsl.compile("cross_entropy(ignore_index=2)")(pred, labels)
    expected = torch.nn.functional.cross_entropy(pred, labels, ignore_index=2)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    with pytest.raises(lossdsl.LossInputError, match="class index -3"):
        lossdsl.compile("cross_entropy")(pred, torch.tensor([0, -100, -3, 1]))
    with pytest.raises(lossdsl.LossInputError, match="class index 5"):
        lossdsl.compile("cross_entropy(class_dim=-1)")(pred[None], torch.tensor([[0, -100, 5, 1]]))


def test_class_index_check_reads_nothing_on_meta():
    # no values to read there: the check stands aside (as it does on accelerators)
    pred = torch.empty(4, 5, device="meta")
    target = torch.empty(4, dtype=torch.long, device="meta")
    for src in ("cross_entropy", "focal_ce"):
        out = lossdsl.compile(src)(pred, target)
        assert out.device.type == "meta" and out.shape == ()
