"""Schedules: weights that are plain functions of the optimizer step (DESIGN.md §6).

One row per schedule: its name, parameter model, formula and summary. A formula is written
once against a small math namespace ``m`` and runs in two places: on the host with Python
numbers (:data:`HOST`: an eager call whose step lives on the CPU, so the weight is a Python
float, as in hand-written code) and on tensors (``torch.compile``, other devices), with the
runtime's tensor math, computed in float64.
With ``tau = clamp((s - delay) / steps, 0, 1)``:

>>> SCHEDULES["linear"].value(2500, {"start": 0.0, "end": 1.0, "steps": 5000.0, "delay": 0.0})
0.5
>>> SCHEDULES["piecewise"].value(2500, {"boundaries": [1000.0, 3000.0], "values": [1.0, 0.5, 0.1]})
0.5
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Annotated, Any, Callable

from annotated_types import Gt, Le
from pydantic import BaseModel, Field, ValidationInfo, field_validator

from .params import STRICT, NonNegative, Positive

__all__ = ["Schedule", "SCHEDULES", "HOST", "MAX_BOUNDARIES"]

MAX_BOUNDARIES = 1024


class RampParams(BaseModel):
    """``linear`` and ``cosine``: from ``start`` to ``end`` over ``steps`` after ``delay``."""

    model_config = STRICT
    start: float
    end: float
    steps: Positive
    delay: NonNegative = 0


class PiecewiseParams(BaseModel):
    """Field validators (not a model validator) so an error points at the bad ``key=value``."""

    model_config = STRICT
    boundaries: list[float] = Field(min_length=1, max_length=MAX_BOUNDARIES)
    values: list[float] = Field(min_length=2, max_length=MAX_BOUNDARIES + 1)

    @field_validator("boundaries")
    @classmethod
    def _increasing(cls, b: list[float]) -> list[float]:
        if any(later <= earlier for earlier, later in zip(b, b[1:])):
            raise ValueError("boundaries must be strictly increasing")
        return b

    @field_validator("values")
    @classmethod
    def _one_more(cls, values: list[float], info: ValidationInfo) -> list[float]:
        b = info.data.get("boundaries")
        if b is not None and len(values) != len(b) + 1:
            raise ValueError(f"values needs one more item than boundaries ({len(b) + 1}), got {len(values)}")
        return values


class CyclicParams(BaseModel):
    model_config = STRICT
    period: Positive
    ratio: Annotated[float, Gt(0), Le(1)] = 0.5
    low: float = 0.0
    high: float = 1.0


class AfterParams(BaseModel):
    model_config = STRICT
    steps: Positive


class _Host:
    """The formulas' math on a Python int step, in float64."""

    real = staticmethod(float)
    cos = staticmethod(math.cos)

    @staticmethod
    def clamp(x: float, low: float, high: float) -> float:
        return min(max(x, low), high)

    @staticmethod
    def minimum(x: float, bound: float) -> float:
        return min(x, bound)

    @staticmethod
    def reached(step: int, boundary: float) -> float:
        return 1.0 if step >= boundary else 0.0

    @staticmethod
    def phase(step: int, period: float) -> float:
        rest = step % int(period) if float(period).is_integer() else step % period
        return rest / period

    @staticmethod
    def piecewise(step: int, boundaries: list, values: list) -> float:
        return float(values[bisect.bisect_right(boundaries, step)])


HOST = _Host()


@dataclass(frozen=True)
class Schedule:
    """One schedule: ``formula(step, params, m)``, ``m`` the math of the step's form:
    :data:`HOST` for a Python int, the runtime's tensor math for a tensor."""

    name: str
    params: type[BaseModel]
    formula: Callable[[Any, Any, Any], Any]
    summary: str

    def __reduce__(self):
        return (_schedule_named, (self.name,))

    def value(self, step: Any, params: dict, m: Any = HOST) -> Any:
        """The value at ``step`` (a Python int with :data:`HOST`)."""
        return self.formula(step, _Params(params), m)


class _Params:
    """Validated parameters by attribute, for readable formulas."""

    def __init__(self, values: dict) -> None:
        self.__dict__.update(values)


def _tau(s, p, m):
    return m.clamp((m.real(s) - p.delay) / p.steps, 0.0, 1.0)


def _linear(s, p, m):
    return p.start + (p.end - p.start) * _tau(s, p, m)


def _cosine(s, p, m):
    return p.start + (p.end - p.start) * (1.0 - m.cos(math.pi * _tau(s, p, m))) * 0.5


def _cyclic(s, p, m):
    return p.low + (p.high - p.low) * m.minimum(m.phase(s, p.period) / p.ratio, 1.0)


def _after(s, p, m):
    return m.reached(s, p.steps)


def _piecewise(s, p, m):
    return m.piecewise(s, p.boundaries, p.values)


SCHEDULES: dict[str, Schedule] = {
    row.name: row
    for row in (
        Schedule("linear", RampParams, _linear, "linear(start, end, steps, delay=0)"),
        Schedule("cosine", RampParams, _cosine, "cosine(start, end, steps, delay=0)"),
        Schedule("piecewise", PiecewiseParams, _piecewise, "piecewise(boundaries=[...], values=[...])"),
        Schedule("cyclic", CyclicParams, _cyclic, "cyclic(period, ratio=0.5, low=0, high=1)"),
        Schedule("after", AfterParams, _after, "after(steps): 0 before, 1 from steps on"),
    )
}


def _schedule_named(name: str) -> Schedule:
    return SCHEDULES[name]
