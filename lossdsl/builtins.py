"""The built-in functions of the language: their arity, kinds and validated parameters.

This is the resolver's view of a built-in (what a call may look like); what it computes
lives in ``lossdsl/ops.py`` (math), ``lossdsl/schedules.py`` and ``lossdsl/balance.py``.

>>> from lossdsl.builtins import BUILTINS
>>> BUILTINS["clamp"].category, BUILTINS["linear"].category
('math', 'schedule')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

__all__ = ["Builtin", "BUILTINS", "BALANCE_METHODS", "BALANCE_PARAMS", "MAX_LIST_ITEMS", "MAX_WINDOW",
           "MAX_BALANCED"]

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)

Positive = Annotated[float, Gt(0)]
NonNegative = Annotated[float, Ge(0)]
Unit = Annotated[float, Gt(0), Lt(1)]

# Upper bounds of the parameters that size memory or per-call work, so that no text can ask
# for gigabytes when it compiles: list lengths (a piecewise schedule does one comparison per
# boundary per call), the steps a "dwa" balancer keeps (2*window values per term, copied
# every call) and the terms one balancer combines (its buffers have one entry per term).
MAX_LIST_ITEMS = 1024
MAX_WINDOW = 10_000
MAX_BALANCED = 256


class NoParams(BaseModel):
    model_config = _STRICT


class ClampParams(BaseModel):
    model_config = _STRICT
    min: Optional[float] = None
    max: Optional[float] = None

    @model_validator(mode="after")
    def _bounds(self):
        if self.min is None and self.max is None:
            raise ValueError("clamp needs min=, max= or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not be greater than max")
        return self


class RampParams(BaseModel):
    """``linear`` and ``cosine``: from ``start`` to ``end`` over ``steps`` after ``delay``."""

    model_config = _STRICT
    start: float
    end: float
    steps: Positive
    delay: NonNegative = 0


class PiecewiseParams(BaseModel):
    """Field validators (not a model validator) so an error points at the bad ``key=value``."""

    model_config = _STRICT
    boundaries: list[float] = Field(min_length=1, max_length=MAX_LIST_ITEMS)
    values: list[float] = Field(min_length=2, max_length=MAX_LIST_ITEMS + 1)

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
            raise ValueError(
                f"values needs one more item than boundaries ({len(b) + 1}), got {len(values)}"
            )
        return values


class CyclicParams(BaseModel):
    model_config = _STRICT
    period: Positive
    ratio: Annotated[float, Gt(0), Le(1)] = 0.5
    low: float = 0.0
    high: float = 1.0


class AfterParams(BaseModel):
    model_config = _STRICT
    steps: Positive


# --- balancers: one parameter model per method (DESIGN.md §6) ---------------------------


class UncertaintyParams(BaseModel):
    model_config = _STRICT
    method: Literal["uncertainty"] = "uncertainty"


class EmaParams(BaseModel):
    model_config = _STRICT
    method: Literal["ema"] = "ema"
    beta: Unit = 0.99
    eps: Positive = 1e-8


class DwaParams(BaseModel):
    model_config = _STRICT
    method: Literal["dwa"] = "dwa"
    temperature: Positive = 2.0
    window: Annotated[int, Gt(0), Le(MAX_WINDOW)] = 10
    eps: Positive = 1e-8


class CovParams(BaseModel):
    model_config = _STRICT
    method: Literal["cov"] = "cov"
    eps: Positive = 1e-8


class SoftAdaptParams(BaseModel):
    model_config = _STRICT
    method: Literal["softadapt"] = "softadapt"
    beta: float = 0.1


class ReLoBRaLoParams(BaseModel):
    model_config = _STRICT
    method: Literal["relobralo"] = "relobralo"
    alpha: Annotated[float, Ge(0), Le(1)] = 0.999
    expected_rho: Annotated[float, Ge(0), Le(1)] = 0.999
    temperature: Positive = 0.1
    eps: Positive = 1e-8
    seed: int = 0


BALANCE_PARAMS: dict[str, type[BaseModel]] = {
    "uncertainty": UncertaintyParams,
    "ema": EmaParams,
    "dwa": DwaParams,
    "cov": CovParams,
    "softadapt": SoftAdaptParams,
    "relobralo": ReLoBRaLoParams,
}
BALANCE_METHODS = tuple(BALANCE_PARAMS)


@dataclass(frozen=True)
class Builtin:
    """How a built-in is called.

    ``operands``: (min, max) count of leading positional expressions (max ``None`` = any);
    further positional arguments fill ``params`` fields in order. ``category`` is one of
    ``math`` (kind follows the operands), ``special`` (``detach``/``watch``: a loss operand),
    ``schedule`` (kind schedule, numbers only) and ``balance``.
    """

    name: str
    category: str
    operands: tuple[int, int | None]
    params: type[BaseModel]
    summary: str


def _b(name, category, operands, params, summary):
    return name, Builtin(name, category, operands, params, summary)


BUILTINS: dict[str, Builtin] = dict(
    [
        _b("log", "math", (1, 1), NoParams, "natural logarithm of a loss"),
        _b("exp", "math", (1, 1), NoParams, "exponential of a loss"),
        _b("sqrt", "math", (1, 1), NoParams, "square root of a loss"),
        _b("abs", "math", (1, 1), NoParams, "absolute value of a loss"),
        _b("min", "math", (2, None), NoParams, "smallest of its operands"),
        _b("max", "math", (2, None), NoParams, "largest of its operands"),
        _b("clamp", "math", (1, 1), ClampParams, "clamp(x, min=, max=): x limited to [min, max]"),
        _b("detach", "special", (1, 1), NoParams, "the value of x without its gradient"),
        _b("watch", "special", (1, 1), NoParams, "computed and logged; adds 0 to the total"),
        _b("linear", "schedule", (0, 0), RampParams, "linear(start, end, steps, delay=0)"),
        _b("cosine", "schedule", (0, 0), RampParams, "cosine(start, end, steps, delay=0)"),
        _b("piecewise", "schedule", (0, 0), PiecewiseParams, "piecewise(boundaries=[...], values=[...])"),
        _b("cyclic", "schedule", (0, 0), CyclicParams, "cyclic(period, ratio=0.5, low=0, high=1)"),
        _b("after", "schedule", (0, 0), AfterParams, "after(steps): 0 before, 1 from steps on"),
        _b("balance", "balance", (2, MAX_BALANCED), NoParams, "balance(a, b, ..., method=...)"),
    ]
)
