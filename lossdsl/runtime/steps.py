"""The optimizer step a loss stores: what a call may pass as ``step=``.

>>> import torch
>>> int(checked_step(5, torch.zeros((), dtype=torch.long)))
5
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import torch
from torch import Tensor

from ..errors import LossInputError

__all__ = ["checked_step", "MAX_STEP"]

MAX_STEP = 2**62


def _refuse(step: Any, why: str) -> LossInputError:
    return LossInputError(
        f"step={step!r} is not a step: {why}",
        hint="pass the optimizer step as a non-negative int (or a 0-dim integer tensor), e.g. step=global_step",
    )


def checked_step(step: Any, stored: Tensor) -> Any:
    """``step`` as a value to copy into the stored step; a :class:`~lossdsl.LossInputError`
    when it is not a whole number in range. A tensor step is checked for its shape and dtype
    only (reading its value would synchronise the device)."""
    if isinstance(step, Tensor):
        if step.numel() != 1 or step.dim() > 1:
            raise _refuse(step, f"a tensor of shape {tuple(step.shape)}; one number is needed")
        if step.is_complex() or step.dtype == torch.bool:
            raise _refuse(step, f"a {step.dtype} tensor")
        if step.is_floating_point() and step.device.type == "cpu" and not torch.compiler.is_compiling():
            value = float(step)
            if not math.isfinite(value) or value != int(value):
                raise _refuse(step, "not a whole number")
        return step.reshape(())
    if isinstance(step, bool) or not isinstance(step, Real):
        raise _refuse(step, f"a {type(step).__name__}")
    if not isinstance(step, Integral):
        if not math.isfinite(step) or step != int(step):
            raise _refuse(step, "not a whole number")
        step = int(step)
    if not -MAX_STEP <= step <= MAX_STEP:
        raise _refuse(step, f"outside ±2^62")
    return step
