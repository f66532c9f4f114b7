"""The benchmarked loss programs, each with the hand-written eager PyTorch of the same formula.

A hand-written version is what a careful engineer would type with ``torch.nn.functional``:
Python-float weights, a schedule computed from the step on the host, one ``pred - target``
shared by the terms that need it. ``temporal_diff`` is written as ``diff(pred - target)``, the
same (linear) formula the term uses, so a ratio measures lossdsl's overhead, not a different
algorithm.

>>> import torch
>>> from benchmarks.programs import PROGRAMS
>>> card = PROGRAMS["card"]
>>> p, t = torch.zeros(2, 4, 1), torch.ones(2, 4, 1)
>>> round(float(card.hand()(p, t, 0)), 4)
0.35
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Program", "PROGRAMS"]



@dataclass(frozen=True)
class Program:
    """A benchmarked program: its lossdsl text and a factory of the hand-written loss.

    ``hand()`` returns a fresh ``f(pred, target, step) -> loss`` (fresh: a balancer keeps
    state). ``elementwise``: a sum of elementwise terms (torch.compile fuses it into one
    pass, which is why ``compile(..., fuse=True)`` is gone).
    """

    key: str
    source: str
    hand: Callable[[], Callable[[Tensor, Tensor, int], Tensor]]
    elementwise: bool = False


def _temporal(e: Tensor) -> Tensor:
    return torch.diff(e, dim=1).abs().mean()


def _card() -> Callable:
    def loss(p: Tensor, t: Tensor, step: int) -> Tensor:
        return 0.7 * F.huber_loss(p, t, delta=1.0) + 0.3 * _temporal(p - t)

    return loss


def _mixture() -> Callable:
    def loss(p: Tensor, t: Tensor, step: int) -> Tensor:
        e = p - t
        ramp = 0.1 * min(max(step / 1000.0, 0.0), 1.0)  # linear(0, 0.1, steps=1000)
        return (
            0.4 * F.huber_loss(p, t, delta=1.0)
            + 0.2 * F.mse_loss(p, t)
            + 0.1 * F.l1_loss(p, t)
            + 0.1 * F.smooth_l1_loss(p, t, beta=0.5)
            + ramp * _temporal(e)
            + 0.05 * torch.sqrt(e * e + 1e-6).mean()
        )

    return loss


def _balanced() -> Callable:
    beta, eps = 0.99, 1e-8
    state = {"ema": None, "count": 0}

    def loss(p: Tensor, t: Tensor, step: int) -> Tensor:
        losses = torch.stack([F.huber_loss(p, t, delta=1.0), _temporal(p - t)])
        seen = losses.detach()
        ema = state["ema"]
        state["ema"] = (1 - beta) * seen if ema is None else beta * ema + (1 - beta) * seen
        state["count"] += 1
        mean = state["ema"] / (1 - beta ** state["count"])  # bias-corrected, updated before use
        return (losses / (mean + eps)).sum()

    return loss


def _log_cosh(e: Tensor, a: Tensor) -> Tensor:
    # the term's own formula (accurate near 0, linear past |e| = 40), so the ratio compares
    # the same arithmetic; autograd differentiates it as written
    c = e.clamp(-40.0, 40.0)
    return torch.log1p(2.0 * torch.sinh(0.5 * c) ** 2) + (a - 40.0).clamp_min(0.0)


def _elementwise() -> Callable:
    def loss(p: Tensor, t: Tensor, step: int) -> Tensor:
        e = p - t
        a = e.abs()
        return (
            0.4 * F.huber_loss(p, t, delta=1.0)
            + 0.2 * F.mse_loss(p, t)
            + 0.1 * F.l1_loss(p, t)
            + 0.1 * F.smooth_l1_loss(p, t, beta=0.5)
            + 0.05 * torch.sqrt(e * e + 1e-6).mean()
            + 0.15 * _log_cosh(e, a).mean()
        )

    return loss


def _hinge() -> Callable:
    def loss(p: Tensor, t: Tensor, step: int) -> Tensor:
        outside = (p < 0) | (p > 1)
        hinge = torch.where(outside, F.relu(1 - (p - t).abs()), 0).mean()
        return F.mse_loss(p, t) + 0.5 * hinge

    return loss


def _adaptive_huber() -> Callable:
    def loss(p: Tensor, t: Tensor, step: int) -> Tensor:
        a = (p - t).abs()
        delta = 0.5 * a.mean()  # differentiated too, as in the text
        return torch.where(a <= delta, 0.5 * a**2, delta * (a - 0.5 * delta)).mean()

    return loss


PROGRAMS = {
    p.key: p
    for p in (
        Program("card", "0.7*huber(delta=1) + 0.3*temporal_diff", _card),
        Program(
            "mixture",
            "0.4*huber(delta=1) + 0.2*mse + 0.1*mae + 0.1*smooth_l1(beta=0.5)"
            " + linear(0, 0.1, steps=1000)*temporal_diff + 0.05*charbonnier",
            _mixture,
        ),
        Program("balance", 'balance(huber, temporal_diff, method="ema")', _balanced),
        Program(
            "elementwise",
            "0.4*huber(delta=1) + 0.2*mse + 0.1*mae + 0.1*smooth_l1(beta=0.5)"
            " + 0.05*charbonnier + 0.15*log_cosh",
            _elementwise,
            elementwise=True,
        ),
        Program(
            "tensor",
            "lower = 0; upper = 1; "
            "hinge = mean(where(pred < lower or pred > upper, relu(1 - abs(pred - target)), 0)); "
            "mse + 0.5*hinge",
            _hinge,
        ),
        Program(
            "adaptive",
            "a = abs(pred - target); delta = 0.5*mean(a); "
            "mean(where(a <= delta, 0.5*a^2, delta*(a - 0.5*delta)))",
            _adaptive_huber,
        ),
    )
}
