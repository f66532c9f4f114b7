"""What a call reports besides its total: the effective weights (and the total of a weighted
sum, made from them) in the terms' dtype, and the row of values ``crit.terms`` reads.

``Loss.forward`` hands over the call's values and the dtype the terms combine in (the terms'
dtype; float32 for half precision). The weights come from the plan (``weights.py``): folded
constants, a weight program (a few factors and one matrix-vector product) or, beyond its
size, the numeric sweep. Every tensor made from the program's numbers is made in the dtype
asked for, from the Python numbers, and cached per (dtype, device): a float64 loss gets 0.7,
not float32's 0.699999988, and the common float32 call makes nothing.

>>> import torch, lossdsl
>>> crit = lossdsl.compile("0.7*huber + log(mse)")
>>> _ = crit(torch.randn(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64))
>>> crit.weights["huber"].dtype, crit.weights["huber"].item()
(torch.float64, 0.7)
"""

from __future__ import annotations

from typing import Any

import math

import torch
from torch import Tensor

from .terms._common import HALF_DTYPES
from .weights import sweep

__all__ = ["CallWeights", "constant_weights_of", "values_row", "combining_dtype"]

_CACHE = 8  # entries per cache: a loss meets few (dtype, device, step-weights) in a run


class CallWeights:
    """The weights of one ``Loss``'s calls; holds its caches (cleared when the loss moves)."""

    def __init__(self, plan, balancers) -> None:
        self.plan = plan
        self.program = plan.weight_program
        self.balancers = balancers  # the loss's balancer modules: their last_weights
        self.typed: dict = {}  # (what, dtype, device) -> constant weights, or (matrix, offset)
        self.coefficients: dict = {}  # (host key, dtype, device) -> the total's coefficients
        self.host: list = [None, None]  # [(monomials, dtype), weights] of the last host call

    def clear(self) -> None:
        self.typed.clear()
        self.coefficients.clear()
        self.host[:] = [None, None]

    def weights(self, constant: Tensor | None, vals: list | None, dtype: torch.dtype) -> Tensor:
        """The effective weights in ``dtype``; ``constant`` is the loss's float32 buffer of
        folded weights (None when they depend on the values)."""
        if constant is not None:
            if dtype is torch.float32:
                return constant
            return self._typed("constant", dtype, constant.device)
        balancer_weights = [b.last_weights for b in self.balancers]
        program = self.program
        if program is None:
            return self._swept(vals, balancer_weights, dtype)
        m = program.monomial_values(self.plan, vals, balancer_weights, dtype)
        if isinstance(m, tuple):
            # Weights from schedules read on the host. Unchanged since the last call (a
            # schedule that has ended, a piecewise step): the same tensor, which the
            # monitor then writes into its history once instead of per call.
            cached, key = self.host, (m, dtype)
            if cached[0] != key:
                cached[0], cached[1] = key, torch.tensor(program.on_host(m), dtype=dtype)
            return cached[1]
        if program.direct:
            return m
        matrix, offset = self._typed("matrix", dtype, m.device)
        return torch.addmv(offset, matrix, m)

    def linear_total(self, constant: Tensor | None, lin, vals: list, stacked: Tensor) -> tuple[Tensor, Tensor]:
        """``(dot(weights, terms) + offset, weights)`` of a weighted-sum program
        (``linear.py``), ``stacked`` the terms' values in the dtype they combine in."""
        dtype, device = stacked.dtype, stacked.device
        weights = self.weights(constant, vals, dtype)
        # The coefficients from the Python numbers, not from the weights' tensor (on another
        # device, maybe): a float64 loss gets 0.7, not float32's 0.699999988.
        host = None if constant is not None else self.host[0]  # (monomials, dtype) of the weights
        key = (host, dtype, device)
        compiling = torch.compiler.is_compiling()
        coeffs = None if compiling else self.coefficients.get(key)
        if coeffs is None:  # under torch.compile: a constant of the graph, no cache to guard on
            numbers = self.plan.constant_weights if host is None else self.program.on_host(host[0])
            with torch.inference_mode(False):  # kept: must be usable by autograd later
                coeffs = torch.tensor([numbers[i] for i in lin.weight_index], dtype=dtype, device=device)
            if not compiling:
                _store(self.coefficients, key, coeffs)
        total = torch.dot(coeffs, stacked)
        return (total + lin.offset if lin.offset else total), weights

    def _typed(self, what: str, dtype: torch.dtype, device: torch.device) -> Any:
        """The constant weights, or the weight program's (matrix, offset), in ``dtype`` on
        ``device``, made from the Python numbers once."""
        key = (what, dtype, device)
        compiling = torch.compiler.is_compiling()
        made = None if compiling else self.typed.get(key)
        if made is None:
            with torch.inference_mode(False):
                if what == "constant":
                    made = torch.tensor(self.plan.constant_weights, dtype=dtype, device=device)
                else:
                    made = self.program.tensors(dtype, device)
            if not compiling:
                _store(self.typed, key, made)
        return made

    def _swept(self, vals: list, balancer_weights: list, dtype: torch.dtype) -> Tensor:
        """The numeric sweep, for programs beyond the weight program's size."""
        device = next(v for v in vals if isinstance(v, Tensor)).device
        # host numbers as float64 tensors: the sweep's arithmetic then gives inf for 1/0
        detached = [
            v.detach() if isinstance(v, Tensor) else torch.tensor(float(v), dtype=torch.float64, device=device)
            for v in vals
        ]
        return torch.stack([
            w.reshape(()).to(dtype) if isinstance(w, Tensor) else torch.tensor(float(w), dtype=dtype, device=device)
            for w in sweep(self.plan, detached, balancer_weights)
        ])


def _store(cache: dict, key: Any, value: Any) -> None:
    if len(cache) > _CACHE:
        cache.clear()
    cache[key] = value


def constant_weights_of(plan) -> Tensor:
    """The folded weights as a float32 CPU tensor made once per plan and shared by the
    modules built from it (never written in place; ``.to()`` gives each module its own copy)."""
    if plan.constant_weights_tensor is None:
        with torch.inference_mode(False):  # a compile under inference_mode must not make it one
            plan.constant_weights_tensor = torch.tensor(plan.constant_weights, dtype=torch.float32)
    return plan.constant_weights_tensor


def values_row(logged: list, total: Any, dtype: torch.dtype) -> tuple[Tensor, bool | None]:
    """``[value_1, ..., value_K, total]`` as one new (K+1,) tensor of ``dtype`` without a
    graph, and whether they are all finite (None: not known, the values are not on the CPU
    or traced).

    On the CPU the numbers are read on the host (a microsecond; no device to wait for) and
    the row is made from them: cheaper than detaching and stacking, and the finiteness
    check comes with it.
    """
    if isinstance(total, Tensor) and total.is_cpu and not torch.compiler.is_compiling():
        try:
            numbers = [v.item() for v in logged]
        except RuntimeError:  # a term value with more than one element: stacked as it is
            numbers = None
        if numbers is not None:
            numbers.append(total.item())
            return torch.tensor(numbers, dtype=dtype), all(map(math.isfinite, numbers))
    parts = [v.detach() for v in logged]
    parts.append(total.detach() if isinstance(total, Tensor) else torch.tensor(float(total), device=parts[0].device))
    row = torch.stack(parts)
    return (row if row.dtype == dtype else row.to(dtype)), None


def combining_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype terms of ``dtype`` combine in: float32 for half precision."""
    return torch.float32 if dtype in HALF_DTYPES else dtype
