"""The optimizer step a loss stores: what ``step=`` and ``set_step`` accept, the warning for
schedules that never get one, and the value of a schedule at the step.

A step is a whole number from 0 to 2**63 - 1 (the step buffer is an int64): an int, an
integer-valued float, a numpy integer, or a one-element tensor (pass one under
``torch.compile``). Anything else is a ``LossInputError`` that says what was given;
``fill_`` alone would raise a bare ``TypeError`` for ``"5"`` and wrap ``nan`` around silently.

>>> checked_step(7), checked_step(7.0)
(7, 7)
>>> checked_step("7")
Traceback (most recent call last):
...
lossdsl.LossInputError: step must be a whole number from 0 to 2**63 - 1 (the optimizer step), got '7'
hint: pass the optimizer step as an int, e.g. crit(pred, target, step=global_step), or as a 0-dim integer tensor under torch.compile
"""

from __future__ import annotations

import math
import operator
import warnings
from typing import Any

import torch
from torch import Tensor

from ..errors import LossInputError
from ..language.schedules import HOST

__all__ = ["STEP_LIMIT", "checked_step", "stepless_warning", "StepWatch", "ScheduleValue", "TENSOR", "scalar_tensor"]

STEP_LIMIT = 2**63


def checked_step(step: Any) -> int | Tensor:
    """``step`` as an int or a 0-dim tensor, or a :class:`LossInputError` saying what is wrong.

    A tensor's value is checked when it is on the CPU and not traced; one on an accelerator
    is not read (that would wait for the device on every call).
    """
    if isinstance(step, Tensor):
        if step.numel() != 1 or step.is_complex() or step.dtype == torch.bool:
            raise _step_error(step, f"a tensor of shape {tuple(step.shape)} and dtype {step.dtype}")
        if step.is_meta:  # no value to store: the stored step would silently stay what it was
            raise _step_error(step, "a tensor on the meta device, which holds no value")
        step = step.reshape(())
        if step.is_cpu and not torch.compiler.is_compiling():
            _checked_number(step.item(), step)
        return step
    return _checked_number(step, step)


def _checked_number(value: Any, given: Any) -> int:
    if isinstance(value, bool):
        raise _step_error(given, "a bool")
    try:
        number = operator.index(value)  # int, numpy integers
    except TypeError:
        if not (isinstance(value, float) and value.is_integer()):
            what = f"{value!r}" if isinstance(value, float) else f"a {type(value).__name__}"
            raise _step_error(given, what) from None
        number = int(value)
    if not 0 <= number < STEP_LIMIT:
        raise _step_error(given, f"{number}, outside 0 to 2**63 - 1")
    return number


def _step_error(given: Any, what: str) -> LossInputError:
    shown = repr(given) if isinstance(given, (str, bytes)) else what
    return LossInputError(
        f"step must be a whole number from 0 to 2**63 - 1 (the optimizer step), got {shown}",
        hint="pass the optimizer step as an int, e.g. crit(pred, target, step=global_step), "
        "or as a 0-dim integer tensor under torch.compile",
    )


def stepless_warning(schedules: list) -> str:
    """The text of the one warning for a loss whose schedules never got a step.

    >>> "set_step" in stepless_warning([])
    True
    """
    names = ", ".join(sorted({s.name for s in schedules})) or "schedules"
    return (
        f"lossdsl: this loss has schedules ({names}) that follow the optimizer step, but no step "
        "was given to it: they stay at step 0. Pass step=global_step to each call, or call "
        "crit.set_step(step) after each optimizer step (with gradient accumulation, "
        "crit.set_step(0) before the first call)."
    )


class StepWatch:
    """Whether training calls run schedules that no step was ever given to: the second such
    call warns, once (the first may be a sanity check before training). A step given or
    loaded ends the watch; ``calls`` is None when nothing is watched.

    >>> watch = StepWatch([])
    >>> watch.calls is None
    True
    """

    def __init__(self, schedules: list) -> None:
        self.schedules = schedules
        self.calls: int | None = 0 if schedules else None

    def given(self) -> None:
        if self.calls is not None and not torch.compiler.is_compiling():
            self.calls = None

    def missing(self, training: bool) -> None:
        """A call without a step (by ``Loss.forward``: stacklevel 5 is this, forward,
        nn.Module's two wrappers, then the caller)."""
        if torch.compiler.is_compiling() or not (training and torch.is_grad_enabled()):
            return
        calls = self.calls  # read once: a call in another thread may end the watch
        self.calls = None if calls is None or calls >= 1 else 1  # the second call warns
        if calls is not None and calls >= 1:
            warnings.warn(stepless_warning(self.schedules), UserWarning, stacklevel=5)


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
