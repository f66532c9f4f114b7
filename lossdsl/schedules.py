"""Schedules: weights that are plain functions of the optimizer step (DESIGN.md §6).

Each takes the step as a tensor (so a changing step never recompiles a compiled loss) and
returns a float32 0-dim tensor on the step's device. With ``tau = clamp((s - delay) / steps, 0, 1)``:

>>> import torch
>>> from lossdsl.schedules import linear, cosine, piecewise, cyclic, after
>>> s = torch.tensor(2500)
>>> float(linear(s, start=0.0, end=1.0, steps=5000.0))
0.5
>>> round(float(cosine(s, start=0.0, end=1.0, steps=5000.0)), 6)
0.5
>>> float(piecewise(s, boundaries=[1000.0, 3000.0], values=[1.0, 0.5, 0.1]))
0.5
>>> float(after(s, steps=3000.0))
0.0
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["linear", "cosine", "piecewise", "cyclic", "after", "SCHEDULES", "schedule_value"]


def _tau(step: Tensor, steps: float, delay: float) -> Tensor:
    return ((step.to(torch.float32) - delay) / steps).clamp(0.0, 1.0)


def linear(step: Tensor, *, start: float, end: float, steps: float, delay: float = 0.0) -> Tensor:
    """``start + (end - start) * tau``."""
    return start + (end - start) * _tau(step, steps, delay)


def cosine(step: Tensor, *, start: float, end: float, steps: float, delay: float = 0.0) -> Tensor:
    """``start + (end - start) * (1 - cos(pi * tau)) / 2``."""
    tau = _tau(step, steps, delay)
    return start + (end - start) * (1.0 - torch.cos(math.pi * tau)) * 0.5


def _reached(step: Tensor, boundary: float) -> Tensor:
    """``step >= boundary``, exact for any integer step (no float32 rounding of large steps)."""
    if not step.is_floating_point():
        return step >= math.ceil(boundary)
    return step >= boundary


def piecewise(step: Tensor, *, boundaries: list[float], values: list[float]) -> Tensor:
    """``values[k]``, ``k`` = the number of boundaries ``<= step``."""
    out = torch.full(step.shape, float(values[0]), dtype=torch.float32, device=step.device)
    for boundary, value in zip(boundaries, values[1:]):
        # boundaries increase, so each later boundary that is passed overrides the earlier one
        out = torch.where(_reached(step, boundary), torch.full_like(out, value), out)
    return out


def cyclic(
    step: Tensor, *, period: float, ratio: float = 0.5, low: float = 0.0, high: float = 1.0
) -> Tensor:
    """``low + (high - low) * min(1, ((s mod period) / period) / ratio)`` (Fu et al. 2019)."""
    if not step.is_floating_point() and float(period).is_integer():
        # the remainder in integers stays exact however large the step grows
        phase = torch.remainder(step, int(period)).to(torch.float32) / period
    else:
        phase = torch.remainder(step.to(torch.float32), period) / period
    return low + (high - low) * torch.clamp(phase / ratio, max=1.0)


def after(step: Tensor, *, steps: float) -> Tensor:
    """0 before ``steps``, 1 from ``steps`` on."""
    return _reached(step, steps).to(torch.float32)


SCHEDULES = {"linear": linear, "cosine": cosine, "piecewise": piecewise, "cyclic": cyclic, "after": after}


def schedule_value(name: str, step: Tensor, params: dict) -> Tensor:
    """The value of schedule ``name`` with validated ``params`` at ``step``."""
    return SCHEDULES[name](step, **params)
