"""Ranking and embedding terms (DESIGN.md §5).

margin_ranking (scores of positive against negative items), pairwise_ranking (every pair of
a list, vectorised), triplet (anchor/positive/negative embeddings) and cosine_distance.
``reduction="none"`` gives margin_ranking's elementwise values (pos's shape), triplet's per
triplet (anchor's shape without the last axis, as torch) and cosine_distance's per vector
(pred's shape without ``dim``); pairwise_ranking is a mean over pairs and has no reduction.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge
from torch import Tensor

from ..errors import LossInputError
from ._common import Reduction, check_dim, check_floating, check_same_shape, direction_scaled, reduce, upcast

__all__ = ["margin_ranking", "pairwise_ranking", "triplet", "cosine_distance"]

Margin = Annotated[float, Ge(0)]


def _same_shapes(**tensors: Tensor) -> None:
    names = list(tensors)
    for name in names:
        check_floating(tensors[name], name)
    first = tensors[names[0]]
    for name in names[1:]:
        if tensors[name].shape != first.shape:
            shapes = ", ".join(f"{n} {tuple(tensors[n].shape)}" for n in names)
            raise LossInputError(
                f"{' and '.join(names)} must have one shape, got {shapes}",
                hint="these inputs are compared element by element (no broadcasting)",
            )


def margin_ranking(
    pos: Tensor, neg: Tensor, *, margin: Margin = 1.0, reduction: Reduction = "mean",
) -> Tensor:
    """Margin ranking loss: mean(relu(margin - (pos - neg))).

    Pushes each positive score above its negative by at least ``margin`` (equals
    ``F.margin_ranking_loss(pos, neg, 1)``). Inputs ``pos`` and ``neg``:
    ``crit(pos=scores_pos, neg=scores_neg)``. Example: ``margin_ranking(margin=0.5)``.
    """
    _same_shapes(pos=pos, neg=neg)
    p, n = upcast(pos, neg)
    return reduce(F.relu(margin - (p - n)), reduction).to(pos.dtype)


def pairwise_ranking(
    pred: Tensor, target: Tensor, *, margin: Margin = 1.0, dim: int = -1,
) -> Tensor:
    """Pairwise ranking hinge over every pair of a list whose targets differ.

    For all pairs i < j along ``dim`` with target_i != target_j:
    mean(relu(margin - sign(target_i - target_j) (pred_i - pred_j))), one mean over the pairs
    of every list of the batch (0 when no pair differs). Vectorised: an n x n comparison per
    list, no loop. Example: ``pairwise_ranking(margin=0.1, dim=-1)`` for (queries, documents).
    """
    check_same_shape(pred, target)
    axis = check_dim(pred, dim, "pred", hint="dim= names the axis of the list to rank")
    p, t = upcast(pred, target)
    p = p.movedim(axis, -1)
    t = t.movedim(axis, -1)
    n = p.shape[-1]
    dp = p.unsqueeze(-1) - p.unsqueeze(-2)  # dp[..., i, j] = p_i - p_j
    ti, tj = t.unsqueeze(-1), t.unsqueeze(-2)
    # sign(t_i - t_j) by comparison: an unsigned target's difference wraps, a boolean one's is refused
    order = (ti > tj).to(dp.dtype) - (ti < tj).to(dp.dtype)
    upper = torch.ones(n, n, dtype=torch.bool, device=p.device).triu(1)
    counted = upper & (ti != tj)
    hinge = F.relu(margin - order * dp)
    total = torch.where(counted, hinge, torch.zeros_like(hinge)).sum()
    pairs = counted.sum().to(hinge.dtype)
    return (total / pairs.clamp_min(1.0)).to(pred.dtype)


def triplet(
    anchor: Tensor, positive: Tensor, negative: Tensor,
    *, margin: Margin = 1.0, reduction: Reduction = "mean",
) -> Tensor:
    """Triplet margin loss: mean(relu(d(a, p) - d(a, n) + margin)), d the Euclidean distance.

    Equals ``F.triplet_margin_loss`` (p=2, eps=1e-6 added to the difference, so identical
    embeddings have a finite gradient). Inputs ``anchor``, ``positive``, ``negative``:
    ``crit(anchor=a, positive=p, negative=n)``. Example: ``triplet(margin=0.2)``.
    """
    _same_shapes(anchor=anchor, positive=positive, negative=negative)
    a, p, n = upcast(anchor, positive, negative)
    l = F.triplet_margin_loss(a, p, n, margin=margin, reduction="none")
    return reduce(l, reduction).to(anchor.dtype)


def cosine_distance(
    pred: Tensor, target: Tensor, *, dim: int = -1, reduction: Reduction = "mean",
) -> Tensor:
    """Cosine distance: mean(1 - cos_sim(pred, target)) along ``dim``.

    cos_sim as ``F.cosine_similarity`` (norms kept above 1e-8, so a zero vector gives a
    finite value and gradient). Example: ``mse + 0.1*cosine_distance(dim=-1)``.
    """
    check_same_shape(pred, target)
    check_dim(pred, dim, "pred", hint="dim= names the axis of the vectors")
    p, t = upcast(pred, target)
    cos = F.cosine_similarity(direction_scaled(p, dim), direction_scaled(t, dim), dim=dim)
    return reduce(1.0 - cos, reduction).to(pred.dtype)
