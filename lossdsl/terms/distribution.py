"""Terms between distributions and likelihoods (DESIGN.md §5).

kl_div (log-probabilities against a target distribution), vae_kl (a diagonal Gaussian
posterior against N(0, I)), gaussian_nll (a predicted mean and variance) and poisson_nll.
``reduction="none"`` gives vae_kl's per-sample values and the elementwise values of
gaussian_nll and poisson_nll (pred's shape).
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Gt
from torch import Tensor

from ..errors import LossInputError
from ._common import Reduction, check_floating, check_same_shape, clamp_straight_through, reduce, upcast

__all__ = ["kl_div", "vae_kl", "gaussian_nll", "poisson_nll"]


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
    *, eps: Annotated[float, Gt(0)] = 1e-6, reduction: Reduction = "mean",
) -> Tensor:
    """Gaussian negative log-likelihood with a predicted variance: F.gaussian_nll_loss.

    mean(0.5 (log(v) + (pred - target)^2 / v)), v = var clamped to at least eps (as in
    torch, the clamp does not block the gradient). Input ``var``:
    ``crit(mean, target, var=variance)``. Unlike torch, a negative var is clamped rather than
    raising (that check would synchronise the device). Example: ``gaussian_nll(eps=1e-6)``.
    """
    check_same_shape(pred, target)
    v = _var_like(var, pred)
    p, t, v = upcast(pred, target, v)
    # clamped value, identity gradient: torch clamps under no_grad, this is the same thing
    v = clamp_straight_through(v, min=eps)
    e = p - t
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
