"""Knowledge distillation (DESIGN.md §5, second table): distill_kl.

The student (``pred``) matches the teacher's (``target``) class distribution softened by a
temperature (Hinton, Vinyals & Dean 2015). Both are logits; the divergence is computed from
two log-softmaxes, so logits of ±100 and any temperature in range give finite values.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge, Le
from torch import Tensor

from ..errors import LossInputError
from ._common import Reduction, check_dim, check_same_shape, reduce, upcast

__all__ = ["distill_kl"]

# the value is multiplied by T^2, the logits divided by T: both stay finite in float32 here
Temperature = Annotated[float, Ge(1e-4), Le(1e4)]


def _per_sample_distill_kl(student: Tensor, teacher: Tensor, temperature: float, axis: int) -> Tensor:
    """``T^2 sum_c q_c (log q_c - log p_c)``, q = softmax(teacher / T), p = softmax(student / T)."""
    log_p = F.log_softmax(student / temperature, dim=axis)
    log_q = F.log_softmax(teacher / temperature, dim=axis)
    # exp(log_q) underflows to 0 where q is tiny, and 0 * (finite) is 0: no 0 * log 0 here
    kl = (torch.exp(log_q) * (log_q - log_p)).sum(axis)
    return temperature * temperature * kl


def distill_kl(
    pred: Tensor, target: Tensor,
    *, temperature: Temperature = 4.0, class_dim: int = 1, reduction: Reduction = "mean",
) -> Tensor:
    """Distillation loss: T^2 KL(softmax(target / T) || softmax(pred / T)), mean over samples.

    pred holds the student's logits, target the teacher's, of one shape; the KL divergence
    is summed over ``class_dim`` and averaged over every other position (samples, pixels);
    ``reduction="sum"`` sums them, ``"none"`` returns them (pred's shape without the class axis). The factor T^2 keeps the gradient's scale independent of
    the temperature (Hinton et al. 2015). The teacher's logits are not detached: pass them
    without gradient unless both networks learn.
    Example: ``0.5*cross_entropy + 0.5*distill_kl(target=teacher, temperature=4)``, called as
    ``crit(student_logits, labels, teacher=teacher_logits)``.
    """
    check_same_shape(pred, target)
    if pred.dim() == 0:
        raise LossInputError(
            "distill_kl needs logits with a class axis, got a 0-dim pred",
            hint="pass student and teacher logits of shape (batch, classes, ...)",
        )
    axis = check_dim(
        pred, class_dim, "pred", hint="class_dim= names the axis of the classes, e.g. class_dim=1 for (batch, classes, ...)"
    )
    s, t = upcast(pred, target)
    l = _per_sample_distill_kl(s, t.to(s.dtype), temperature, axis)
    return reduce(l, reduction).to(pred.dtype)
