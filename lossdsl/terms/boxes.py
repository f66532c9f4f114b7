"""Bounding-box regression terms (DESIGN.md §5, second table): giou, diou, ciou.

pred and target are boxes ``(..., 4)`` as ``x1 y1 x2 y2``; each box gets the generalized,
distance or complete IoU loss as ``torchvision.ops`` defines it (``eps`` in the same places),
and the per-box losses are reduced with ``reduction``: ``"mean"`` over boxes (0 for no boxes,
as torchvision), ``"sum"``, or ``"none"``: the loss of each box, shape ``pred.shape[:-1]``.

Where torchvision divides by zero (CIoU's aspect ratio ``w / h`` of a box of zero height)
these terms use the same angle computed as ``atan2``, which equals ``atan(w / h)`` for every
``h != 0``, is finite at ``h = 0``, and is 0 with a zero gradient for a point (``w = h = 0``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import LossInputError
from ._common import Reduction, Stabiliser, check_same_shape, upcast

__all__ = ["giou", "diou", "ciou"]

Eps = Stabiliser


def _boxes(pred: Tensor, target: Tensor, term: str) -> tuple[Tensor, Tensor]:
    check_same_shape(pred, target)
    if pred.dim() == 0 or pred.shape[-1] != 4:
        raise LossInputError(
            f"{term} needs boxes with a last axis of 4 (x1 y1 x2 y2), got shape {tuple(pred.shape)}",
            hint="pass pred and target of shape (..., 4); convert (cx, cy, w, h) boxes to corners first",
        )
    p, t = upcast(pred, target)
    return p, t.to(p.dtype)


def _reduce_boxes(loss: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        # an image without boxes gives 0 (torchvision's rule), not the NaN of an empty mean
        return loss.sum() / max(loss.numel(), 1)
    return loss.sum() if reduction == "sum" else loss


def _inter_union(p: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    x1, y1, x2, y2 = p.unbind(-1)
    x1g, y1g, x2g, y2g = t.unbind(-1)
    w = torch.minimum(x2, x2g) - torch.maximum(x1, x1g)
    h = torch.minimum(y2, y2g) - torch.maximum(y1, y1g)
    # torchvision fills the intersection only where both sides are positive; a where keeps
    # its value and its gradient (0 elsewhere, also where one side is exactly 0)
    inter = torch.where((w > 0) & (h > 0), w * h, torch.zeros_like(w))
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    return inter, union


def _enclosing(p: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Width and height of the smallest box holding both."""
    w = torch.maximum(p[..., 2], t[..., 2]) - torch.minimum(p[..., 0], t[..., 0])
    h = torch.maximum(p[..., 3], t[..., 3]) - torch.minimum(p[..., 1], t[..., 1])
    return w, h


def _giou_per_box(p: Tensor, t: Tensor, eps: float) -> Tensor:
    inter, union = _inter_union(p, t)
    iou = inter / (union + eps)
    cw, ch = _enclosing(p, t)
    area_c = cw * ch
    return 1.0 - iou + (area_c - union) / (area_c + eps)


def _diou_per_box(p: Tensor, t: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(DIoU loss, IoU)`` of each box."""
    inter, union = _inter_union(p, t)
    iou = inter / (union + eps)
    cw, ch = _enclosing(p, t)
    diagonal = cw.square() + ch.square() + eps
    # squared distance of the centres: ((x1 + x2) / 2 - (x1g + x2g) / 2)^2 + (same for y)
    dx = 0.5 * ((p[..., 0] + p[..., 2]) - (t[..., 0] + t[..., 2]))
    dy = 0.5 * ((p[..., 1] + p[..., 3]) - (t[..., 1] + t[..., 3]))
    return 1.0 - iou + (dx.square() + dy.square()) / diagonal, iou


def _aspect_angle(w: Tensor, h: Tensor) -> Tensor:
    """``atan(w / h)`` for ``h != 0``, finite everywhere, with a finite gradient.

    ``atan(w / h) = atan2(s w, s h)`` with ``s`` the sign of ``h``; at ``h = 0`` that is
    ``±pi/2`` (the limit of ``atan(w / h)``) with the limit's gradient ``-1/w``; at
    ``w = h = 0``, where atan2's gradient is 0/0, the angle is 0 with a zero gradient.
    """
    negative = h < 0
    ws, hs = torch.where(negative, -w, w), torch.where(negative, -h, h)
    point = (ws == 0) & (hs == 0)
    return torch.atan2(torch.where(point, torch.zeros_like(ws), ws), torch.where(point, torch.ones_like(hs), hs))


def _ciou_per_box(p: Tensor, t: Tensor, eps: float) -> Tensor:
    diou, iou = _diou_per_box(p, t, eps)
    angle_p = _aspect_angle(p[..., 2] - p[..., 0], p[..., 3] - p[..., 1])
    angle_t = _aspect_angle(t[..., 2] - t[..., 0], t[..., 3] - t[..., 1])
    v = (4.0 / math.pi**2) * (angle_t - angle_p).square()
    alpha = (v / (1.0 - iou + v + eps)).detach()  # a constant trade-off weight, as in the paper
    return diou + alpha * v


def giou(
    pred: Tensor, target: Tensor, *, eps: Eps = 1e-7, reduction: Reduction = "mean",
) -> Tensor:
    """Generalized IoU loss of boxes (x1 y1 x2 y2): mean of 1 - IoU + (C - U) / C.

    ``C`` is the area of the smallest box enclosing both, ``U`` the union (Rezatofighi et al.
    2019); equals ``torchvision.ops.generalized_box_iou_loss``, ``eps`` added to U and C.
    Non-zero also for boxes that do not overlap. Example: ``l1 + 2*giou`` (DETR's box loss).
    """
    p, t = _boxes(pred, target, "giou")
    return _reduce_boxes(_giou_per_box(p, t, eps), reduction).to(pred.dtype)


def diou(
    pred: Tensor, target: Tensor, *, eps: Eps = 1e-7, reduction: Reduction = "mean",
) -> Tensor:
    """Distance IoU loss of boxes (x1 y1 x2 y2): mean of 1 - IoU + d^2 / c^2.

    ``d`` is the distance between the boxes' centres, ``c`` the diagonal of the smallest
    enclosing box (Zheng et al. 2020); equals ``torchvision.ops.distance_box_iou_loss``.
    Example: ``diou(reduction="sum")``.
    """
    p, t = _boxes(pred, target, "diou")
    return _reduce_boxes(_diou_per_box(p, t, eps)[0], reduction).to(pred.dtype)


def ciou(
    pred: Tensor, target: Tensor, *, eps: Eps = 1e-7, reduction: Reduction = "mean",
) -> Tensor:
    """Complete IoU loss of boxes (x1 y1 x2 y2): mean of the DIoU loss + alpha v.

    ``v = 4 / pi^2 (atan(w_t / h_t) - atan(w_p / h_p))^2`` compares the aspect ratios and
    ``alpha = v / (1 - IoU + v + eps)`` is a constant (no gradient) (Zheng et al. 2020);
    equals ``torchvision.ops.complete_box_iou_loss``, and is finite for zero-height boxes.
    Example: ``ciou + 0.5*l1``.
    """
    p, t = _boxes(pred, target, "ciou")
    return _reduce_boxes(_ciou_per_box(p, t, eps), reduction).to(pred.dtype)
