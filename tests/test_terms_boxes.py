"""Box terms (giou, diou, ciou) against torchvision.ops' generalized_box_iou_loss,
distance_box_iou_loss and complete_box_iou_loss, written out here as torchvision's source
computes them (boolean-mask intersection, atan(w / h)), in float64; finite values and
gradients for zero-area boxes, where the written-out CIoU gradient is NaN.
CASES is shared with test_terms_common.py (see test_terms_regression.py).
"""

import math

import pytest
import torch

import lossdsl


def _inter_union(b1, b2):
    x1, y1, x2, y2 = b1.unbind(-1)
    x1g, y1g, x2g, y2g = b2.unbind(-1)
    xk1, yk1 = torch.max(x1, x1g), torch.max(y1, y1g)
    xk2, yk2 = torch.min(x2, x2g), torch.min(y2, y2g)
    inter = torch.zeros_like(x1)
    mask = (yk2 > yk1) & (xk2 > xk1)
    inter[mask] = (xk2[mask] - xk1[mask]) * (yk2[mask] - yk1[mask])
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    return inter, union


def _enclosing(b1, b2):
    x1, y1, x2, y2 = b1.unbind(-1)
    x1g, y1g, x2g, y2g = b2.unbind(-1)
    return torch.min(x1, x1g), torch.min(y1, y1g), torch.max(x2, x2g), torch.max(y2, y2g)


def torchvision_giou(b1, b2, eps=1e-7):
    inter, union = _inter_union(b1, b2)
    iou = inter / (union + eps)
    xc1, yc1, xc2, yc2 = _enclosing(b1, b2)
    area_c = (xc2 - xc1) * (yc2 - yc1)
    return 1 - (iou - (area_c - union) / (area_c + eps))


def torchvision_diou(b1, b2, eps=1e-7):
    inter, union = _inter_union(b1, b2)
    iou = inter / (union + eps)
    xc1, yc1, xc2, yc2 = _enclosing(b1, b2)
    diag = (xc2 - xc1) ** 2 + (yc2 - yc1) ** 2 + eps
    x1, y1, x2, y2 = b1.unbind(-1)
    x1g, y1g, x2g, y2g = b2.unbind(-1)
    centres = ((x2 + x1) / 2 - (x1g + x2g) / 2) ** 2 + ((y2 + y1) / 2 - (y1g + y2g) / 2) ** 2
    return 1 - iou + centres / diag, iou


def torchvision_ciou(b1, b2, eps=1e-7, angle=lambda w, h: torch.atan(w / h)):
    diou, iou = torchvision_diou(b1, b2, eps)
    w_p, h_p = b1[..., 2] - b1[..., 0], b1[..., 3] - b1[..., 1]
    w_g, h_g = b2[..., 2] - b2[..., 0], b2[..., 3] - b2[..., 1]
    v = (4 / math.pi**2) * (angle(w_g, h_g) - angle(w_p, h_p)) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou + alpha * v


REFERENCE = {
    "giou": torchvision_giou,
    "diou": lambda b1, b2, eps=1e-7: torchvision_diou(b1, b2, eps)[0],
    "ciou": torchvision_ciou,
}


def _boxes(seed=0, shape=(7,)):
    """Valid boxes, some overlapping their target and some apart from it."""
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(*shape, 2, generator=g, dtype=torch.float64) * 10
    size = torch.rand(*shape, 2, generator=g, dtype=torch.float64) * 5 + 0.5
    pred = torch.cat([corner, corner + size], -1)
    shift = torch.randn(*shape, 2, generator=g, dtype=torch.float64) * 2
    shift[..., :2, :] *= 6  # the first boxes do not overlap their targets
    scale = torch.rand(*shape, 2, generator=g, dtype=torch.float64) + 0.5
    target = torch.cat([corner + shift, corner + shift + size * scale], -1)
    return {"pred": pred, "target": target}


def _extreme_boxes(dtype):
    # identical boxes, zero-area points and lines (identical and not), far apart 1e4-sized boxes
    pred = torch.tensor(
        [[0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 5.0, 1.0], [0.0, 0.0, 1e4, 1e4],
         [-1e4, -1e4, -9e3, -5e3], [3.0, 3.0, 3.0, 3.0], [1.0, 1.0, 1.0, 4.0]],
        dtype=dtype,
    )
    target = torch.tensor(
        [[0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 5.0, 1.0], [5e3, 5e3, 1e4, 2e4],
         [9e3, 9e3, 1e4, 1e4], [0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 2.0, 2.0]],
        dtype=dtype,
    )
    return {"pred": pred, "target": target}


def _reference(name, eps=1e-7, reduction="mean"):
    def reference(pred, target):
        l = REFERENCE[name](pred, target, eps)
        return l.mean() if reduction == "mean" else l.sum()

    return reference


CASES = {
    "giou": (_boxes, _reference("giou"), _extreme_boxes),
    "diou": (_boxes, _reference("diou"), _extreme_boxes),
    "ciou": (_boxes, _reference("ciou"), _extreme_boxes),
    'giou(eps=0.001, reduction="sum")': (
        lambda seed=0: _boxes(seed, (2, 3)), _reference("giou", 1e-3, "sum"), _extreme_boxes,
    ),
    'diou(eps=0.01, reduction="sum")': (
        lambda seed=0: _boxes(seed, (2, 3)), _reference("diou", 1e-2, "sum"), _extreme_boxes,
    ),
    "ciou(eps=0.001)": (lambda seed=0: _boxes(seed, (2, 3)), _reference("ciou", 1e-3), _extreme_boxes),
}


@pytest.mark.parametrize("name", ["giou", "diou", "ciou"])
def test_gradient_equals_torchvisions(name):
    inputs = _boxes(5)
    pred = inputs["pred"].clone().requires_grad_()
    lossdsl.compile(name)(pred, inputs["target"]).backward()
    ref = inputs["pred"].clone().requires_grad_()
    REFERENCE[name](ref, inputs["target"]).mean().backward()
    torch.testing.assert_close(pred.grad, ref.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["giou", "diou", "ciou"])
def test_identical_boxes_give_zero_and_disjoint_boxes_more_than_one(name):
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0]], dtype=torch.float64)
    assert lossdsl.compile(name)(boxes, boxes.clone()).item() == pytest.approx(0.0, abs=1e-7)
    apart = boxes + torch.tensor([5.0, 0.0, 5.0, 0.0], dtype=torch.float64)
    assert lossdsl.compile(name)(boxes, apart).item() > 1.0


def test_ciou_of_zero_height_boxes_has_the_limits_gradient():
    # torchvision's atan(w / h) has the value pi/2 at h = 0 but a NaN gradient there; the
    # term's gradient is the limit, which atan(w / h) = pi/2 - atan(h / w) (w > 0) gives
    pred = torch.tensor([[1.0, 1.0, 4.0, 1.0], [0.0, 0.0, 2.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([[0.0, 0.0, 3.0, 2.0], [0.0, 0.0, 1.0, 3.0]], dtype=torch.float64)
    got = pred.clone().requires_grad_()
    out = lossdsl.compile("ciou")(got, target)
    out.backward()
    naive = pred.clone().requires_grad_()
    torchvision_ciou(naive, target).mean().backward()
    assert torch.isnan(naive.grad).any()  # the written-out torchvision gradient
    limit = pred.clone().requires_grad_()
    expected = torchvision_ciou(limit, target, angle=lambda w, h: math.pi / 2 - torch.atan(h / w)).mean()
    expected.backward()
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.grad, limit.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["giou", "diou", "ciou"])
def test_point_boxes_are_finite_with_finite_gradients(name):
    pred = torch.tensor([[2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float32, requires_grad=True)
    target = torch.tensor([[2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 3.0, 2.0]], dtype=torch.float32)
    out = lossdsl.compile(name)(pred, target)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("name", ["giou", "diou", "ciou"])
def test_no_boxes_give_zero(name):
    empty = torch.zeros(0, 4, requires_grad=True)
    out = lossdsl.compile(name)(empty, torch.zeros(0, 4))
    out.backward()
    assert out.item() == 0.0 and empty.grad.shape == (0, 4)


def test_boxes_need_four_coordinates():
    with pytest.raises(lossdsl.LossInputError, match="last axis of 4") as info:
        lossdsl.compile("giou")(torch.zeros(3, 5), torch.zeros(3, 5))
    assert info.value.term == "giou" and "x1 y1 x2 y2" in str(info.value)


@pytest.mark.parametrize("name", ["ciou", "ciou(eps=0.001)"])
def test_ciou_gradcheck_with_alphas_derivative_added_back(name):
    # ciou treats alpha = v / (1 - IoU + v + eps) as a constant; adding (alpha - detached
    # alpha) * v, which is 0 in value, adds exactly the derivative it leaves out
    eps = 1e-3 if "eps" in name else 1e-7
    crit = lossdsl.compile(name)
    inputs = _boxes(9, (2, 3))
    target = inputs["target"]

    def with_alpha(pred):
        _, iou = torchvision_diou(pred, target, eps)
        w_p, h_p = pred[..., 2] - pred[..., 0], pred[..., 3] - pred[..., 1]
        w_g, h_g = target[..., 2] - target[..., 0], target[..., 3] - target[..., 1]
        v = (4 / math.pi**2) * (torch.atan(w_g / h_g) - torch.atan(w_p / h_p)) ** 2
        alpha = v / (1 - iou + v + eps)
        return crit(pred, target) + ((alpha - alpha.detach()) * v).mean()

    assert torch.autograd.gradcheck(with_alpha, (inputs["pred"].clone().requires_grad_(),))
