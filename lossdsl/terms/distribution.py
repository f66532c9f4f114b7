"""Terms between distributions and likelihoods (DESIGN.md §5).

kl_div (log-probabilities against a target distribution), vae_kl (a diagonal Gaussian
posterior against N(0, I)), gaussian_nll (a predicted mean and variance) and poisson_nll.
``reduction="none"`` gives vae_kl's per-sample values and the elementwise values of
gaussian_nll and poisson_nll (pred's shape).

distill_kl (knowledge distillation, second table): the student (``pred``) matches the teacher's (``target``) class distribution softened by a
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
from ._common import (
    Reduction,
    Stabiliser,
    check_dim,
    check_floating,
    check_same_shape,
    clamp_straight_through,
    reduce,
    residual,
    upcast,
)

__all__ = ["kl_div", "vae_kl", "gaussian_nll", "poisson_nll", "distill_kl"]


def kl_div(pred: Tensor, target: Tensor, *, log_target: bool = False) -> Tensor:
    """KL divergence KL(target || exp(pred)), pred in log-space, per sample of the batch.

    Equals ``F.kl_div(pred, target, reduction="batchmean", log_target=log_target)``:
    sum(t (log t - pred)) / batch, with t log t = 0 where t = 0; ``log_target=true`` takes
    the target as log-probabilities too. Example: ``kl_div(log_target=false)`` with
    ``pred = logits.log_softmax(-1)``.
    """
    check_same_shape(pred, target)
    x, t = upcast(pred, target)
    # batchmean divides by the batch size: an empty batch is 0/0 there, here 0
    how = "sum" if x.numel() == 0 else "batchmean"
    return F.kl_div(x, t.to(x.dtype), reduction=how, log_target=log_target).to(pred.dtype)


def vae_kl(mu: Tensor, logvar: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """VAE prior term: KL(N(mu, exp(logvar)) || N(0, I)), mean over the batch.

    Value: mean over the batch (first axis) of -0.5 * sum_latent(1 + logvar - mu^2 - exp(logvar)),
    the latent being every other axis (a 1-d mu is one sample). ``reduction="sum"`` sums the
    samples' values, ``"none"`` returns them (shape ``(batch,)``; 0-dim for a 1-d mu). Inputs
    ``mu`` and ``logvar``: ``crit(pred, target, mu=mu, logvar=logvar)``.
    Example: ``mse + linear(0, 1, steps=5000)*vae_kl``.
    """
    check_floating(mu, "mu")
    check_floating(logvar, "logvar")
    if mu.shape != logvar.shape:
        raise LossInputError(
            f"mu has shape {tuple(mu.shape)} but logvar has shape {tuple(logvar.shape)}",
            hint="mu and logvar describe the same latent: give them one shape",
        )
    m, lv = upcast(mu, logvar)
    per_element = 1.0 + lv - m * m - torch.exp(lv)
    if m.dim() <= 1:  # one sample: every reduction of its one value is that value
        return (-0.5 * per_element.sum()).to(mu.dtype)
    per_sample = per_element.flatten(1).sum(1)
    return (-0.5 * reduce(per_sample, reduction)).to(mu.dtype)


def _var_like(var: Tensor, pred: Tensor) -> Tensor:
    """torch's rule: var has pred's shape, or pred's shape without (or with 1 as) the last axis."""
    check_floating(var, "var")
    shape = tuple(pred.shape)
    if tuple(var.shape) == shape:
        return var
    if pred.dim() >= 1 and tuple(var.shape) == shape[:-1]:
        return var.unsqueeze(-1)
    if pred.dim() >= 1 and tuple(var.shape) == shape[:-1] + (1,):
        return var
    raise LossInputError(
        f"var has shape {tuple(var.shape)}, which does not fit pred's {shape}",
        hint="give var pred's shape, or pred's shape with the last axis 1 or left out "
        "(one variance per sample)",
    )


def gaussian_nll(
    pred: Tensor, target: Tensor, var: Tensor,
    *, eps: Stabiliser = 1e-6, reduction: Reduction = "mean",
) -> Tensor:
    """Gaussian negative log-likelihood with a predicted variance: F.gaussian_nll_loss.

    mean(0.5 (log(v) + (pred - target)^2 / v)), v = var clamped to at least eps (as in
    torch, the clamp does not block the gradient). Input ``var``:
    ``crit(mean, target, var=variance)``. Unlike torch, a negative var is clamped rather than
    raising (that check would synchronise the device). Example: ``gaussian_nll(eps=1e-6)``.
    """
    check_same_shape(pred, target)
    v = _var_like(var, pred)
    (v,) = upcast(v)
    # clamped value, identity gradient: torch clamps under no_grad, this is the same thing
    v = clamp_straight_through(v, min=eps)
    e = residual(pred, target)
    l = 0.5 * (torch.log(v) + e * e / v)
    return reduce(l, reduction).to(pred.dtype)


def poisson_nll(
    pred: Tensor, target: Tensor, *, log_input: bool = True, reduction: Reduction = "mean",
) -> Tensor:
    """Poisson negative log-likelihood: F.poisson_nll_loss (without the Stirling term).

    log_input=true: mean(exp(pred) - target * pred), pred the log-rate; log_input=false:
    mean(pred - target * log(pred + 1e-8)), pred the rate. Example: ``poisson_nll(log_input=true)``.
    """
    check_same_shape(pred, target)
    x, t = upcast(pred, target)
    l = F.poisson_nll_loss(x, t.to(x.dtype), log_input=log_input, full=False, eps=1e-8, reduction="none")
    return reduce(l, reduction).to(pred.dtype)


# the value is multiplied by T^2, the logits divided by T: both stay finite in float32 here
Temperature = Annotated[float, Ge(1e-4), Le(1e4)]


def _per_sample_distill_kl(student: Tensor, teacher: Tensor, temperature: float, axis: int) -> Tensor:
    """``T^2 sum_c q_c (log q_c - log p_c)``, q = softmax(teacher / T), p = softmax(student / T)."""
    log_p = F.log_softmax(student / temperature, dim=axis)
    log_q = F.log_softmax(teacher / temperature, dim=axis)
    # a class the teacher masks (-inf, q = 0) adds 0, not 0 * -inf: the difference is taken
    # where q > 0 only, so neither the value nor a gradient sees the infinity
    q = torch.exp(log_q)
    kl = (q * torch.where(q > 0, log_q - log_p, 0.0)).sum(axis)
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
