"""Contrastive terms on pairs of embeddings (DESIGN.md §5, second table): info_nce, nt_xent.

Inputs ``anchor`` and ``positive``, both ``(N, D)``: row ``i`` of each is a view of the same
item, every other row of the batch is a negative. Similarities are cosines (the rows are
normalised) divided by ``temperature``; each anchor's loss is a log-sum-exp minus its
positive's logit, so any temperature in the allowed range gives finite values; the cosines
are float32 matrix products for half-precision inputs, under autocast too. The terms
reduce the per-anchor losses with ``reduction`` (``"mean"``, the papers' choice, or ``"sum"``;
``"none"`` returns them: ``(N,)`` for info_nce, ``(2N,)`` for nt_xent, anchors' views first);
an empty batch (N = 0) gives 0 (an empty tensor for ``"none"``).

``temperature`` is bounded to [1e-4, 1e4]: the loss grows like 1/temperature (a margin of 1
costs 1e4 at the lower bound), so a smaller one would overflow float32 logits and gradients.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge, Le
from torch import Tensor

from ..errors import LossInputError
from ._common import Reduction, autocast_off, check_floating, direction_scaled, reduce, upcast

__all__ = ["info_nce", "nt_xent"]

Temperature = Annotated[float, Ge(1e-4), Le(1e4)]


def _pairs(anchor: Tensor, positive: Tensor, term: str) -> tuple[Tensor, Tensor]:
    """The two views, checked to be real floating ``(N, D)`` each, normalised, in float32 for
    half inputs. N = 0 passes: its losses are an empty vector, whose reduction is 0."""
    check_floating(anchor, "anchor")
    check_floating(positive, "positive")
    if anchor.dim() != 2 or anchor.shape != positive.shape:
        raise LossInputError(
            f"{term} needs anchor and positive of one shape (N, D), got anchor "
            f"{tuple(anchor.shape)} and positive {tuple(positive.shape)}",
            hint="row i of anchor and row i of positive are two views of item i; flatten "
            "other axes into D",
        )
    a, p = upcast(anchor, positive)
    return F.normalize(direction_scaled(a, 1), dim=1), F.normalize(direction_scaled(p.to(a.dtype), 1), dim=1)


def _info_nce_per_anchor(a: Tensor, p: Tensor, temperature: float, symmetric: bool) -> Tensor:
    logits = a @ p.T / temperature
    matched = logits.diagonal()
    loss = torch.logsumexp(logits, dim=1) - matched
    if symmetric:  # the positives as anchors too: the columns of the same matrix
        loss = 0.5 * (loss + torch.logsumexp(logits, dim=0) - matched)
    return loss


def info_nce(
    anchor: Tensor, positive: Tensor,
    *, temperature: Temperature = 0.07, symmetric: bool = False, reduction: Reduction = "mean",
) -> Tensor:
    """InfoNCE: cross entropy of normalize(anchor) normalize(positive)^T / temperature against the diagonal.

    Each anchor must pick its own positive among all positives of the batch (van den Oord et
    al. 2018); equals ``F.cross_entropy(logits, arange(N))``. ``symmetric=true`` averages it
    with the same loss over the columns (positives picking their anchor): CLIP's loss
    (Radford et al. 2021). Inputs ``anchor`` and ``positive``: ``crit(anchor=a, positive=p)``.
    Example: ``info_nce(temperature=0.07, symmetric=true)``.
    """
    a, p = _pairs(anchor, positive, "info_nce")
    with autocast_off(a):
        loss = _info_nce_per_anchor(a, p, temperature, symmetric)
    return reduce(loss, reduction).to(anchor.dtype)


def _nt_xent_per_view(a: Tensor, p: Tensor, temperature: float) -> Tensor:
    n = a.shape[0]
    z = torch.cat([a, p])
    logits = z @ z.T / temperature
    # a view is never its own negative: its similarity with itself leaves the denominator
    self_pair = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pair, float("-inf"))
    other = torch.arange(2 * n, device=z.device).roll(n)  # view i's partner: i + N mod 2N
    matched = logits.gather(1, other[:, None]).squeeze(1)
    return torch.logsumexp(logits, dim=1) - matched


def nt_xent(
    anchor: Tensor, positive: Tensor,
    *, temperature: Temperature = 0.5, reduction: Reduction = "mean",
) -> Tensor:
    """NT-Xent (SimCLR): mean over the 2N views of -log(exp(s_ij / T) / sum_{k != i} exp(s_ik / T)).

    ``s`` is the cosine similarity, ``j`` the other view of view i's item; the 2N - 2 views of
    the other items are the negatives (Chen et al. 2020). Equals pytorch-metric-learning's
    ``NTXentLoss`` with the two views labelled by item. Inputs ``anchor`` and ``positive``:
    ``crit(anchor=z1, positive=z2)``. Example: ``nt_xent(temperature=0.5)``.
    """
    a, p = _pairs(anchor, positive, "nt_xent")
    with autocast_off(a):
        loss = _nt_xent_per_view(a, p, temperature)
    return reduce(loss, reduction).to(anchor.dtype)
