"""``reduction="none"`` of every catalogue term that has ``reduction`` (DESIGN.md §3.1, §5),
each term function called on its own, in float64, against a reference written here
(``torch.nn.functional``'s ``reduction="none"`` where torch has the term, else the formula):

- the values equal the reference, in the documented shape (elementwise terms: pred's;
  per-sample terms: one value per sample, box, anchor or sequence);
- ``"sum"`` is the sum of the values, and ``"mean"`` their plain mean except where the
  term's mean is another one: class-weighted or ignoring ``cross_entropy`` (divided by the
  counted targets' weights) and ``ctc`` (each sequence divided by its target length first);
- ``weight`` is multiplied in, masked positions are exactly 0, NaN there reaches neither
  value nor gradient; a fractional mask multiplies in too;
- gradcheck of the values summed with random coefficients; half precision keeps the dtype;
  an empty batch gives an empty tensor of the documented shape.
"""

from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from test_terms_boxes import torchvision_ciou, torchvision_diou, torchvision_giou

import lossdsl
from lossdsl.terms import (
    boxes, classification, contrastive, ctc, distill, distribution, keras, ranking, regression,
    regularisation, sequence,
)

D = torch.float64


def _gen(n):
    return torch.Generator().manual_seed(1000 + n)


def _randn(g, *shape, scale=1.0):
    return scale * torch.randn(*shape, generator=g, dtype=D)


def _rand(g, *shape, low=0.0, high=1.0):
    return low + (high - low) * torch.rand(*shape, generator=g, dtype=D)


@dataclass
class Case:
    fn: Callable
    make: Callable  # batch size -> the term's inputs (float64)
    ref: Callable  # the inputs -> the unreduced values
    shape: Callable  # the inputs -> the documented shape of the values
    hyper: dict = field(default_factory=dict)
    grad: tuple = ("pred",)
    mean_of: Callable | None = None  # the values and inputs -> "mean"; None: the plain mean
    weighted: bool = False  # takes weight and mask


def _pt(low=-2.0, high=2.0, target=None):
    def make(n):
        g = _gen(n)
        t = target(g, n) if target else _rand(g, n, 4, low=low, high=high)
        return {"pred": _rand(g, n, 4, low=low, high=high), "target": t}
    return make


def _same(**inputs):
    return tuple(inputs["pred"].shape)


def _elementwise(fn, ref, make=None, **hyper):
    return Case(fn, make or _pt(), ref, _same, hyper, weighted=True)


def _adaptive_ref(pred, target, scale=0.5, counted=None):
    """delta from the batch: the mean of abs(e), weighted by the mask where one is given."""
    e = pred - target
    delta = scale * (e.abs().mean() if counted is None else (counted * e.abs()).sum() / counted.sum())
    return torch.where(e.abs() <= delta, 0.5 * e**2, delta * (e.abs() - 0.5 * delta))


def _focal_ref(pred, target, gamma=2.0, alpha=0.25):
    p = torch.sigmoid(pred)
    p_t = p * target + (1 - p) * (1 - target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    return a_t * (1 - p_t) ** gamma * F.binary_cross_entropy_with_logits(pred, target, reduction="none")


def _labels(g, n):
    return torch.randint(0, 2, (n, 4), generator=g).to(D)


def _y(target):
    return 2 * target - 1


ELEMENTWISE = {
    "mse": _elementwise(regression.mse, lambda pred, target: F.mse_loss(pred, target, reduction="none")),
    "mae": _elementwise(regression.mae, lambda pred, target: F.l1_loss(pred, target, reduction="none")),
    "huber": _elementwise(
        regression.huber, lambda pred, target: F.huber_loss(pred, target, delta=0.7, reduction="none"), delta=0.7),
    "smooth_l1": _elementwise(
        regression.smooth_l1, lambda pred, target: F.smooth_l1_loss(pred, target, beta=0.6, reduction="none"),
        beta=0.6),
    "adaptive_huber": _elementwise(regression.adaptive_huber, _adaptive_ref),
    "log_cosh": _elementwise(regression.log_cosh, lambda pred, target: torch.log(torch.cosh(pred - target))),
    "quantile": _elementwise(
        regression.quantile,
        lambda pred, target: torch.maximum(0.3 * (target - pred), (0.3 - 1) * (target - pred)), q=0.3),
    "charbonnier": _elementwise(
        regression.charbonnier, lambda pred, target: torch.sqrt((pred - target) ** 2 + 0.1**2), eps=0.1),
    "bce": _elementwise(
        classification.bce, lambda pred, target: F.binary_cross_entropy(pred, target, reduction="none"),
        make=_pt(0.05, 0.95)),
    "bce_logits": _elementwise(
        classification.bce_logits,
        lambda pred, target: F.binary_cross_entropy_with_logits(
            pred, target, pos_weight=torch.tensor(2.0, dtype=pred.dtype), reduction="none"),
        make=_pt(-3, 3, target=_labels), pos_weight=2.0),
    "focal": _elementwise(classification.focal, _focal_ref, make=_pt(-3, 3, target=_labels)),
    "hinge": _elementwise(
        keras.hinge, lambda pred, target: torch.clamp(0.5 - _y(target) * pred, min=0),
        make=_pt(-2, 2, target=_labels), margin=0.5),
    "squared_hinge": _elementwise(
        keras.squared_hinge, lambda pred, target: torch.clamp(1 - _y(target) * pred, min=0) ** 2,
        make=_pt(-2, 2, target=_labels)),
    "mape": _elementwise(
        keras.mape, lambda pred, target: 100 * (pred - target).abs() / target.abs(), make=_pt(0.5, 3)),
    "msle": _elementwise(
        keras.msle, lambda pred, target: (torch.log1p(pred.clamp(min=0)) - torch.log1p(target.clamp(min=0))) ** 2),
}


def _ce_make(pred_shape, target_shape=None, ignore=False):
    """Logits (n, *pred_shape) and 3 classes; class indices (n, *target_shape) or, without a
    target_shape, probabilities over axis 1."""
    def make(n):
        g = _gen(n)
        pred = _randn(g, n, *pred_shape, scale=2)
        if target_shape is None:
            return {"pred": pred, "target": torch.softmax(_randn(g, n, *pred_shape), dim=1)}
        target = torch.randint(0, 3, (n, *target_shape), generator=g)
        if ignore:
            target.view(-1)[::3] = -1
        return {"pred": pred, "target": target}
    return make


def _ce_weighted_mean(values, pred, target):
    w = torch.tensor([1.0, 3.0, 0.5], dtype=D)
    valid = target != -1
    return values.sum() / w[target[valid]].sum()


def _focal_ce_ref(pred, target):
    log_py = F.log_softmax(pred, 1).gather(1, target[:, None])[:, 0]
    return -torch.tensor([1.0, 3.0, 0.5], dtype=D)[target] * (1 - log_py.exp()) ** 2 * log_py


def _vae_ref(mu, logvar):
    return -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum((1, 2))


def _cosine_ref(pred, target):
    return 1 - (pred * target).sum(1) / (pred.norm(dim=1) * target.norm(dim=1))


def _diff(x, k):
    for _ in range(k):
        x = x[:, 1:] - x[:, :-1]
    return x


def _shape_without(axis):
    return lambda **inputs: tuple(s for i, s in enumerate(inputs["pred"].shape) if i != axis % inputs["pred"].dim())


def _boxes_make(n):
    g = _gen(n)

    def box():
        corner = _rand(g, n, 2, 2, high=2.0)
        return torch.cat([corner, corner + _rand(g, n, 2, 2, low=0.3, high=1.5)], dim=-1)

    return {"pred": box(), "target": box()}


def _pairs_make(n):
    g = _gen(n)
    return {"anchor": _randn(g, n, 5), "positive": _randn(g, n, 5)}


def _info_nce_ref(anchor, positive, temperature=0.2, symmetric=False):
    logits = F.normalize(anchor, dim=1) @ F.normalize(positive, dim=1).T / temperature
    labels = torch.arange(len(anchor))
    rows = F.cross_entropy(logits, labels, reduction="none")
    return 0.5 * (rows + F.cross_entropy(logits.T, labels, reduction="none")) if symmetric else rows


def _nt_xent_ref(anchor, positive, temperature=0.5):
    z = F.normalize(torch.cat([anchor, positive]), dim=1)
    n = len(anchor)
    out = []
    for i in range(2 * n):
        s = torch.stack([z[i] @ z[k] for k in range(2 * n) if k != i]) / temperature
        out.append(torch.logsumexp(s, 0) - z[i] @ z[(i + n) % (2 * n)] / temperature)
    return torch.stack(out)


def _ctc_make(n):
    g = _gen(n)
    return {
        "pred": F.log_softmax(_randn(g, 12, n, 5), dim=-1),
        "target": torch.randint(1, 5, (n, 4), generator=g),
        "input_lengths": torch.randint(8, 13, (n,), generator=g),
        "target_lengths": torch.randint(1, 5, (n,), generator=g),
    }


def _ctc_ref(pred, target, input_lengths, target_lengths):
    return F.ctc_loss(pred.log_softmax(-1), target, input_lengths, target_lengths, reduction="none")


PER_SAMPLE = {
    "cross_entropy": Case(classification.cross_entropy, _ce_make((3,), ()),
                          lambda pred, target: F.cross_entropy(pred, target, reduction="none"), _shape_without(1)),
    "cross_entropy[weights,ignore]": Case(
        classification.cross_entropy, _ce_make((3,), (), ignore=True),
        lambda pred, target: F.cross_entropy(
            pred, target, weight=torch.tensor([1.0, 3.0, 0.5], dtype=D), ignore_index=-1, reduction="none"),
        _shape_without(1), {"class_weights": [1.0, 3.0, 0.5], "ignore_index": -1}, mean_of=_ce_weighted_mean),
    "cross_entropy[class_dim=-1]": Case(
        classification.cross_entropy, _ce_make((2, 3), (2,)),
        lambda pred, target: F.cross_entropy(pred.movedim(-1, 1), target, reduction="none"),
        _shape_without(-1), {"class_dim": -1}),
    "cross_entropy[probabilities]": Case(  # torch's mean over samples: plain, even with class weights
        classification.cross_entropy, _ce_make((3, 2)),
        lambda pred, target: F.cross_entropy(
            pred, target, weight=torch.tensor([1.0, 3.0, 0.5], dtype=D), label_smoothing=0.1, reduction="none"),
        _shape_without(1), {"class_weights": [1.0, 3.0, 0.5], "label_smoothing": 0.1}),
    "focal_ce": Case(classification.focal_ce, _ce_make((3,), ()), _focal_ce_ref, _shape_without(1),
                     {"class_weights": [1.0, 3.0, 0.5]}),
    "vae_kl": Case(distribution.vae_kl, lambda n: {"mu": _randn(_gen(n), n, 3, 2), "logvar": _randn(_gen(n + 1), n, 3, 2)},
                   _vae_ref, lambda mu, logvar: (len(mu),), grad=("mu", "logvar")),
    "triplet": Case(
        ranking.triplet, lambda n: {k: _randn(_gen(n + i), n, 4) for i, k in enumerate(["anchor", "positive", "negative"])},
        lambda anchor, positive, negative: F.triplet_margin_loss(anchor, positive, negative, margin=2.0, reduction="none"),
        lambda anchor, **_: (len(anchor),), {"margin": 2.0}, grad=("anchor", "positive", "negative")),
    "cosine_distance": Case(ranking.cosine_distance, lambda n: {"pred": _randn(_gen(n), n, 5, 2), "target": _randn(_gen(n + 1), n, 5, 2)},
                            _cosine_ref, _shape_without(1), {"dim": 1}),
    "categorical_hinge": Case(
        keras.categorical_hinge,
        lambda n: {"pred": _randn(_gen(n), n, 4), "target": F.one_hot(torch.arange(n) % 4, 4).to(D)},
        lambda pred, target: torch.clamp(1 + ((1 - target) * pred).amax(-1) - (target * pred).sum(-1), min=0),
        _shape_without(-1)),
    "distill_kl": Case(
        distill.distill_kl, lambda n: {"pred": _randn(_gen(n), n, 4, 2, scale=3), "target": _randn(_gen(n + 1), n, 4, 2, scale=3)},
        lambda pred, target: 4.0 * F.kl_div(F.log_softmax(pred / 2, 1), F.log_softmax(target / 2, 1),
                                            reduction="none", log_target=True).sum(1),
        _shape_without(1), {"temperature": 2.0}, grad=("pred", "target")),
    "giou": Case(boxes.giou, _boxes_make, lambda pred, target: torchvision_giou(pred, target), _shape_without(-1)),
    "diou": Case(boxes.diou, _boxes_make, lambda pred, target: torchvision_diou(pred, target)[0], _shape_without(-1)),
    "ciou": Case(boxes.ciou, _boxes_make, lambda pred, target: torchvision_ciou(pred, target), _shape_without(-1)),
    "info_nce": Case(contrastive.info_nce, _pairs_make, _info_nce_ref, lambda anchor, **_: (len(anchor),),
                     {"temperature": 0.2}, grad=("anchor", "positive")),
    "info_nce[symmetric]": Case(
        contrastive.info_nce, _pairs_make, lambda **i: _info_nce_ref(**i, symmetric=True),
        lambda anchor, **_: (len(anchor),), {"temperature": 0.2, "symmetric": True}, grad=("anchor", "positive")),
    "nt_xent": Case(contrastive.nt_xent, _pairs_make, _nt_xent_ref, lambda anchor, **_: (2 * len(anchor),),
                    grad=("anchor", "positive")),
    "ctc": Case(ctc.ctc, _ctc_make, _ctc_ref, lambda pred, **_: (pred.shape[1],),
                mean_of=lambda values, target_lengths, **_: (values / target_lengths).mean()),
}

OTHER_ELEMENTWISE = {
    "gaussian_nll": Case(
        distribution.gaussian_nll,
        lambda n: {**_pt()(n), "var": _rand(_gen(n + 1), n, low=0.2, high=2.0)},
        lambda pred, target, var: F.gaussian_nll_loss(pred, target, var, reduction="none"), _same,
        grad=("pred", "var")),
    "poisson_nll": Case(
        distribution.poisson_nll, _pt(-1, 2),
        lambda pred, target: F.poisson_nll_loss(pred, target, log_input=True, full=False, reduction="none"), _same),
    "margin_ranking": Case(
        ranking.margin_ranking, lambda n: {"pos": _randn(_gen(n), n, 4), "neg": _randn(_gen(n + 1), n, 4)},
        lambda pos, neg: F.margin_ranking_loss(pos, neg, torch.ones_like(pos), margin=0.5, reduction="none"),
        lambda pos, **_: tuple(pos.shape), {"margin": 0.5}, grad=("pos", "neg")),
    "out_of_bounds": Case(
        regularisation.out_of_bounds, lambda n: {"pred": _rand(_gen(n), n, 4, low=-1, high=2)},
        lambda pred: torch.clamp(-0.2 - pred, min=0) ** 2 + torch.clamp(pred - 1, min=0) ** 2, _same,
        {"lower": -0.2, "upper": 1.0, "power": 2}),
    "temporal_diff": Case(
        sequence.temporal_diff, lambda n: {"pred": _randn(_gen(n), n, 5, 2), "target": _randn(_gen(n + 1), n, 5, 2)},
        lambda pred, target: (_diff(pred, 2) - _diff(target, 2)).abs() ** 1.5,
        lambda pred, **_: (len(pred), 3, 2), {"order": 2, "p": 1.5}),
    "tv": Case(sequence.tv, lambda n: {"pred": _randn(_gen(n), n, 5, 2)}, lambda pred: _diff(pred, 1) ** 2,
               lambda pred: (len(pred), 4, 2), {"p": 2.0}),
}

CASES = {**ELEMENTWISE, **PER_SAMPLE, **OTHER_ELEMENTWISE}
# ciou's trade-off weight is detached by design (as torchvision's): its gradient is compared
# with the reference's, whose alpha is detached too, instead of with finite differences
DETACHED = {"ciou"}
GRADCHECK_HYPER = {"adaptive_huber": {"scale": 10.0}}  # all quadratic: the detached delta drops out
WITHOUT_REDUCTION = {"dice", "tversky", "focal_tversky", "jaccard", "ssim", "kl_div", "pairwise_ranking",
                     "l2_reg", "feature_distance"}


def _call(case, inputs, reduction, **extra):
    return case.fn(**inputs, **{**case.hyper, **extra}, reduction=reduction)


def test_every_term_with_reduction_is_covered_and_offers_none():
    builtin = [n for n in lossdsl.registry.names() if lossdsl.registry[n].func.__module__.startswith("lossdsl.terms.")]
    with_reduction = {n for n in builtin if any(h.name == "reduction" for h in lossdsl.registry[n].hyper)}
    covered = {name.split("[")[0] for name in CASES} | {"l1"}
    assert with_reduction == covered
    assert lossdsl.registry["l1"].func is regression.mae
    for name in with_reduction:
        (hyper,) = [h for h in lossdsl.registry[name].hyper if h.name == "reduction"]
        assert hyper.describe() == "reduction: 'mean' | 'sum' | 'none' = 'mean'", name
    assert not WITHOUT_REDUCTION & with_reduction


@pytest.mark.parametrize("name", list(CASES))
def test_none_equals_the_reference_in_the_documented_shape(name):
    case = CASES[name]
    inputs = case.make(3)
    got = _call(case, inputs, "none")
    assert got.dtype == D and tuple(got.shape) == case.shape(**inputs)
    torch.testing.assert_close(got, case.ref(**inputs), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(CASES))
def test_sum_and_mean_of_the_values(name):
    case = CASES[name]
    inputs = case.make(3)
    values = _call(case, inputs, "none")
    torch.testing.assert_close(_call(case, inputs, "sum"), values.sum(), rtol=1e-12, atol=1e-12)
    mean = _call(case, inputs, "mean")
    if case.mean_of is None:
        torch.testing.assert_close(mean, values.mean(), rtol=1e-12, atol=1e-12)
    else:  # a mean of its own, which is not the plain mean of the values
        torch.testing.assert_close(mean, case.mean_of(values, **inputs), rtol=1e-12, atol=1e-12)
        assert not torch.isclose(mean, values.mean())


def test_ignored_targets_give_exactly_zero():
    case = PER_SAMPLE["cross_entropy[weights,ignore]"]
    inputs = case.make(6)
    values = _call(case, inputs, "none")
    ignored = inputs["target"] == -1
    assert ignored.any() and (values[ignored] == 0).all() and (values[~ignored] > 0).all()


def _left_out(n=3):
    """A weight with a zero, a 0/1 mask, and NaN (also in weight) where either leaves out."""
    g = _gen(50)
    weight = _rand(g, n, 4, low=0.5, high=2.0)
    weight[0, 1] = 0.0
    mask = torch.ones(n, 4, dtype=D)
    mask[1, 2] = mask[2, 0] = 0.0
    weight[1, 2] = float("nan")  # e.g. 1 / count of an empty bin, where the mask is 0
    return weight, mask, (weight != 0) & (mask != 0)


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_weight_multiplied_in_and_masked_positions_exactly_zero(name):
    case = ELEMENTWISE[name]
    clean = case.make(3)
    weight, mask, keep = _left_out()
    dirty = {k: torch.where(keep, v, float("nan")) for k, v in clean.items()}
    pred = dirty["pred"].clone().requires_grad_()
    got = _call(case, {**dirty, "pred": pred}, "none", weight=weight, mask=mask)
    expected = torch.zeros(3, 4, dtype=D)
    expected[keep] = weight[keep] * case.ref(**{k: v[keep] for k, v in clean.items()})
    assert tuple(got.shape) == (3, 4)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert (got[~keep] == 0).all()
    (got * _rand(_gen(7), 3, 4, low=0.5, high=1.5)).sum().backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad[~keep] == 0).all()
    assert (pred.grad[keep] != 0).any()


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_fractional_mask_and_broadcast_weight_multiply_in(name):
    case = ELEMENTWISE[name]
    inputs = case.make(3)
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=D)  # one per column, broadcast
    mask = torch.tensor([[1.0], [0.5], [0.0]], dtype=D)
    got = _call(case, inputs, "none", weight=weight, mask=mask)
    keep = (torch.broadcast_to(mask, (3, 4)) != 0)
    expected = torch.zeros(3, 4, dtype=D)
    extra = {"counted": mask.expand(3, 4)[keep]} if name == "adaptive_huber" else {}
    expected[keep] = (mask * weight).expand(3, 4)[keep] * case.ref(**{k: v[keep] for k, v in inputs.items()}, **extra)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # the masked mean is sum(mask * weight * l) / sum(mask), not the plain mean of the values
    mean = _call(case, inputs, "mean", weight=weight, mask=mask)
    torch.testing.assert_close(mean, got.sum() / (4 * mask.sum()), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_call(case, inputs, "sum", weight=weight, mask=mask), got.sum())


def _with(inputs, names, tensors):
    return {**inputs, **dict(zip(names, tensors))}


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_of_the_values(name):
    case = CASES[name]
    inputs = case.make(3)
    hyper = {**case.hyper, **GRADCHECK_HYPER.get(name, {})}
    coeffs = _rand(_gen(99), *case.shape(**inputs), low=-1.0, high=1.0)

    def total(*tensors):
        return (case.fn(**_with(inputs, case.grad, tensors), **hyper, reduction="none") * coeffs).sum()

    leaves = [inputs[k].detach().clone().requires_grad_() for k in case.grad]
    if name in DETACHED:
        got = torch.autograd.grad(total(*leaves), leaves)
        want = torch.autograd.grad((case.ref(**_with(inputs, case.grad, leaves)) * coeffs).sum(), leaves)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    else:
        assert torch.autograd.gradcheck(total, leaves)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(CASES))
def test_half_precision_keeps_the_dtype(name, dtype):
    case = CASES[name]
    inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in case.make(3).items()}
    got = _call(case, inputs, "none")
    assert got.dtype == dtype and tuple(got.shape) == case.shape(**inputs)
    # computed in float32 from the rounded inputs: only the last rounding to dtype remains
    want = case.ref(**{k: v.to(D) if v.is_floating_point() else v for k, v in inputs.items()})
    tol = 2**-8 if dtype == torch.bfloat16 else 2**-10
    torch.testing.assert_close(got.to(D), want, rtol=tol, atol=tol * float(want.abs().max()))


@pytest.mark.parametrize("name", list(CASES))
def test_empty_batch_gives_empty_values(name):
    case = CASES[name]
    inputs = case.make(0)
    got = _call(case, inputs, "none")
    assert got.numel() == 0 and tuple(got.shape) == case.shape(**inputs)
    assert float(_call(case, inputs, "mean")) == 0.0


def test_vae_kl_of_one_sample_is_one_value():
    mu, logvar = torch.tensor([0.5, -1.0], dtype=D), torch.tensor([0.2, 0.1], dtype=D)
    got = distribution.vae_kl(mu, logvar, reduction="none")
    assert got.shape == ()
    torch.testing.assert_close(got, -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum())


def test_mean_and_sum_are_unchanged_by_the_new_option():
    # the reductions keep their values: the plain torch reductions of the same inputs
    g = _gen(5)
    pred, target = _randn(g, 4, 6), _randn(g, 4, 6)
    torch.testing.assert_close(regression.mse(pred, target), F.mse_loss(pred, target))
    torch.testing.assert_close(regression.mae(pred, target, reduction="sum"), F.l1_loss(pred, target, reduction="sum"))
