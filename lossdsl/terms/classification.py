"""Classification and segmentation terms (DESIGN.md §5).

bce (probabilities), bce_logits, cross_entropy, focal (binary), focal_ce (multi-class) and
dice. Every term on logits works in log-space (log-sum-exp, log-sigmoid), so logits of
±100 give finite values and gradients; ``bce`` clamps its probabilities. As in the
regression terms, a position whose weight or mask is 0 is left out before the loss is
computed, and the mean of an empty batch is 0. ``reduction="none"`` gives the elementwise
values of bce, bce_logits and focal (pred's shape), and the per-sample values of
cross_entropy and focal_ce (pred's shape without the class axis).

The overlap terms of the second table: tversky (Salehi et al. 2017), focal_tversky (Abraham & Khan 2019) and jaccard (soft IoU), the
relatives of ``dice``. Each is one ratio of sums over all elements: the overlap
``S_pt = sum(p t)``, the false positives ``sum(p (1 - t))`` and the false negatives
``sum((1 - p) t)``, with ``p = sigmoid(pred)`` when ``from_logits`` (the default).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Le, Lt, MinLen
from torch import Tensor

from ..errors import LossInputError
from ._common import (
    Reduction,
    Stabiliser,
    as_tensor_param,
    check_class_indices,
    check_dim,
    check_floating,
    check_same_shape,
    check_tensor,
    clamp_straight_through,
    elementwise,
    reduce,
    safe_pow,
    upcast,
)

__all__ = ["bce", "bce_logits", "cross_entropy", "focal", "focal_ce", "dice", "tversky", "focal_tversky", "jaccard"]

NonNegative = Annotated[float, Ge(0)]
Weights = Annotated[list[NonNegative], MinLen(1)] | None  # one per class, or one for all
# bce's floor under eps: below exp(-100) torch's binary_cross_entropy caps -log at 100, and
# below the smallest normal number of the compute dtype eps itself would round to 0
_LOG_FLOOR = math.exp(-100.0)


def bce(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, eps: Annotated[float, Gt(0), Lt(0.5)] = 1e-7, reduction: Reduction = "mean",
) -> Tensor:
    """Binary cross entropy on probabilities, clamped to [eps, 1 - eps].

    Value: mean(-(t log p + (1 - t) log(1 - p))) with p = clamp(pred, eps, 1 - eps), equal
    to ``F.binary_cross_entropy`` on the clamped probabilities. 1 - p is clamped on its own
    too, so the bound holds where 1 - eps rounds to 1 (float32, eps < 6e-8): p = 1, t = 0
    gives -log(eps). At a clamped probability the gradient is the one at the bound (finite,
    at most 1/eps, not zeroed), so a confidently wrong prediction still learns. An eps below
    the compute dtype's smallest normal number (or exp(-100)) is raised to it. Prefer
    ``bce_logits`` where the model gives logits. Example: ``bce + 0.5*dice(from_logits=false)``.
    """
    check_same_shape(pred, target)
    p, t = upcast(pred, target)
    floor = max(eps, _LOG_FLOOR, torch.finfo(p.dtype).tiny)
    l = elementwise(lambda p, t: _clamped_bce(p, t, floor), (p, t.to(p.dtype)), weight, mask, reduction)
    return l.to(pred.dtype)


def _clamped_bce(p: Tensor, t: Tensor, eps: float) -> Tensor:
    # p and 1 - p are clamped to [eps, 1 - eps] each: 1 - eps itself rounds to 1 in float32
    # for eps < 6e-8, which would leave log(1 - p) unclamped, while 1 - p >= eps holds in any
    # dtype. Straight-through: the value is taken at the bound and so is the gradient.
    q = clamp_straight_through(1.0 - p, eps, 1.0 - eps)
    p = clamp_straight_through(p, eps, 1.0 - eps)
    return -(t * torch.log(p) + (1.0 - t) * torch.log(q))


def bce_logits(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, pos_weight: NonNegative | Weights = None, reduction: Reduction = "mean",
) -> Tensor:
    """Binary cross entropy on logits (log-sigmoid form, stable for any logit).

    Equals ``F.binary_cross_entropy_with_logits``; ``pos_weight`` (one number, or a list of
    one per class along the last axis) scales the positive part:
    -(w t log s(x) + (1 - t) log s(-x)). Example: ``bce_logits(pos_weight=3)``.
    """
    check_same_shape(pred, target)
    x, t = upcast(pred, target)
    classes = x.shape[-1] if x.dim() else 1
    if isinstance(pos_weight, (int, float)):
        pos_weight = [pos_weight]
    pw = as_tensor_param(pos_weight, x, "pos_weight", classes)
    l = elementwise(
        lambda x, t: F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction="none"),
        (x, t.to(x.dtype)), weight, mask, reduction,
    )
    return l.to(pred.dtype)


def _class_axis(pred: Tensor, target: Tensor, class_dim: int, term: str) -> tuple[Tensor, Tensor, bool]:
    """Move the class axis of pred (and of probability targets) to 1, as torch expects.

    Returns (pred, target, index_targets). A 1-d pred is a single sample.
    """
    check_floating(pred, "pred")
    check_tensor(target, "target")
    if target.is_complex():
        check_floating(target, "target")
    index_targets = not target.is_floating_point()
    if index_targets and target.dtype != torch.long:
        target = target.long()  # int32, uint8 or bool labels are class indices as well
    if pred.dim() < 2:
        if pred.dim() == 0:
            raise LossInputError(
                f"{term} needs logits with a class axis, got a 0-dim pred",
                hint="pass pred of shape (batch, classes, ...)",
            )
        expected = () if index_targets else tuple(pred.shape)
        if tuple(target.shape) != expected:
            raise _target_shape_error(pred, target, expected, index_targets)
        return pred, target, index_targets
    axis = check_dim(pred, class_dim, "pred", hint="class_dim= names the axis of the classes, e.g. class_dim=1 for (batch, classes, ...)")
    if index_targets:
        expected = tuple(s for i, s in enumerate(pred.shape) if i != axis)
        if tuple(target.shape) != expected:
            raise _target_shape_error(pred, target, expected, index_targets)
        return pred.movedim(axis, 1), target, True
    if target.shape != pred.shape:
        raise _target_shape_error(pred, target, tuple(pred.shape), index_targets)
    return pred.movedim(axis, 1), target.movedim(axis, 1), False


def _target_shape_error(pred, target, expected, index_targets) -> LossInputError:
    kind = "class indices" if index_targets else "class probabilities"
    return LossInputError(
        f"target ({kind}) has shape {tuple(target.shape)} but pred {tuple(pred.shape)} needs "
        f"{expected}",
        hint="class-index targets (integer dtype) have pred's shape without the class axis; "
        "probability targets (float) have pred's shape; class_dim= names the class axis",
    )


def cross_entropy(
    pred: Tensor, target: Tensor,
    *, class_weights: Weights = None, label_smoothing: Annotated[float, Ge(0), Le(1)] = 0.0,
    ignore_index: int = -100, class_dim: int = 1, reduction: Reduction = "mean",
) -> Tensor:
    """Cross entropy on logits: F.cross_entropy, targets class indices or probabilities.

    Log-softmax based. ``class_dim`` names the class axis (torch's is 1); integer targets are
    class indices (``ignore_index`` skipped), float targets are probabilities over the
    classes. With ``class_weights`` the mean is weighted like torch's, sum(w_y l) / sum(w_y);
    a batch where every target is ignored gives 0, not NaN. ``reduction="none"`` gives torch's
    per-sample values (pred's shape without the class axis): w_y l, 0 where ignored.
    Example: ``cross_entropy(label_smoothing=0.1, class_dim=-1)``.
    """
    logits, t, index_targets = _class_axis(pred, target, class_dim, "cross_entropy")
    (x,) = upcast(logits)
    if not index_targets:
        t = t.to(x.dtype)
    classes = x.shape[1] if x.dim() > 1 else x.shape[0]
    if index_targets:
        check_class_indices(t, classes, ignore_index)
    w = as_tensor_param(class_weights, x, "class_weights", classes)
    if w is not None and w.numel() == 1:
        w = w.expand(classes)
    l = F.cross_entropy(
        x, t, weight=w, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="none"
    )
    if reduction == "sum":
        return l.sum().to(pred.dtype)
    if reduction == "none":
        return l.to(pred.dtype)
    if not index_targets:
        return reduce(l).to(pred.dtype)
    # torch's mean divides by the summed weights of the counted targets; doing it here
    # keeps an all-ignored batch at 0 (torch gives 0/0 = NaN there, in value and gradient)
    valid = t != ignore_index
    if w is None:
        denom = valid.sum().to(x.dtype)
    else:
        denom = torch.where(valid, w[torch.where(valid, t, 0)], 0.0).sum()
    return (l.sum() / torch.where(denom != 0, denom, torch.ones_like(denom))).to(pred.dtype)


def focal(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, mask: Tensor | None = None,
    *, gamma: NonNegative = 2.0, alpha: Annotated[float, Le(1)] = 0.25, reduction: Reduction = "mean",
) -> Tensor:
    """Binary focal loss on logits (Lin et al. 2017; torchvision's sigmoid_focal_loss).

    mean(a_t (1 - p_t)^gamma * BCEwithlogits(x, t)), p = sigmoid(x), p_t = p t + (1-p)(1-t),
    a_t = alpha t + (1 - alpha)(1 - t); alpha < 0 leaves a_t out. 1 - p_t is computed as
    p (1 - t) + sigmoid(-x) t, without cancellation. Example: ``focal(gamma=2, alpha=0.25)``.
    """
    check_same_shape(pred, target)
    x, t = upcast(pred, target)
    l = elementwise(lambda x, t: _focal(x, t, gamma, alpha), (x, t.to(x.dtype)), weight, mask, reduction)
    return l.to(pred.dtype)


def _focal(x: Tensor, t: Tensor, gamma: float, alpha: float) -> Tensor:
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    one_minus_pt = torch.sigmoid(x) * (1.0 - t) + torch.sigmoid(-x) * t
    l = ce * safe_pow(one_minus_pt, gamma)
    if alpha >= 0:
        l = (alpha * t + (1.0 - alpha) * (1.0 - t)) * l
    return l


def focal_ce(
    pred: Tensor, target: Tensor,
    *, gamma: NonNegative = 2.0, class_weights: Weights = None, class_dim: int = 1,
    reduction: Reduction = "mean",
) -> Tensor:
    """Multi-class focal loss on logits: mean(-w_y (1 - p_y)^gamma log p_y).

    log p_y comes from log-softmax, 1 - p_y = -expm1(log p_y); targets are class indices.
    A plain mean over samples (``cross_entropy`` with class_weights divides by sum(w_y)
    instead); ``reduction="none"`` gives the per-sample values. Example: ``focal_ce(gamma=2, class_weights=[1.0, 4.0])``.
    """
    logits, t, index_targets = _class_axis(pred, target, class_dim, "focal_ce")
    if not index_targets:
        raise LossInputError(
            f"focal_ce needs class-index targets (an integer tensor), got {target.dtype}",
            hint="pass target.long(), or use cross_entropy for probability targets",
        )
    (x,) = upcast(logits)
    axis = 1 if x.dim() > 1 else 0
    check_class_indices(t, x.shape[axis])
    log_p = F.log_softmax(x, dim=axis)
    log_py = log_p.gather(axis, t.unsqueeze(axis)).squeeze(axis)
    l = -safe_pow(-torch.expm1(log_py), gamma) * log_py
    w = as_tensor_param(class_weights, x, "class_weights", x.shape[axis])
    if w is not None:
        l = l * (w[t] if w.numel() > 1 else w)
    return reduce(l, reduction).to(pred.dtype)


def dice(
    pred: Tensor, target: Tensor,
    *, smooth: Stabiliser = 1.0, from_logits: bool = True,
) -> Tensor:
    """Dice loss: 1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth).

    p = sigmoid(pred) when ``from_logits`` (the default), else pred as probabilities; the
    sums run over all elements. ``smooth`` > 0 keeps an empty prediction and target at 0.
    Example: ``bce_logits + dice`` for segmentation masks.
    """
    check_same_shape(pred, target)
    x, t = upcast(pred, target)
    p = torch.sigmoid(x) if from_logits else x
    t = t.to(p.dtype)
    overlap = 2.0 * (p * t).sum() + smooth
    return (1.0 - overlap / (p.sum() + t.sum() + smooth)).to(pred.dtype)


Smooth = Stabiliser
Share = Annotated[float, Ge(0), Le(1)]


def _overlap_sums(pred: Tensor, target: Tensor, from_logits: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(true positives, false positives, false negatives)`` summed over all elements.

    The false sums are taken directly rather than as ``sum(p) - sum(p t)``: that difference
    of two large sums would lose the small remainder in float32. ``1 - sigmoid(x)`` is
    ``sigmoid(-x)``, exact where ``sigmoid(x)`` rounds to 1.
    """
    check_same_shape(pred, target)
    x, t = upcast(pred, target)
    t = t.to(x.dtype)
    if from_logits:
        p, q = torch.sigmoid(x), torch.sigmoid(-x)
    else:
        p, q = x, 1.0 - x
    return (p * t).sum(), (p * (1.0 - t)).sum(), (q * t).sum()


def _tversky_value(pred, target, alpha, beta, smooth, from_logits) -> Tensor:
    tp, fp, fn = _overlap_sums(pred, target, from_logits)
    # 1 - (tp + s) / (tp + a fp + b fn + s), written as one ratio: near a perfect mask the
    # subtraction from 1 would keep only float32's last digits of a loss of 1e-6
    wrong = alpha * fp + beta * fn
    return wrong / (tp + wrong + smooth)


def tversky(
    pred: Tensor, target: Tensor,
    *, alpha: Share = 0.5, beta: Share = 0.5, smooth: Smooth = 1.0, from_logits: bool = True,
) -> Tensor:
    """Tversky loss: 1 - (S_pt + smooth) / (S_pt + alpha S_p(1-t) + beta S_(1-p)t + smooth).

    ``alpha`` weighs the false positives, ``beta`` the false negatives (Salehi et al. 2017);
    alpha = beta = 0.5 is ``dice`` with twice the smooth, alpha = beta = 1 is ``jaccard``.
    The sums run over all elements; p = sigmoid(pred) when ``from_logits``, else pred as
    probabilities.
    Example: ``bce_logits + tversky(alpha=0.3, beta=0.7)`` to penalise missed foreground more.
    """
    return _tversky_value(pred, target, alpha, beta, smooth, from_logits).to(pred.dtype)


def focal_tversky(
    pred: Tensor, target: Tensor,
    *, alpha: Share = 0.5, beta: Share = 0.5, gamma: Annotated[float, Gt(0)] = 0.75,
    smooth: Smooth = 1.0, from_logits: bool = True,
) -> Tensor:
    """Focal Tversky loss: tversky^gamma (Abraham & Khan 2019).

    gamma < 1 raises the loss of nearly right masks relative to the Tversky loss (the paper's
    exponent 1/gamma with gamma = 4/3 is gamma=0.75 here). At a perfect mask (Tversky loss 0)
    the gradient is 0, not the infinite slope of x^0.75.
    Example: ``focal_tversky(alpha=0.3, beta=0.7, gamma=0.75)``.
    """
    value = _tversky_value(pred, target, alpha, beta, smooth, from_logits)
    # >= 0 for probabilities in [0, 1]; others must not give a NaN power
    return safe_pow(value.clamp_min(0.0), gamma).to(pred.dtype)


def jaccard(
    pred: Tensor, target: Tensor, *, smooth: Smooth = 1.0, from_logits: bool = True,
) -> Tensor:
    """Jaccard (soft IoU) loss: 1 - (S_pt + smooth) / (S_p + S_t - S_pt + smooth).

    The union S_p + S_t - S_pt is summed as S_pt + S_p(1-t) + S_(1-p)t and the loss taken as
    (S_p(1-t) + S_(1-p)t) / (union + smooth): the same numbers, without cancellation.
    p = sigmoid(pred) when ``from_logits``, else pred as probabilities.
    Example: ``bce_logits + jaccard``.
    """
    tp, fp, fn = _overlap_sums(pred, target, from_logits)
    wrong = fp + fn  # 1 - (tp + s) / (tp + fp + fn + s) as one ratio, as in tversky
    return (wrong / (tp + wrong + smooth)).to(pred.dtype)
