"""The value of a schedule at the stored optimizer step, on the host or as a tensor (what a
step is, and the warning for schedules that never get one: :mod:`.step_check`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..language.schedules import HOST
from .step_check import STEP_LIMIT

__all__ = ["ScheduleValue", "TENSOR", "scalar_tensor"]


# --- evaluating a schedule (``language.schedules``) at the stored step ------------------
# In an eager call with the step on the CPU the value is a Python float computed on the host
# in double precision (a weight then costs one multiplication by a number, as in hand-written
# code; the program turns it into a tensor where an operation could raise on numbers, see
# :func:`scalar_tensor`); otherwise (``torch.compile``, another device) it is computed as a
# float64 tensor on the step's device (float32 where the device has no float64), traced
# without recompiling as the step changes.


class _TensorMath:
    """The schedules' math on a step tensor: float64 where the device has it, and exact
    integer comparisons and remainders however large the step grows."""

    cos = staticmethod(torch.cos)

    @staticmethod
    def real(step: Tensor) -> Tensor:
        return step.to(torch.float64 if step.device.type in ("cpu", "cuda") else torch.float32)

    @staticmethod
    def clamp(x: Tensor, low: float, high: float) -> Tensor:
        return x.clamp(low, high)

    @staticmethod
    def minimum(x: Tensor, bound: float) -> Tensor:
        return x.clamp(max=bound)

    @staticmethod
    def reached(step: Tensor, boundary: float) -> Tensor:
        if step.is_floating_point():
            hit = step >= boundary
        elif boundary >= STEP_LIMIT:  # beyond every step an int64 holds (compared as one, it would overflow)
            hit = torch.zeros_like(step, dtype=torch.bool)
        else:
            hit = step >= math.ceil(max(boundary, -1.0))
        return _TensorMath.real(hit)

    @staticmethod
    def phase(step: Tensor, period: float) -> Tensor:
        if not step.is_floating_point() and float(period).is_integer() and period < STEP_LIMIT:
            return _TensorMath.real(torch.remainder(step, int(period))) / period
        return torch.remainder(_TensorMath.real(step), period) / period

    @staticmethod
    def piecewise(step: Tensor, boundaries: list, values: list) -> Tensor:
        out = torch.full_like(_TensorMath.real(step), float(values[0]))
        for boundary, value in zip(boundaries, values[1:]):
            # boundaries increase, so a later boundary that is passed overrides the earlier
            out = torch.where(_TensorMath.reached(step, boundary) > 0, value, out)
        return out


TENSOR = _TensorMath()


class ScheduleValue:
    """``at(step)``: the value of one schedule with validated parameters.

    >>> from lossdsl.language.schedules import SCHEDULES
    >>> at = ScheduleValue(SCHEDULES["linear"], {"start": 0.0, "end": 1.0, "steps": 4.0, "delay": 0.0})
    >>> at(torch.tensor(1)), float(SCHEDULES["linear"].value(torch.tensor(1), at.params, TENSOR))
    (0.25, 0.25)
    """

    def __init__(self, row: Any, params: dict) -> None:
        self.row, self.params = row, dict(params)
        self.__name__ = f"schedule_{row.name}"
        self.__qualname__ = self.__name__
        self.__module__ = __name__

    def __call__(self, step: Tensor) -> Any:
        if step.is_cpu and not torch.compiler.is_compiling():
            try:
                return float(self.row.value(step.item(), self.params, HOST))
            except (ArithmeticError, ValueError):
                return math.nan
        return self.row.value(step, self.params, TENSOR)


def scalar_tensor(x: Any) -> Any:
    """A schedule's value as a tensor: Python arithmetic raises where tensors give inf or NaN
    (``1 / 0.0``, ``0.0 ** -1``), and torch functions need tensors. A tensor passes as it is."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, bool):  # a comparison of schedules: a condition, as where needs it
        return torch.tensor(x)
    return torch.tensor(x, dtype=torch.float64)
