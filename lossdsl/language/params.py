"""Parameter models of the built-in functions: pydantic, strict, validated when compiling.

Bounds live in the annotations so that an error names the allowed range and points at the
``key=value`` that breaks it (DESIGN.md §8).

>>> ClampParams(min=0.0).max is None
True
"""

from __future__ import annotations

from typing import Annotated, Optional, Union

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, model_validator

__all__ = [
    "STRICT",
    "Positive",
    "NonNegative",
    "Unit",
    "Probability",
    "NoParams",
    "ClampParams",
    "SoftplusParams",
    "ReduceParams",
    "VarianceParams",
    "NormParams",
    "DiffParams",
    "SoftmaxParams",
    "SizeParams",
    "MAX_DIM",
]

STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)

Positive = Annotated[float, Gt(0)]
NonNegative = Annotated[float, Ge(0)]
Unit = Annotated[float, Gt(0), Lt(1)]
Probability = Annotated[float, Ge(0), Le(1)]

# tensors have at most this many dimensions (torch's own limit is 64)
MAX_DIM = 64
Dim = Annotated[int, Ge(-MAX_DIM), Lt(MAX_DIM)]


class NoParams(BaseModel):
    model_config = STRICT


class ClampParams(BaseModel):
    model_config = STRICT
    min: Optional[float] = None
    max: Optional[float] = None

    @model_validator(mode="after")
    def _bounds(self):
        if self.min is None and self.max is None:
            raise ValueError("clamp needs min=, max= or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not be greater than max")
        return self


class SoftplusParams(BaseModel):
    model_config = STRICT
    beta: Positive = 1.0


class ReduceParams(BaseModel):
    """``dim``: an axis, a list of axes, or none for all; ``keepdim`` keeps reduced axes."""

    model_config = STRICT
    dim: Union[Dim, list[Dim], None] = None
    keepdim: bool = False


class VarianceParams(ReduceParams):
    correction: Annotated[int, Ge(0)] = 1


class NormParams(ReduceParams):
    p: Positive = 2.0


class DiffParams(BaseModel):
    model_config = STRICT
    n: Annotated[int, Ge(1), Le(MAX_DIM)] = 1
    dim: Dim = -1


class SoftmaxParams(BaseModel):
    model_config = STRICT
    dim: Dim


class SizeParams(BaseModel):
    model_config = STRICT
    dim: Dim
