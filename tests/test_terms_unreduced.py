"""``reduction="none"`` of every catalogue term that has ``reduction`` (DESIGN.md §3.1, §5),
each term function called on its own, in float64, against a reference written here (torch's
``reduction="none"`` where torch has the term, else the formula): the values in the documented
shape (pred's, or one per sample, box, anchor or sequence); ``"sum"`` their sum and ``"mean"``
their plain mean, except class-weighted or ignoring ``cross_entropy`` (divided by the counted
targets' weights), ``ctc`` (each sequence divided by its target length first) and a mask
(divided by its sum); weight multiplied in, masked positions exactly 0 with NaN there kept
from value and gradient; gradcheck; half precision; an empty batch gives empty values.
"""

from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from test_terms_boxes import torchvision_ciou, torchvision_diou, torchvision_giou

import lossdsl
from lossdsl.terms import (
    boxes, classification, contrastive, distribution, keras, ranking, regression,
    regularisation, sequence,
)

D = torch.float64
ROWS = (lambda n: (n, 4))  # the shape of (n, 4) inputs' elementwise values


def _gen(n):  # one stream per batch size: make(3) and make(0) are fixed inputs
    return torch.Generator().manual_seed(1000 + n)


def _randn(g, *shape, scale=1.0):
    return scale * torch.randn(*shape, generator=g, dtype=D)


def _rand(g, *shape, low=0.0, high=1.0):
    return low + (high - low) * torch.rand(*shape, generator=g, dtype=D)


@dataclass
class Case:
    fn: Callable
    make: Callable  # batch size n -> the term's inputs (float64)
    ref: Callable  # the inputs -> the unreduced values
    shape: Callable  # n -> the documented shape of the values
    hyper: dict = field(default_factory=dict)
    grad: tuple = ("pred",)
    mean_of: Callable | None = None  # (values, inputs) -> "mean"; None: the plain mean


def _inputs(*shape, names=("pred", "target"), scale=1.0, low=None, high=None, target=None):
    """``make``: normal (or uniform in [low, high]) float64 tensors of shape (n, *shape)."""
    def make(n):
        g = _gen(n)
        out = {k: _randn(g, n, *shape, scale=scale) if low is None else _rand(g, n, *shape, low=low, high=high)
               for k in names}
        return out if target is None else {**out, "target": target(g, n)}
    return make


def _elementwise(fn, ref, make=None, **hyper):
    """A weighted elementwise term on (n, 4); ``ref(p, t)``."""
    return Case(fn, make or _inputs(4, low=-2.0, high=2.0), lambda pred, target, **kw: ref(pred, target, **kw),
                ROWS, hyper)


def _adaptive_ref(p, t, scale=0.5, counted=None):
    """delta from the batch: the mean of abs(e), weighted by the mask where one is given."""
    a = (p - t).abs()
    delta = scale * (a.mean() if counted is None else (counted * a).sum() / counted.sum())
    return torch.where(a <= delta, 0.5 * a**2, delta * (a - 0.5 * delta))


def _focal_ref(x, t, gamma=2.0, alpha=0.25):
    p = torch.sigmoid(x)
    p_t, a_t = p * t + (1 - p) * (1 - t), alpha * t + (1 - alpha) * (1 - t)
    return a_t * (1 - p_t) ** gamma * F.binary_cross_entropy_with_logits(x, t, reduction="none")


LABELLED = _inputs(4, names=("pred",), low=-3.0, high=3.0,
                   target=lambda g, n: torch.randint(0, 2, (n, 4), generator=g).to(D))
ELEMENTWISE = {
    "mse": _elementwise(regression.mse, lambda p, t: F.mse_loss(p, t, reduction="none")),
    "mae": _elementwise(regression.mae, lambda p, t: F.l1_loss(p, t, reduction="none")),
    "huber": _elementwise(regression.huber, lambda p, t: F.huber_loss(p, t, reduction="none", delta=0.7), delta=0.7),
    "smooth_l1": _elementwise(
        regression.smooth_l1, lambda p, t: F.smooth_l1_loss(p, t, reduction="none", beta=0.6), beta=0.6),
    "adaptive_huber": _elementwise(regression.adaptive_huber, _adaptive_ref),
    "log_cosh": _elementwise(regression.log_cosh, lambda p, t: torch.log(torch.cosh(p - t))),
    "quantile": _elementwise(regression.quantile, lambda p, t: torch.maximum(0.3 * (t - p), -0.7 * (t - p)), q=0.3),
    "charbonnier": _elementwise(regression.charbonnier, lambda p, t: torch.sqrt((p - t) ** 2 + 0.1**2), eps=0.1),
    "bce": _elementwise(classification.bce, lambda p, t: F.binary_cross_entropy(p, t, reduction="none"),
                        make=_inputs(4, low=0.05, high=0.95)),
    "bce_logits": _elementwise(
        classification.bce_logits, lambda x, t: F.binary_cross_entropy_with_logits(
            x, t, pos_weight=torch.tensor(2.0, dtype=x.dtype), reduction="none"), make=LABELLED, pos_weight=2.0),
    "focal": _elementwise(classification.focal, _focal_ref, make=LABELLED),
    "hinge": _elementwise(keras.hinge, lambda p, t: F.relu(0.5 - (2 * t - 1) * p), make=LABELLED, margin=0.5),
    "squared_hinge": _elementwise(keras.squared_hinge, lambda p, t: F.relu(1 - (2 * t - 1) * p) ** 2, make=LABELLED),
    "mape": _elementwise(keras.mape, lambda p, t: 100 * (p - t).abs() / t.abs(), make=_inputs(4, low=0.5, high=3.0)),
    "msle": _elementwise(keras.msle, lambda p, t: (torch.log1p(F.relu(p)) - torch.log1p(F.relu(t))) ** 2),
}

CLASS_WEIGHTS = [1.0, 3.0, 0.5]
W = torch.tensor(CLASS_WEIGHTS, dtype=D)


def _classes(pred_shape, target_shape=None, ignore=False):
    """Logits (n, *pred_shape) of 3 classes; class indices (n, *target_shape) or, without
    target_shape, probabilities over axis 1; ``ignore``: every third target is -1."""
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


def _focal_ce_ref(pred, target):
    log_py = F.log_softmax(pred, 1).gather(1, target[:, None])[:, 0]
    return -W[target] * (1 - log_py.exp()) ** 2 * log_py


def _diff(x, k):
    for _ in range(k):
        x = x[:, 1:] - x[:, :-1]
    return x


def _boxes(n):
    g = _gen(n)
    corners = [_rand(g, n, 2, 2, high=2.0) for _ in range(2)]
    pred, target = (torch.cat([c, c + _rand(g, n, 2, 2, low=0.3, high=1.5)], dim=-1) for c in corners)
    return {"pred": pred, "target": target}


def _info_nce_ref(anchor, positive, symmetric=False):
    logits = F.normalize(anchor, dim=1) @ F.normalize(positive, dim=1).T / 0.2
    labels = torch.arange(len(anchor))
    rows = F.cross_entropy(logits, labels, reduction="none")
    return 0.5 * (rows + F.cross_entropy(logits.T, labels, reduction="none")) if symmetric else rows


def _nt_xent_ref(anchor, positive, temperature=0.5):
    z, n = F.normalize(torch.cat([anchor, positive]), dim=1), len(anchor)
    out = []
    for i in range(2 * n):
        s = torch.stack([z[i] @ z[k] for k in range(2 * n) if k != i]) / temperature
        out.append(torch.logsumexp(s, 0) - z[i] @ z[(i + n) % (2 * n)] / temperature)
    return torch.stack(out)


def _ctc_inputs(n):
    g = _gen(n)
    return {"pred": F.log_softmax(_randn(g, 12, n, 5), dim=-1), "target": torch.randint(1, 5, (n, 4), generator=g),
            "input_lengths": torch.randint(8, 13, (n,), generator=g),
            "target_lengths": torch.randint(1, 5, (n,), generator=g)}


PAIRS = ("anchor", "positive")
PER_SAMPLE = {
    "cross_entropy": Case(classification.cross_entropy, _classes((3,), ()),
                          lambda pred, target: F.cross_entropy(pred, target, reduction="none"), lambda n: (n,)),
    "cross_entropy[weights,ignore]": Case(
        classification.cross_entropy, _classes((3,), (), ignore=True),
        lambda pred, target: F.cross_entropy(pred, target, weight=W, ignore_index=-1, reduction="none"),
        lambda n: (n,), {"class_weights": CLASS_WEIGHTS, "ignore_index": -1},
        mean_of=lambda values, target, **_: values.sum() / W[target[target != -1]].sum()),
    "cross_entropy[class_dim=-1]": Case(
        classification.cross_entropy, _classes((2, 3), (2,)),
        lambda pred, target: F.cross_entropy(pred.movedim(-1, 1), target, reduction="none"),
        lambda n: (n, 2), {"class_dim": -1}),
    "cross_entropy[probabilities]": Case(  # torch's mean over samples: plain, even with class weights
        classification.cross_entropy, _classes((3, 2)),
        lambda pred, target: F.cross_entropy(pred, target, weight=W, label_smoothing=0.1, reduction="none"),
        lambda n: (n, 2), {"class_weights": CLASS_WEIGHTS, "label_smoothing": 0.1}),
    "focal_ce": Case(classification.focal_ce, _classes((3,), ()), _focal_ce_ref, lambda n: (n,),
                     {"class_weights": CLASS_WEIGHTS}),
    "vae_kl": Case(distribution.vae_kl, _inputs(3, 2, names=("mu", "logvar")),
                   lambda mu, logvar: -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum((1, 2)), lambda n: (n,),
                   grad=("mu", "logvar")),
    "triplet": Case(ranking.triplet, _inputs(4, names=("anchor", "positive", "negative")),
                    lambda **i: F.triplet_margin_loss(**i, margin=2.0, reduction="none"), lambda n: (n,),
                    {"margin": 2.0}, grad=("anchor", "positive", "negative")),
    "cosine_distance": Case(
        ranking.cosine_distance, _inputs(5, 2),
        lambda pred, target: 1 - (pred * target).sum(1) / (pred.norm(dim=1) * target.norm(dim=1)),
        lambda n: (n, 2), {"dim": 1}),
    "categorical_hinge": Case(
        keras.categorical_hinge,
        _inputs(4, names=("pred",), target=lambda g, n: F.one_hot(torch.arange(n) % 4, 4).to(D)),
        lambda pred, target: F.relu(1 + ((1 - target) * pred).amax(-1) - (target * pred).sum(-1)), lambda n: (n,)),
    "distill_kl": Case(
        distribution.distill_kl, _inputs(4, 2, scale=3.0),
        lambda pred, target: 4.0 * F.kl_div(F.log_softmax(pred / 2, 1), F.log_softmax(target / 2, 1),
                                            reduction="none", log_target=True).sum(1),
        lambda n: (n, 2), {"temperature": 2.0}, grad=("pred", "target")),
    "giou": Case(boxes.giou, _boxes, lambda pred, target: torchvision_giou(pred, target), lambda n: (n, 2)),
    "diou": Case(boxes.diou, _boxes, lambda pred, target: torchvision_diou(pred, target)[0], lambda n: (n, 2)),
    "ciou": Case(boxes.ciou, _boxes, lambda pred, target: torchvision_ciou(pred, target), lambda n: (n, 2)),
    "info_nce": Case(contrastive.info_nce, _inputs(5, names=PAIRS), _info_nce_ref, lambda n: (n,),
                     {"temperature": 0.2}, grad=PAIRS),
    "info_nce[symmetric]": Case(
        contrastive.info_nce, _inputs(5, names=PAIRS), lambda **i: _info_nce_ref(**i, symmetric=True),
        lambda n: (n,), {"temperature": 0.2, "symmetric": True}, grad=PAIRS),
    "nt_xent": Case(contrastive.nt_xent, _inputs(5, names=PAIRS), _nt_xent_ref, lambda n: (2 * n,), grad=PAIRS),
    "ctc": Case(sequence.ctc, _ctc_inputs,
                lambda pred, target, **lengths: F.ctc_loss(pred.log_softmax(-1), target, **lengths, reduction="none"),
                lambda n: (n,), mean_of=lambda values, target_lengths, **_: (values / target_lengths).mean()),
}

OTHER_ELEMENTWISE = {
    "gaussian_nll": Case(
        distribution.gaussian_nll,  # one variance per sample, as torch allows
        lambda n: {**_inputs(4)(n), "var": _rand(_gen(n + 1), n, low=0.2, high=2.0)},
        lambda pred, target, var: F.gaussian_nll_loss(pred, target, var, reduction="none"), ROWS,
        grad=("pred", "var")),
    "poisson_nll": Case(
        distribution.poisson_nll, _inputs(4, low=-1.0, high=2.0),
        lambda pred, target: F.poisson_nll_loss(pred, target, log_input=True, full=False, reduction="none"), ROWS),
    "margin_ranking": Case(
        ranking.margin_ranking, _inputs(4, names=("pos", "neg")),
        lambda pos, neg: F.margin_ranking_loss(pos, neg, torch.ones_like(pos), margin=0.5, reduction="none"),
        ROWS, {"margin": 0.5}, grad=("pos", "neg")),
    "out_of_bounds": Case(
        regularisation.out_of_bounds, _inputs(4, names=("pred",), low=-1.0, high=2.0),
        lambda pred: F.relu(-0.2 - pred) ** 2 + F.relu(pred - 1) ** 2, ROWS,
        {"lower": -0.2, "upper": 1.0, "power": 2}),
    "temporal_diff": Case(sequence.temporal_diff, _inputs(5, 2),
                          lambda pred, target: (_diff(pred, 2) - _diff(target, 2)).abs() ** 1.5,
                          lambda n: (n, 3, 2), {"order": 2, "p": 1.5}),
    "tv": Case(sequence.tv, _inputs(5, 2, names=("pred",)), lambda pred: _diff(pred, 1) ** 2, lambda n: (n, 4, 2),
               {"p": 2.0}),
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
    assert got.dtype == D and tuple(got.shape) == case.shape(3)
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


def _left_out(given):
    """A weight with a zero and a 0/1 mask (one, the other, or both), and the kept positions;
    with both, the weight is NaN where the mask is 0 (e.g. 1 / count of an empty bin)."""
    weight, mask = _rand(_gen(50), 3, 4, low=0.5, high=2.0), torch.ones(3, 4, dtype=D)
    weight[0, 1], mask[1, 2], mask[2, 0] = 0.0, 0.0, 0.0
    weight[1, 2] = float("nan") if given == "both" else weight[1, 2]
    weight, mask = (None if given == "mask" else weight), (None if given == "weight" else mask)
    keep = torch.ones(3, 4, dtype=torch.bool)
    for x in (weight, mask):
        keep = keep if x is None else keep & (x != 0)
    return weight, mask, keep


@pytest.mark.parametrize("given", ["weight", "mask", "both"])
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_weight_multiplied_in_and_masked_positions_exactly_zero(name, given):
    case = ELEMENTWISE[name]
    clean = case.make(3)
    weight, mask, keep = _left_out(given)
    dirty = {k: torch.where(keep, v, float("nan")) for k, v in clean.items()}
    pred = dirty["pred"].clone().requires_grad_()
    got = _call(case, {**dirty, "pred": pred}, "none", weight=weight, mask=mask)
    expected = torch.zeros(3, 4, dtype=D)
    w = 1.0 if weight is None else weight[keep]
    expected[keep] = w * case.ref(**{k: v[keep] for k, v in clean.items()})
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
    coeffs = _rand(_gen(99), *case.shape(3), low=-1.0, high=1.0)

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
    assert got.dtype == dtype and tuple(got.shape) == case.shape(3)
    # computed in float32 from the rounded inputs: only the last rounding to dtype remains
    want = case.ref(**{k: v.to(D) if v.is_floating_point() else v for k, v in inputs.items()})
    tol = 2**-8 if dtype == torch.bfloat16 else 2**-10
    torch.testing.assert_close(got.to(D), want, rtol=tol, atol=tol * float(want.abs().max()))


@pytest.mark.parametrize("name", list(CASES))
def test_empty_batch_gives_empty_values(name):
    case = CASES[name]
    inputs = case.make(0)
    got = _call(case, inputs, "none")
    assert got.numel() == 0 and tuple(got.shape) == case.shape(0)
    assert float(_call(case, inputs, "mean")) == 0.0


def test_vae_kl_of_one_sample_is_one_value():
    mu, logvar = torch.tensor([0.5, -1.0], dtype=D), torch.tensor([0.2, 0.1], dtype=D)
    got = distribution.vae_kl(mu, logvar, reduction="none")
    assert got.shape == ()
    torch.testing.assert_close(got, -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum())
