"""Unusual tensors given to catalogue terms: integer and boolean targets, learnable weights,
float32 inputs far from 1, images without channels and targets made in inference mode.

Each test holds a term to DESIGN.md §5 (the value is the formula, computed in float32 for
float32 inputs) and §8 (bad input is a ``LossDSLError`` naming the term, never a bare torch
error), against a float64 reference written here.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl import LossDSLError, LossInputError

D = torch.float64


def _value_or_located_error(run, term: str):
    """The value of ``run()``, or ``None`` where it is a ``LossInputError`` naming ``term``
    with a caret and a hint: either is a kept promise, a bare torch error is not."""
    try:
        return run()
    except LossDSLError as err:
        assert isinstance(err, LossInputError), err
        assert term in str(err) and "^" in str(err) and err.hint, str(err)
        return None


# --- integer and boolean targets ---------------------------------------------------------


def _pairwise_reference(pred: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Mean over the pairs i < j of one list whose targets differ (DESIGN.md §5)."""
    t = target.double()
    i, j = torch.triu_indices(len(pred), len(pred), 1)
    differ = t[i] != t[j]
    hinge = F.relu(margin - torch.sign(t[i] - t[j]) * (pred[i] - pred[j]))
    return hinge[differ].mean()


def test_pairwise_ranking_of_uint8_relevance_grades_is_the_formula():
    pred = torch.tensor([0.3, 1.2, -0.4, 0.8, 0.1], dtype=D, requires_grad=True)
    grades = torch.tensor([3, 0, 2, 1, 0], dtype=torch.uint8)
    value = lossdsl.compile("pairwise_ranking")(pred, grades)
    (grad,) = torch.autograd.grad(value, pred)
    ref_pred = pred.detach().clone().requires_grad_()
    reference = _pairwise_reference(ref_pred, grades)
    (ref_grad,) = torch.autograd.grad(reference, ref_pred)
    torch.testing.assert_close(value, reference)
    torch.testing.assert_close(grad, ref_grad)


def test_pairwise_ranking_of_boolean_relevance_is_the_formula_or_names_the_term():
    pred = torch.tensor([0.3, 1.2, -0.4, 0.8], dtype=D)
    relevant = torch.tensor([True, False, True, False])
    value = _value_or_located_error(lambda: lossdsl.compile("pairwise_ranking")(pred, relevant), "pairwise_ranking")
    if value is not None:
        torch.testing.assert_close(value, _pairwise_reference(pred, relevant))


def _residual_reference(name: str, p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    e = p - t
    if name in ("mae", "l1", "mae(mask=m)"):
        return e.abs().mean()
    if name == "quantile":
        return torch.maximum(-0.5 * e, 0.5 * e).mean()
    if name == "charbonnier":
        return torch.sqrt(e * e + 1e-6).mean()
    if name == "log_cosh":
        return torch.log(torch.cosh(e)).mean()
    if name == "temporal_diff":
        return (e[:, 1:] - e[:, :-1]).abs().mean()
    if name == "gaussian_nll":
        return F.gaussian_nll_loss(p, t, torch.full_like(p, 0.5))
    assert name == "adaptive_huber"
    a, delta = e.abs(), 0.5 * e.abs().mean()
    return torch.where(a <= delta, 0.5 * a * a, delta * (a - 0.5 * delta)).mean()


@pytest.mark.parametrize("name", ["mae", "l1", "quantile", "charbonnier", "log_cosh",
                                  "temporal_diff", "adaptive_huber", "mae(mask=m)", "gaussian_nll"])
def test_terms_on_the_residual_take_a_boolean_target_as_mse_does(name):
    pred = torch.randn(4, 3, dtype=D, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([[True, False, True], [False, False, True], [True, True, False], [False, True, True]])
    # mse with the same target: a boolean target counts as 0/1 (the promise this test extends)
    torch.testing.assert_close(lossdsl.compile("mse")(pred, target), ((pred - target.double()) ** 2).mean())
    inputs = {"m": torch.ones(4, 3)} if "mask" in name else {}
    if name == "gaussian_nll":
        inputs = {"var": torch.full((4, 3), 0.5, dtype=D)}
    term = name.split("(")[0]
    value = _value_or_located_error(lambda: lossdsl.compile(name)(pred, target, **inputs), term)
    if value is not None:
        torch.testing.assert_close(value, _residual_reference(name, pred, target.double()))


# --- a learnable weight -------------------------------------------------------------------

_PRED = [2.0, -1.0, 0.5, 3.0]
_TARGET = [0.0, 1.0, 1.0, 0.0]
_WEIGHT = [1.0, 0.0, 0.5, 2.0]  # position 1 has weight 0


def _per_element(name: str, p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if name == "bce_logits":
        return F.binary_cross_entropy_with_logits(p, t, reduction="none")
    if name == "focal":  # torchvision's sigmoid_focal_loss, alpha 0.25, gamma 2
        s = torch.sigmoid(p)
        p_t = s * t + (1 - s) * (1 - t)
        a_t = 0.25 * t + 0.75 * (1 - t)
        return a_t * (1 - p_t) ** 2 * F.binary_cross_entropy_with_logits(p, t, reduction="none")
    if name == "hinge":
        return F.relu(1 - (2 * t - 1) * p)
    if name == "squared_hinge":
        return F.relu(1 - (2 * t - 1) * p) ** 2
    if name == "bce":  # on probabilities: pred passed through a sigmoid first in the test
        return F.binary_cross_entropy(p, t, reduction="none")
    assert name == "charbonnier"
    return torch.sqrt((p - t) ** 2 + 1e-6)


@pytest.mark.parametrize("name", ["bce_logits", "focal", "hinge", "squared_hinge", "charbonnier", "bce"])
def test_gradient_of_a_learnable_weight_where_it_is_zero(name):
    pred, target = torch.tensor(_PRED, dtype=D), torch.tensor(_TARGET, dtype=D)
    if name == "bce":
        pred = torch.sigmoid(pred)
    weight = torch.tensor(_WEIGHT, dtype=D, requires_grad=True)
    value = lossdsl.compile(name)(pred, target, weight=weight)
    (grad,) = torch.autograd.grad(value, weight)
    per_element = _per_element(name, pred, target)
    # d mean(w * l) / d w_i = l_i / N
    torch.testing.assert_close(value, (weight.detach() * per_element).mean())
    kept = weight.detach() != 0
    torch.testing.assert_close(grad[kept], per_element[kept] / 4)
    left_out = float(grad[1])
    assert left_out == 0.0 or math.isclose(left_out, float(per_element[1]) / 4, rel_tol=1e-9), left_out


# --- subnormal weights: a weighted mean is a ratio, whatever the scale of the weights ------


@pytest.mark.parametrize("name", ["mse", "mae", "huber"])
def test_a_mask_of_subnormal_values_gives_the_masked_mean(name):
    pred, target = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.zeros(4)
    mask = torch.full((4,), 1e-40)  # subnormal in float32, equal weights: the plain mean
    per_element = {"mse": pred**2, "mae": pred.abs(), "huber": F.huber_loss(pred, target, reduction="none")}[name]
    value = lossdsl.compile(f"{name}(mask=m)")(pred, target, m=mask)
    # subnormal products keep some 5 digits: the ratio is the plain mean to about 1e-5
    torch.testing.assert_close(value.double(), per_element.double().mean(), rtol=1e-3, atol=0)


def test_cross_entropy_with_subnormal_class_weights_is_the_weighted_mean():
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    value = lossdsl.compile("cross_entropy(class_weights=[1e-40, 2e-40, 1e-40])")(logits, labels)
    weights = torch.tensor([1.0, 2.0, 1.0], dtype=D)  # the same ratios, a normal scale
    torch.testing.assert_close(value.double(), F.cross_entropy(logits.double(), labels, weight=weights),
                               rtol=1e-4, atol=0)


# --- float32 inputs whose squares leave float32's range --------------------------------------


def _boxes(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    pred = torch.tensor([[0.0, 0.0, 2.0, 1.0], [1.0, 1.0, 3.0, 4.0]], dtype=D) * scale
    target = torch.tensor([[0.5, 0.0, 2.0, 2.0], [0.0, 1.0, 3.0, 3.0]], dtype=D) * scale
    return pred, target


def _box_parts(p, t, eps=1e-7):
    iw = (torch.minimum(p[:, 2], t[:, 2]) - torch.maximum(p[:, 0], t[:, 0])).clamp(min=0)
    ih = (torch.minimum(p[:, 3], t[:, 3]) - torch.maximum(p[:, 1], t[:, 1])).clamp(min=0)
    inter = iw * ih
    union = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1]) + (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1]) - inter
    cw = torch.maximum(p[:, 2], t[:, 2]) - torch.minimum(p[:, 0], t[:, 0])
    ch = torch.maximum(p[:, 3], t[:, 3]) - torch.minimum(p[:, 1], t[:, 1])
    return inter / (union + eps), union, cw, ch


def _giou(pred, target):
    iou, union, cw, ch = _box_parts(pred, target)
    return (1 - iou + (cw * ch - union) / (cw * ch + 1e-7)).mean()


def _diou_per_box(p, t):
    iou, _, cw, ch = _box_parts(p, t)
    dx = (p[:, 0] + p[:, 2] - t[:, 0] - t[:, 2]) / 2
    dy = (p[:, 1] + p[:, 3] - t[:, 1] - t[:, 3]) / 2
    return 1 - iou + (dx**2 + dy**2) / (cw**2 + ch**2 + 1e-7), iou


def _ciou(pred, target):
    diou, iou = _diou_per_box(pred, target)
    ap = torch.atan((pred[:, 2] - pred[:, 0]) / (pred[:, 3] - pred[:, 1]))
    at = torch.atan((target[:, 2] - target[:, 0]) / (target[:, 3] - target[:, 1]))
    v = 4 / math.pi**2 * (at - ap) ** 2
    return (diou + v / (1 - iou + v + 1e-7) * v).mean()


def _nt_xent(anchor, positive, temperature=0.5):
    z = F.normalize(torch.cat([anchor, positive]), dim=1)
    n = len(anchor)
    logits = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    return F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))


def _ssim(pred, target, window=3, sigma=1.5, data_range=1e20):
    x = torch.arange(window, dtype=D) - window // 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(pred.shape[1], 1, window, window)
    blur = lambda v: F.conv2d(v, kernel, groups=pred.shape[1])  # noqa: E731
    mx, my = blur(pred), blur(target)
    vx, vy, cov = blur(pred * pred) - mx**2, blur(target * target) - my**2, blur(pred * target) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return 1 - ((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean()


def _randn(*shape, seed=0):
    return torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(seed))


S = 1e20  # squares of 1e20 (1e40) leave float32; every value below stays within it
OVERFLOW_CASES = {
    "charbonnier": (lambda: dict(pred=_randn(4, 3) * S, target=_randn(4, 3, seed=1) * S),
                    lambda pred, target: torch.sqrt((pred - target) ** 2 + 1e-6).mean()),
    "cosine_distance": (lambda: dict(pred=_randn(4, 3) * S, target=_randn(4, 3, seed=1) * S),
                        lambda pred, target: (1 - F.cosine_similarity(pred, target, dim=-1)).mean()),
    "info_nce": (lambda: dict(anchor=_randn(4, 3) * S, positive=_randn(4, 3, seed=1) * S),
                 lambda anchor, positive: F.cross_entropy(
                     F.normalize(anchor, dim=1) @ F.normalize(positive, dim=1).T / 0.07, torch.arange(4))),
    "nt_xent": (lambda: dict(anchor=_randn(4, 3) * S, positive=_randn(4, 3, seed=1) * S), _nt_xent),
    "triplet": (lambda: dict(anchor=_randn(4, 3) * S, positive=_randn(4, 3, seed=1) * S,
                             negative=_randn(4, 3, seed=2) * S),
                lambda anchor, positive, negative: F.triplet_margin_loss(anchor, positive, negative)),
    "gaussian_nll": (lambda: dict(pred=_randn(4, 3) * S, target=_randn(4, 3, seed=1) * S,
                                  var=(_randn(4, 3, seed=2).abs() + 0.5) * S),
                     lambda pred, target, var: F.gaussian_nll_loss(pred, target, var)),
    "ssim(window=3, data_range=1e20)": (
        lambda: dict(pred=torch.rand(2, 2, 5, 5, dtype=D, generator=torch.Generator().manual_seed(0)) * S,
                     target=torch.rand(2, 2, 5, 5, dtype=D, generator=torch.Generator().manual_seed(1)) * S),
        _ssim),
    "giou": (lambda: dict(zip(("pred", "target"), _boxes(S))), _giou),
    "diou": (lambda: dict(zip(("pred", "target"), _boxes(S))),
             lambda pred, target: _diou_per_box(pred, target)[0].mean()),
    "ciou": (lambda: dict(zip(("pred", "target"), _boxes(S))), _ciou),
}


# directions: scaled before they are normalised, so the value is the formula's
DIRECTIONS = ["cosine_distance", "info_nce", "nt_xent"]


@pytest.mark.parametrize("source", DIRECTIONS)
def test_float32_directions_of_huge_vectors_give_the_finite_value(source):
    make, reference = OVERFLOW_CASES[source]
    exact = make()
    expected = reference(**exact)
    assert torch.isfinite(expected) and abs(float(expected)) < 1e38
    inputs = {k: v.float().requires_grad_() for k, v in exact.items()}
    value = lossdsl.compile(source)(**inputs)
    torch.testing.assert_close(value.double(), expected, rtol=1e-4, atol=1e-5)
    value.backward()
    for name, x in inputs.items():
        assert torch.isfinite(x.grad).all(), (name, x.grad)


@pytest.mark.parametrize("source", sorted(set(OVERFLOW_CASES) - set(DIRECTIONS)))
def test_float32_squares_that_overflow_are_reported_never_silently_wrong(source):
    # README "NaN and infinity": a square of a float32 input beyond about 1.8e19 overflows, as
    # in torch; the value is then inf or NaN, which the non-finite policy reports by term
    make, reference = OVERFLOW_CASES[source]
    exact = make()
    expected = reference(**exact)
    inputs = {k: v.float() for k, v in exact.items()}
    try:
        value = lossdsl.compile(source)(**inputs)
    except lossdsl.NonFiniteLossError as err:
        assert err.term == source.split("(")[0], err
        return
    torch.testing.assert_close(value.double(), expected, rtol=1e-4, atol=1e-5)


# --- masked classes: logits of -inf ---------------------------------------------------------


def _distill_reference(student, teacher, temperature):
    """T^2 KL(q || p) summed over the classes the teacher allows (q = 0 adds 0 elsewhere)."""
    rows = []
    for s, t in zip(student, teacher):
        allowed = torch.isfinite(t)
        q = F.softmax(t[allowed] / temperature, 0)
        log_p = F.log_softmax(s / temperature, 0)[allowed]
        rows.append(temperature**2 * (q * (q.log() - log_p)).sum())
    return torch.stack(rows).mean()


@pytest.mark.parametrize("student_masked", [False, True], ids=["teacher_masked", "both_masked"])
def test_distill_kl_with_classes_masked_to_minus_infinity(student_masked):
    inf = float("inf")
    teacher = torch.tensor([[2.0, 0.5, -inf], [1.0, -inf, 0.0]], dtype=D)
    student = torch.tensor([[1.0, 2.0, 0.3], [0.5, -0.7, -1.0]], dtype=D)
    if student_masked:  # the student masks the same classes
        student = torch.where(torch.isfinite(teacher), student, -inf)
    student.requires_grad_()
    value = lossdsl.compile("distill_kl(temperature=2)", nonfinite="warn")(student, teacher)
    ref_student = student.detach().clone().requires_grad_()
    reference = _distill_reference(ref_student, teacher, 2.0)
    torch.testing.assert_close(value, reference)
    (grad,) = torch.autograd.grad(value, student)
    (ref_grad,) = torch.autograd.grad(reference, ref_student)
    torch.testing.assert_close(grad, ref_grad)


# --- images without channels, targets made in inference mode ------------------------------


def test_ssim_of_images_without_channels_is_zero_or_names_the_term():
    images = torch.rand(2, 0, 8, 8, dtype=D)
    value = _value_or_located_error(lambda: lossdsl.compile("ssim(window=3)")(images, images.clone()), "ssim")
    if value is not None:  # the mean of 1 - SSIM over no pixels is 0, as for an empty batch
        assert float(value) == 0.0


INFERENCE_CASES = {
    "mse": lambda p, t: ((p - t) ** 2).mean(),
    "huber": lambda p, t: F.huber_loss(p.double(), t.double()),
    "bce_logits": lambda p, t: F.binary_cross_entropy_with_logits(p.double(), t.double()),
    "dice": lambda p, t: 1 - (2 * (p.sigmoid() * t).sum() + 1) / (p.sigmoid().sum() + t.sum() + 1),
}


@pytest.mark.parametrize("name", sorted(INFERENCE_CASES))
def test_a_target_made_in_inference_mode_gives_the_value_or_names_the_term(name):
    with torch.inference_mode():
        target = torch.rand(4, 3, dtype=D)
    pred = _randn(4, 3).requires_grad_()
    value = _value_or_located_error(lambda: lossdsl.compile(name)(pred, target), name)
    if value is None:
        return
    (grad,) = torch.autograd.grad(value, pred)
    ref_pred = pred.detach().clone().requires_grad_()
    reference = INFERENCE_CASES[name](ref_pred, target.clone())
    (ref_grad,) = torch.autograd.grad(reference, ref_pred)
    torch.testing.assert_close(value, reference)
    torch.testing.assert_close(grad, ref_grad)
