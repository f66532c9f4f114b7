"""Schedules: weights that are plain functions of the optimizer step (DESIGN.md §6).

Each takes the step as a tensor (so a changing step never recompiles a compiled loss) and
returns a 0-dim tensor on the step's device, in float64 where the device has it (float32
elsewhere): a float64 loss gets its weights to float64 precision, and ``Loss.forward``
returns the total in the terms' dtype whatever dtype the schedule's value had. With
``tau = clamp((s - delay) / steps, 0, 1)``:

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

import bisect
import math

import torch
from torch import Tensor

__all__ = [
    "linear", "cosine", "piecewise", "cyclic", "after", "SCHEDULES", "HOST_SCHEDULES", "schedule_value",
    "schedule_runner",
]


def _wide(step: Tensor) -> torch.dtype:
    # float64 where the device has it, so the value equals the host formula's (eager and
    # torch.compile agree); float32 elsewhere (e.g. MPS)
    return torch.float64 if step.device.type in ("cpu", "cuda") else torch.float32


def _tau(step: Tensor, steps: float, delay: float) -> Tensor:
    return ((step.to(_wide(step)) - delay) / steps).clamp(0.0, 1.0)


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
    out = torch.full(step.shape, float(values[0]), dtype=_wide(step), device=step.device)
    for boundary, value in zip(boundaries, values[1:]):
        # boundaries increase, so each later boundary that is passed overrides the earlier one
        out = torch.where(_reached(step, boundary), torch.full_like(out, value), out)
    return out


def cyclic(
    step: Tensor, *, period: float, ratio: float = 0.5, low: float = 0.0, high: float = 1.0
) -> Tensor:
    """``low + (high - low) * min(1, ((s mod period) / period) / ratio)`` (Fu et al. 2019)."""
    wide = _wide(step)
    if not step.is_floating_point() and float(period).is_integer():
        # the remainder in integers stays exact however large the step grows
        phase = torch.remainder(step, int(period)).to(wide) / period
    else:
        phase = torch.remainder(step.to(wide), period) / period
    return low + (high - low) * torch.clamp(phase / ratio, max=1.0)


def after(step: Tensor, *, steps: float) -> Tensor:
    """0 before ``steps``, 1 from ``steps`` on."""
    return _reached(step, steps).to(_wide(step))


SCHEDULES = {"linear": linear, "cosine": cosine, "piecewise": piecewise, "cyclic": cyclic, "after": after}


# The same formulas on a Python int step, for an eager loss whose step lives on the CPU: a
# weight computed on the host costs one multiplication by a Python float, as in hand-written
# code, instead of five tensor operations. In float64 on an exact integer step. Python float
# arithmetic here cannot raise: steps and periods are positive (checked when compiling), and
# a sum or product that overflows is inf, as in the tensor formulas.
def _host_tau(s: int, steps: float, delay: float) -> float:
    return min(max((s - delay) / steps, 0.0), 1.0)


def _host_cyclic(
    s: int, *, period: float, ratio: float = 0.5, low: float = 0.0, high: float = 1.0
) -> float:
    rest = s % int(period) if float(period).is_integer() else s % period
    return low + (high - low) * min(rest / period / ratio, 1.0)


HOST_SCHEDULES = {
    "linear": lambda s, *, start, end, steps, delay=0.0: start + (end - start) * _host_tau(s, steps, delay),
    "cosine": lambda s, *, start, end, steps, delay=0.0: (
        start + (end - start) * (1.0 - math.cos(math.pi * _host_tau(s, steps, delay))) * 0.5
    ),
    # the number of boundaries <= s picks the value (boundaries increase)
    "piecewise": lambda s, *, boundaries, values: float(values[bisect.bisect_right(boundaries, s)]),
    "cyclic": _host_cyclic,
    "after": lambda s, *, steps: 1.0 if s >= steps else 0.0,
}


def schedule_value(name: str, step: Tensor, params: dict) -> Tensor:
    """The value of schedule ``name`` with validated ``params`` at ``step``."""
    return SCHEDULES[name](step, **params)


def schedule_runner(name: str, params: dict):
    """``run(step) -> weight``: a Python float from a CPU step in eager mode (read on the host,
    no sync), else the tensor of :func:`schedule_value` (traced by ``torch.compile``).

    >>> run = schedule_runner("linear", {"start": 0.0, "end": 1.0, "steps": 3.0})
    >>> run(torch.tensor(1)) == 1 / 3          # double precision, not rounded to float32
    True
    """
    on_device, on_host = SCHEDULES[name], HOST_SCHEDULES[name]
    is_compiling = torch.compiler.is_compiling

    def run(step: Tensor):
        if step.is_cpu and not is_compiling():
            return on_host(step.item(), **params)
        return on_device(step, **params)

    return run
