"""Classification terms (bce, bce_logits, cross_entropy, focal, focal_ce, dice) against
torch.nn.functional or their DESIGN.md §5 formula written out, in float64 through
lossdsl.compile. CASES is shared with test_terms_common.py (see test_terms_regression.py).
"""

import math

import pytest
import torch
import torch.nn.functional as F

import lossdsl

W5 = [0.5, 1.0, 2.0, 0.25, 3.0]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _probabilities(seed=0):
    g = _gen(seed)
    pred = torch.rand(6, 4, generator=g, dtype=torch.float64) * 0.96 + 0.02
    target = torch.rand(6, 4, generator=g, dtype=torch.float64)
    target[:3] = target[:3].round()  # hard and soft labels
    return {"pred": pred, "target": target}


def _logits(seed=0):
    g = _gen(seed)
    pred = torch.randn(6, 4, generator=g, dtype=torch.float64) * 2
    target = (torch.rand(6, 4, generator=g) > 0.5).to(torch.float64)
    target[0] = 0.3  # a soft label row
    return {"pred": pred, "target": target}


def _extreme_probabilities(dtype):
    pred = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5, 1e-12], dtype=dtype)
    target = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0], dtype=dtype)
    return {"pred": pred, "target": target}


def _extreme_logits(dtype):
    pred = torch.tensor([[100.0, -100.0, 100.0, -100.0], [-100.0, 0.0, 50.0, 100.0]], dtype=dtype)
    target = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]], dtype=dtype)
    return {"pred": pred, "target": target}


def _class_logits(seed=0, ignore=None):
    g = _gen(seed)
    pred = torch.randn(7, 5, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, 5, (7,), generator=g)
    if ignore is not None:
        target[[1, 4]] = ignore
    return {"pred": pred, "target": target}


def _class_logits_last_axis(seed=0):
    g = _gen(seed)
    return {
        "pred": torch.randn(2, 3, 5, generator=g, dtype=torch.float64),
        "target": torch.randint(0, 5, (2, 3), generator=g),
    }


def _class_probabilities(seed=0):
    g = _gen(seed)
    return {
        "pred": torch.randn(4, 5, 2, generator=g, dtype=torch.float64),
        "target": torch.randn(4, 5, 2, generator=g, dtype=torch.float64).softmax(1),
    }


def _extreme_classes(dtype):
    # a confident wrong class, a confident right one, a tie of two confident classes
    pred = torch.tensor(
        [[100.0, -100.0, 0.0, -100.0, 100.0], [-100.0, -100.0, 100.0, -100.0, -100.0], [100.0, 100.0, -100.0, 0.0, 0.0]],
        dtype=dtype,
    )
    return {"pred": pred, "target": torch.tensor([1, 2, 0])}


def _extreme_class_probabilities(dtype):
    extreme = _extreme_classes(dtype)
    return {"pred": extreme["pred"], "target": F.one_hot(extreme["target"], 5).to(dtype)}


def _extreme_classes_last_axis(dtype):
    return {"pred": _extreme_classes(dtype)["pred"][None], "target": torch.tensor([[1, 2, 0]])}


def _focal_reference(gamma, alpha):
    # torchvision.ops.sigmoid_focal_loss, written out
    def reference(pred, target):
        p = torch.sigmoid(pred)
        ce = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
        p_t = p * target + (1 - p) * (1 - target)
        loss = ce * (1 - p_t) ** gamma
        if alpha >= 0:
            loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
        return loss.mean()

    return reference


def _focal_ce_reference(gamma, weights=None, class_dim=1):
    # one sample at a time: -w_y (1 - p_y)^gamma log p_y, then a plain mean
    def reference(pred, target):
        logits = pred.movedim(class_dim, -1).reshape(-1, pred.shape[class_dim])
        labels = target.reshape(-1)
        total = 0.0
        for row, y in zip(logits, labels.tolist()):
            p = torch.exp(row - torch.logsumexp(row, 0))
            w = 1.0 if weights is None else weights[y]
            total = total - w * (1 - p[y]) ** gamma * torch.log(p[y])
        return total / len(labels)

    return reference


def _dice_reference(smooth, from_logits):
    def reference(pred, target):
        p = torch.sigmoid(pred) if from_logits else pred
        return 1 - (2 * (p * target).sum() + smooth) / (p.sum() + target.sum() + smooth)

    return reference


def _soft_ce(pred, target):
    return -(target * pred.log_softmax(1)).sum(1).mean()


CASES = {
    "bce": (
        _probabilities,
        lambda pred, target: F.binary_cross_entropy(pred.clamp(1e-7, 1 - 1e-7), target),
        _extreme_probabilities,
    ),
    "bce_logits": (_logits, lambda pred, target: F.binary_cross_entropy_with_logits(pred, target), _extreme_logits),
    "bce_logits(pos_weight=[0.5, 2, 3, 1])": (
        _logits,
        lambda pred, target: F.binary_cross_entropy_with_logits(
            pred, target, pos_weight=torch.tensor([0.5, 2, 3, 1], dtype=torch.float64)
        ),
        _extreme_logits,
    ),
    "bce_logits(pos_weight=2)": (
        _logits,
        lambda pred, target: F.binary_cross_entropy_with_logits(
            pred, target, pos_weight=torch.tensor(2.0, dtype=torch.float64)
        ),
        _extreme_logits,
    ),
    "cross_entropy": (_class_logits, lambda pred, target: F.cross_entropy(pred, target), _extreme_classes),
    f"cross_entropy(class_weights={W5}, label_smoothing=0.1, ignore_index=-1)": (
        lambda seed=0: _class_logits(seed, ignore=-1),
        lambda pred, target: F.cross_entropy(
            pred, target, weight=torch.tensor(W5, dtype=torch.float64), label_smoothing=0.1, ignore_index=-1
        ),
        _extreme_classes,
    ),
    "cross_entropy(class_dim=-1)": (
        _class_logits_last_axis,
        lambda pred, target: F.cross_entropy(pred.permute(0, 2, 1), target),
        _extreme_classes_last_axis,
    ),
    "cross_entropy(label_smoothing=0)": (_class_probabilities, _soft_ce, _extreme_class_probabilities),
    "focal": (_logits, _focal_reference(2.0, 0.25), _extreme_logits),
    "focal(gamma=0.5, alpha=-1)": (_logits, _focal_reference(0.5, -1), _extreme_logits),
    "focal_ce": (_class_logits, _focal_ce_reference(2.0), _extreme_classes),
    f"focal_ce(gamma=1.5, class_weights={W5})": (_class_logits, _focal_ce_reference(1.5, W5), _extreme_classes),
    "focal_ce(gamma=0.5, class_dim=-1)": (
        _class_logits_last_axis, _focal_ce_reference(0.5, class_dim=-1), _extreme_classes_last_axis,
    ),
    "dice": (_logits, _dice_reference(1.0, True), _extreme_logits),
    "dice(smooth=0.5, from_logits=false)": (_probabilities, _dice_reference(0.5, False), _extreme_probabilities),
}


def test_bce_clamps_but_keeps_a_gradient_at_zero_and_one():
    pred = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1.0, 0.0], dtype=torch.float64)
    out = lossdsl.compile("bce")(pred, target)
    out.backward()
    assert out.item() == pytest.approx(-math.log(1e-7), rel=1e-9)
    # d/dp of -log p at p = eps, halved by the mean: finite and pointing the right way
    assert pred.grad[0].item() == pytest.approx(-0.5 / 1e-7, rel=1e-6)
    assert pred.grad[1].item() == pytest.approx(0.5 / 1e-7, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("eps", [1e-9, 1e-7, 1e-12])
def test_bce_clamp_holds_where_one_minus_eps_rounds_to_one(dtype, eps):
    # 1 - 1e-9 is 1.0 in float32: the upper clamp must still give -log(eps) at p=1, t=0
    pred = torch.tensor([1.0, 0.0], dtype=dtype, requires_grad=True)
    target = torch.tensor([0.0, 1.0], dtype=dtype)
    out = lossdsl.compile(f"bce(eps={eps})")(pred, target)
    out.backward()
    half = dtype != torch.float32
    assert out.item() == pytest.approx(-math.log(eps), rel=4e-3 if half else 1e-4)
    # the gradient at the bound, d/dp -log(1 - p) = 1/eps (halved by the mean); in half
    # precision it is what the dtype can hold (float16: inf beyond 65504 is not a bound)
    expected = 0.5 / eps
    grad = pred.grad.double()
    if dtype == torch.float16 and expected > torch.finfo(dtype).max:
        return
    assert grad[0].item() == pytest.approx(expected, rel=1e-2 if half else 1e-4)
    assert grad[1].item() == pytest.approx(-expected, rel=1e-2 if half else 1e-4)


def test_bce_on_probabilities_outside_zero_one_stays_finite_and_non_negative():
    pred = torch.tensor([1.5, -0.5, 1.0, 0.0])
    target = torch.tensor([0.0, 1.0, 1.0, 0.0])
    got = lossdsl.compile('bce(eps=1e-9, reduction="sum")')(pred, target)
    # clamped to [eps, 1 - eps]: two confident mistakes, two right answers of ~0 loss each
    assert got.item() == pytest.approx(-2 * math.log(1e-9), rel=1e-5)


def test_cross_entropy_class_weights_mean_differs_from_focal_ce_plain_mean():
    inputs = _class_logits(3)
    pred, target = inputs["pred"], inputs["target"]
    w = torch.tensor(W5, dtype=torch.float64)
    nll = -pred.log_softmax(1)[torch.arange(7), target]
    ce = lossdsl.compile(f"cross_entropy(class_weights={W5})")(pred, target)
    torch.testing.assert_close(ce, (w[target] * nll).sum() / w[target].sum(), rtol=1e-10, atol=0)
    # focal_ce at gamma=0 is the weighted cross entropy with a plain mean over samples
    fce = lossdsl.compile(f"focal_ce(gamma=0, class_weights={W5})")(pred, target)
    torch.testing.assert_close(fce, (w[target] * nll).mean(), rtol=1e-10, atol=0)


def test_cross_entropy_all_ignored_is_zero_with_finite_gradient():
    pred = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    target = torch.full((4,), -100)
    for src in ("cross_entropy", "cross_entropy(class_weights=[1, 2, 3], label_smoothing=0.2)"):
        out = lossdsl.compile(src)(pred, target)
        out.backward()
        assert out.item() == 0.0
        assert torch.isfinite(pred.grad).all()
        pred.grad = None


def test_cross_entropy_and_focal_ce_refuse_bad_targets():
    logits = torch.randn(4, 3)
    with pytest.raises(lossdsl.LossInputError, match="cross_entropy") as info:
        lossdsl.compile("cross_entropy")(logits, torch.zeros(4, 1, dtype=torch.long))
    assert "class indices" in str(info.value)
    with pytest.raises(lossdsl.LossInputError, match="class_weights has 2 values"):
        lossdsl.compile("cross_entropy(class_weights=[1, 2])")(logits, torch.zeros(4, dtype=torch.long))
    with pytest.raises(lossdsl.LossInputError, match="integer"):
        lossdsl.compile("focal_ce")(logits, torch.rand(4, 3))
    with pytest.raises(lossdsl.LossInputError, match="class_dim"):
        lossdsl.compile("cross_entropy(class_dim=3)")(logits, torch.zeros(4, dtype=torch.long))


def test_pos_weight_length_is_checked_and_one_value_broadcasts():
    inputs = _logits(4)
    got = lossdsl.compile("bce_logits(pos_weight=[2.5])")(**inputs)
    ref = F.binary_cross_entropy_with_logits(*inputs.values(), pos_weight=torch.tensor([2.5], dtype=torch.float64))
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)
    # a plain number, as torch accepts (a 0-dim pos_weight), integer or float
    for written in ("2.5", "2.50"):
        got = lossdsl.compile(f"bce_logits(pos_weight={written})")(**inputs)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=0)
    got = lossdsl.compile("bce_logits(pos_weight=3)")(**inputs)
    three = torch.tensor(3.0, dtype=torch.float64)
    ref3 = F.binary_cross_entropy_with_logits(*inputs.values(), pos_weight=three)
    torch.testing.assert_close(got, ref3, rtol=1e-10, atol=0)
    assert lossdsl.registry["bce_logits"].hyper[0].describe() == (
        "pos_weight: float >= 0 | list of float >= 0 | none = None"
    )
    with pytest.raises(lossdsl.LossArgumentError, match="greater than or equal to 0"):
        lossdsl.compile("bce_logits(pos_weight=-1)")
    with pytest.raises(lossdsl.LossInputError, match="pos_weight has 3 values"):
        lossdsl.compile("bce_logits(pos_weight=[1, 2, 3])")(**inputs)


def test_focal_at_gamma_zero_without_alpha_is_bce_with_logits():
    inputs = _logits(5)
    got = lossdsl.compile("focal(gamma=0, alpha=-1)")(**inputs)
    torch.testing.assert_close(got, F.binary_cross_entropy_with_logits(*inputs.values()), rtol=1e-10, atol=0)


def test_dice_of_a_perfect_mask_is_near_zero_and_of_empty_inputs_zero():
    target = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    got = lossdsl.compile("dice(from_logits=false)")(target.clone(), target)
    assert got.item() == pytest.approx(0.0, abs=1e-12)
    zeros = torch.zeros(4, dtype=torch.float64)
    assert lossdsl.compile("dice(from_logits=false)")(zeros, zeros).item() == 0.0


def test_class_weights_work_with_grad_after_a_call_under_inference_mode():
    # the weights tensor is made once per device/dtype; one made under inference_mode must
    # still be usable by a later call that back-propagates
    src = "cross_entropy(class_weights=[1.5, 0.5, 2.5, 1.0])"
    inputs = {"pred": torch.randn(5, 4, dtype=torch.float64), "target": torch.tensor([0, 1, 2, 3, 1])}
    crit = lossdsl.compile(src)
    with torch.inference_mode():
        crit(**inputs)
    pred = inputs["pred"].clone().requires_grad_()
    out = crit(pred, inputs["target"])
    out.backward()
    ref_pred = inputs["pred"].clone().requires_grad_()
    w = torch.tensor([1.5, 0.5, 2.5, 1.0], dtype=torch.float64)
    F.cross_entropy(ref_pred, inputs["target"], weight=w).backward()
    torch.testing.assert_close(pred.grad, ref_pred.grad, rtol=1e-10, atol=0)
