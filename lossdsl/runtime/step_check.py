"""The optimizer step a loss is given: what ``step=``, ``set_step``, ``monitor.write(step=...)``
and a loaded state accept (one rule, checked before anything is stored), and the one warning
for a loss whose schedules never get a step.

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

import operator
import warnings
from typing import Any

import torch
from torch import Tensor

from ..errors import LossInputError

__all__ = ["STEP_LIMIT", "checked_step", "stepless_warning", "StepWatch"]

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
