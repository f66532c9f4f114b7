"""Sequence terms (DESIGN.md §5): differences along a time (or space) axis, and ctc.

``temporal_diff`` compares the step-to-step changes of pred and target; ``tv`` penalises
the changes of pred alone (total variation). ``reduction="none"`` returns the penalty of
every difference: pred's shape with ``dim`` shortened by ``order`` (by 1 for tv).

``ctc`` (connectionist temporal classification, second table) is
``F.ctc_loss`` with the catalogue's input names: ``pred`` the log-probabilities ``(T, N, C)``,
``target`` the label sequences, ``input_lengths`` and ``target_lengths`` per sample
(tensors or lists of ints), all passed as inputs of the call. pred must be real floating
point; target and the lengths are integers. An empty batch (N = 0) gives 0 (an empty tensor
for ``reduction="none"``, which returns each sequence's negative log-likelihood, ``(N,)``).
"""

from __future__ import annotations

from typing import Annotated, Sequence

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt
from torch import Tensor

from ..errors import LossInputError
from ._common import Reduction, check_floating, check_tensor, from_residual, reduce, residual_form, safe_pow, upcast

__all__ = ["temporal_diff", "tv", "ctc"]


def _difference(x: Tensor, order: int, dim: int) -> Tensor:
    if dim >= x.dim() or dim < -x.dim():
        raise LossInputError(
            f"dim={dim} is out of range for an input with {x.dim()} dimensions",
            hint="choose the time axis, e.g. dim=1 for (batch, time, features)",
        )
    if x.shape[dim] <= order:
        raise LossInputError(
            f"a difference of order {order} along dim {dim} needs more than {order} steps, "
            f"the input has {x.shape[dim]}",
            hint="lower order= or check which axis is time (dim=)",
        )
    return torch.diff(x, n=order, dim=dim)


def _temporal_diff(e: Tensor, *, order: int, dim: int, p: float, reduction: Reduction) -> Tensor:
    # D is linear, so D pred - D target = D (pred - target): one difference instead of two.
    return reduce(safe_pow(_difference(e, order, dim).abs(), p), reduction)


@residual_form(_temporal_diff)
def temporal_diff(
    pred: Tensor, target: Tensor,
    *, order: Annotated[int, Ge(1)] = 1, dim: int = 1, p: Annotated[float, Gt(0)] = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Temporal difference penalty: mean(abs(D pred - D target)^p), D the order-th difference along dim.

    Penalises a forecast whose changes from step to step differ from the target's; for
    (batch, time, features) the time axis is dim=1. With p < 1 the gradient where
    D pred = D target is 0, not NaN. Example: ``0.7*huber(delta=1) + 0.3*temporal_diff(order=1, dim=1)``.
    """
    return from_residual(_temporal_diff, pred, target, order=order, dim=dim, p=p, reduction=reduction)


def tv(
    pred: Tensor,
    *, dim: int = 1, p: Annotated[float, Gt(0)] = 1.0, reduction: Reduction = "mean",
) -> Tensor:
    """Total variation of pred: mean(abs(D pred)^p), D the first difference along dim.

    A smoothness penalty on the prediction alone (the target is not read). With p < 1 the
    gradient where two neighbours are equal is 0, not NaN. Example: ``mse + 0.01*tv(dim=1)``.
    """
    check_floating(pred, "pred")
    (x,) = upcast(pred)
    d = safe_pow(_difference(x, 1, dim).abs(), p)
    return reduce(d, reduction).to(pred.dtype)


def _lengths(value, name: str, batch: int):
    """A tensor or a sequence of ints with one length per sample."""
    if isinstance(value, Tensor):
        ok = value.dim() == 1 and value.numel() == batch and _is_integer(value)
    else:
        ok = (
            isinstance(value, Sequence)
            and len(value) == batch
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        )
    if not ok:
        raise LossInputError(
            f"{name} must hold one integer length per sample ({batch}), got "
            f"{tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__}",
            hint=f"pass {name} as an integer tensor of shape ({batch},) or a list of {batch} ints",
        )
    return value


def _is_integer(x: Tensor) -> bool:
    return not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)


def _check(pred: Tensor, target: Tensor, blank: int) -> None:
    check_floating(pred, "pred")
    check_tensor(target, "target")
    if pred.dim() != 3:
        raise LossInputError(
            f"ctc needs log-probabilities of shape (T, N, C), got {tuple(pred.shape)}",
            hint="time first: pass logits.log_softmax(-1).transpose(0, 1) for a (N, T, C) model output",
        )
    if blank >= pred.shape[2]:
        raise LossInputError(
            f"blank={blank} is not a class of pred, which has {pred.shape[2]} classes",
            hint="blank= is the index of the blank label among the C classes",
        )
    if not _is_integer(target) or target.dim() not in (1, 2):
        raise LossInputError(
            f"ctc needs integer label sequences, (N, S) padded or 1-d concatenated, got "
            f"{target.dtype} of shape {tuple(target.shape)}",
            hint="pass target as a long tensor of class indices",
        )
    if target.dim() == 2 and target.shape[0] != pred.shape[1]:
        raise LossInputError(
            f"target has {target.shape[0]} label sequences but pred has a batch of {pred.shape[1]} "
            f"(shape {tuple(pred.shape)} is (T, N, C))",
            hint="one padded label sequence per sample: target of shape (N, S)",
        )


def ctc(
    pred: Tensor, target: Tensor, input_lengths, target_lengths,
    *, blank: Annotated[int, Ge(0)] = 0, zero_infinity: bool = False, reduction: Reduction = "mean",
) -> Tensor:
    """CTC loss of log-probabilities (T, N, C): F.ctc_loss with reduction="mean".

    pred holds log-probabilities (T, N, C); each sample's negative log-likelihood is divided
    by its target length, then averaged over the batch (``reduction="sum"``: summed, not
    divided; ``"none"``: each sequence's value, not divided, as torch). ``zero_infinity=true`` gives 0 for a sample no alignment can produce (an input
    shorter than its target). pred is passed through log_softmax first, which leaves
    log-probabilities as they are but makes the gradient the exact one of the value:
    torch's CTC gradient assumes its input came out of a log_softmax. Inputs:
    ``crit(log_probs, labels, input_lengths=il, target_lengths=tl)``.
    Example: ``ctc(blank=0, zero_infinity=true)``.
    """
    _check(pred, target, blank)
    batch = pred.shape[1]
    input_lengths = _lengths(input_lengths, "input_lengths", batch)
    target_lengths = _lengths(target_lengths, "target_lengths", batch)
    (x,) = upcast(pred)
    log_probs = x.log_softmax(-1)
    # the sum of log-probabilities over time and classes, one per sequence for "none"
    axes = (0, 2) if reduction == "none" else None
    if any(isinstance(v, Tensor) and v.device.type == "meta" for v in (input_lengths, target_lengths)):
        # no CTC kernel runs on lengths without values: on the meta device the result's
        # shape, dtype and graph are all there is to compute
        return log_probs.sum(axes).mul(0.0).to(pred.dtype)
    if batch == 0:  # torch refuses an empty batch; the sum of no log-probabilities is 0
        return log_probs.sum(axes).to(pred.dtype)
    try:
        out = F.ctc_loss(
            log_probs, target, input_lengths, target_lengths,
            blank=blank, reduction=reduction, zero_infinity=zero_infinity,
        )
    except RuntimeError as err:  # lengths out of range, labels equal to blank, ...
        raise LossInputError(
            f"ctc: {str(err).splitlines()[0]}",
            hint="input_lengths must be <= T and target_lengths <= the target's length",
        ) from None
    return out.to(pred.dtype)
