"""Overlap terms for segmentation masks (DESIGN.md §5, second table).

tversky (Salehi et al. 2017), focal_tversky (Abraham & Khan 2019) and jaccard (soft IoU), the
relatives of ``dice``. Each is one ratio of sums over all elements: the overlap
``S_pt = sum(p t)``, the false positives ``sum(p (1 - t))`` and the false negatives
``sum((1 - p) t)``, with ``p = sigmoid(pred)`` when ``from_logits`` (the default).
"""

from __future__ import annotations

from typing import Annotated

import torch
from annotated_types import Ge, Gt, Le
from torch import Tensor

from ._common import check_same_shape, safe_pow, upcast

__all__ = ["tversky", "focal_tversky", "jaccard"]

Smooth = Annotated[float, Gt(0)]
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
