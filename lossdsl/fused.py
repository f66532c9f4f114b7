"""A fused value-and-gradient path for elementwise programs (``compile(..., fuse=True)``).

A program is *eligible* when it is a constant-weighted sum of elementwise pred/target terms
(``mse``, ``mae``/``l1``, ``huber``, ``smooth_l1``, ``charbonnier``, ``log_cosh``,
``quantile``) that read no ``weight``/``mask`` input: its gradient with respect to ``pred`` is
then elementwise, ``g = sum_i w_i * dl_i/de / N`` with ``e = pred - target``. One pass over
the data computes every term's value and ``g`` together; only ``g`` is kept for backward (no
other intermediate), and backward multiplies it by the upstream scalar (``-g`` for ``target``).

The pass (``lossdsl/fused_pass.py``) walks the data in chunks (2^18 elements on the CPU), so
its temporaries stay a few MiB and each input byte is read once from memory; torch spreads
each op of a chunk over its threads. A call that cannot be fused (a
``weight``/``mask`` input given, shapes or dtypes that differ, ``torch.compile`` tracing)
runs the normal path instead, which also gives the usual errors. Double backward through a
fused call is not supported.

>>> import torch, lossdsl
>>> crit = lossdsl.compile("0.7*huber(delta=1) + 0.3*mse", fuse=True)
>>> crit.fused
True
>>> pred = torch.tensor([0.0, 3.0], requires_grad=True)
>>> loss = crit(pred, torch.zeros(2))
>>> loss.backward()
>>> round(loss.item(), 4), [round(v, 4) for v in pred.grad.tolist()]
(2.225, [0.0, 1.25])
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import ir
from .fused_pass import Part, StatPlan, sparse_map, value_and_grad

__all__ = ["FusedProgram", "FusedLoss", "fuse_program", "fused_program_for", "fused_call", "FUSABLE_TERMS"]

FUSABLE_TERMS = ("mse", "mae", "huber", "smooth_l1", "charbonnier", "log_cosh", "quantile")
# The hyperparameter of each term that shapes its curve (besides ``reduction``).
_CURVE_PARAM = {"huber": "delta", "smooth_l1": "beta", "charbonnier": "eps", "quantile": "q"}


def _term_kinds() -> dict[Any, str]:
    """The built-in term functions by identity: a term replaced by the user is not fused."""
    from .terms import regression

    table = {}
    for kind in FUSABLE_TERMS:
        fn = getattr(regression, kind, None)
        if fn is not None:
            table[fn] = kind
    return table


@dataclass
class FusedProgram:
    """An eligible program as linear maps over its distinct parts.

    ``total = coeffs . values + offset``; the logged values (``crit.terms``, in order) are
    ``logged @ values + logged_offset``; ``optional_inputs`` are the call inputs (``weight``,
    ``mask``) that send a call back to the normal path. Both maps keep the parts apart: one
    part's inf reaches only what it feeds (no ``0 * inf``).
    """

    parts: tuple[Part, ...]
    coeffs: tuple[float, ...]
    offset: float
    logged: tuple[tuple[float, ...], ...]
    logged_offset: tuple[float, ...]
    optional_inputs: frozenset[str]
    _maps: dict = field(default_factory=dict, repr=False)
    _plans: dict = field(default_factory=dict, repr=False)

    def stat_plan(self, n: int, device: torch.device, dtype: torch.dtype) -> StatPlan:
        """The per-call plan for ``n`` elements (cached: shapes rarely change in training)."""
        key = (n, device, dtype)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= 16:
                self._plans.clear()
            plan = self._plans[key] = StatPlan(self.parts, self.coeffs, n, device, dtype)
        return plan

    def __post_init__(self) -> None:
        # the logged values are usually the parts themselves, each once: then they are
        # picked, not mapped (``None``: a general map)
        n = len(self.parts)
        unit = all(sum(1 for c in row if c) == 1 and 1.0 in row for row in self.logged)
        picks = tuple(row.index(1.0) for row in self.logged) if unit and not any(self.logged_offset) else None
        self._picks = None if picks is None else (picks if picks != tuple(range(n)) else ())
        self._dense_total = all(self.coeffs)  # every part feeds the total: a dot product is safe

    def maps(self, like: Tensor) -> tuple:
        """(logged matrix, its zeros, logged offsets, total coefficients, their zeros, picked
        parts) as tensors on ``like``'s device."""
        key = (like.device, like.dtype)
        cached = self._maps.get(key)
        if cached is None:
            logged = torch.tensor(self.logged, dtype=like.dtype, device=like.device).reshape(len(self.logged), -1)
            coeffs = torch.tensor(self.coeffs, dtype=like.dtype, device=like.device)
            picks = None if not self._picks else torch.tensor(self._picks, device=like.device)
            cached = (
                logged,
                logged == 0,
                torch.tensor(self.logged_offset, dtype=like.dtype, device=like.device),
                coeffs,
                coeffs == 0,
                picks,
            )
            self._maps[key] = cached
        return cached


class _Ineligible(Exception):
    pass


def fuse_program(resolved: ir.Resolved) -> tuple[FusedProgram | None, str]:
    """The fused form of ``resolved``, or ``(None, why not)``.

    >>> import lossdsl
    >>> fuse_program(lossdsl.check("0.5*mse + mae/2"))[0].coeffs
    (0.5, 0.5)
    >>> fuse_program(lossdsl.check("mse + temporal_diff"))[1]
    "term 'temporal_diff' is not an elementwise pred/target term"
    """
    walker = _Linearizer(_term_kinds())
    try:
        offset, coeffs = walker.linear(resolved.root)
        logged = [walker.linear(item) for item in resolved.logged]
    except _Ineligible as why:
        return None, str(why)
    n = len(walker.parts)
    row = lambda c: tuple(float(c.get(i, 0.0)) for i in range(n))  # noqa: E731
    program = FusedProgram(
        parts=tuple(walker.parts),
        coeffs=row(coeffs),
        offset=float(offset),
        logged=tuple(row(c) for _, c in logged),
        logged_offset=tuple(float(o) for o, _ in logged),
        optional_inputs=frozenset(walker.optional),
    )
    return program, ""


class _Linearizer:
    """Writes a program as ``offset + sum_k c_k * part_k``, or raises :class:`_Ineligible`."""

    def __init__(self, kinds: dict[Any, str]) -> None:
        self.kinds = kinds
        self.parts: list[Part] = []
        self.optional: set[str] = set()
        self._done: dict[int, tuple] = {}  # a binding used twice is one node: linearized once

    def linear(self, node) -> tuple[float, dict[int, float]]:
        done = self._done.get(id(node))
        if done is None:
            done = self._done[id(node)] = (node, self._linear(node))
        return done[1]

    def _linear(self, node) -> tuple[float, dict[int, float]]:
        if isinstance(node, ir.Const):
            return node.value, {}
        if isinstance(node, ir.Term):
            return 0.0, {self._part(node): 1.0}
        if isinstance(node, ir.Named):
            return self.linear(node.value)
        if isinstance(node, ir.Apply):
            return self._apply(node)
        what = "a schedule" if isinstance(node, ir.Schedule) else type(node).__name__.lower()
        raise _Ineligible(f"the weights are not constant ({what} in the program)")

    def _apply(self, node: ir.Apply) -> tuple[float, dict[int, float]]:
        params = dict(node.params)
        if node.fn in ("sum", "neg"):
            signs = params.get("signs", (-1,))
            offset, out = 0.0, {}
            for sign, arg in zip(signs, node.args):
                o, c = self.linear(arg)
                offset += sign * o
                for k, v in c.items():
                    out[k] = out.get(k, 0.0) + sign * v
            return offset, out
        if node.fn == "watch":
            self.linear(node.args[0])  # its terms are computed, the value adds nothing
            return 0.0, {}
        if node.fn == "product":
            scale, varying = 1.0, None
            for op, arg in zip(("*",) + tuple(params["ops"]), node.args):
                o, c = self.linear(arg)
                if not c:
                    scale = scale * o if op == "*" else scale / o
                elif varying is None and op == "*":
                    varying = (o, c)
                else:
                    raise _Ineligible("a product or quotient of two losses is not a weighted sum")
            if varying is None:
                return scale, {}
            o, c = varying
            return scale * o, {k: scale * v for k, v in c.items()}
        raise _Ineligible(f"'{node.fn}' of a loss is not a weighted sum of terms")

    def _part(self, term: ir.Term) -> int:
        kind = self.kinds.get(term.spec.func)
        if kind is None:
            raise _Ineligible(f"term '{term.name}' is not an elementwise pred/target term")
        hyper = dict(term.hyper)
        curve = _CURVE_PARAM.get(kind)
        if set(hyper) - {"reduction", curve}:
            raise _Ineligible(f"term '{term.name}' has hyperparameters the fused path does not know")
        for route in term.routes:
            if route.param in ("pred", "target"):
                if route.path != (route.param,):
                    raise _Ineligible(f"term '{term.name}' reads '{'.'.join(route.path)}' as its {route.param}")
            elif route.required or route.path != (route.param,):
                raise _Ineligible(f"term '{term.name}' reads the input '{route.path[0]}'")
            else:
                self.optional.add(route.param)
        part = Part(kind, float(hyper.get(curve, 0.0)), hyper.get("reduction", "mean") == "sum")
        if part not in self.parts:
            self.parts.append(part)
        return self.parts.index(part)


def _combine(program: FusedProgram, values: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(total in ``dtype``, logged values in ``dtype``, float32 for half precision)."""
    logged, logged_zeros, logged_offset, coeffs, coeffs_zeros, picks = program.maps(values)
    if program._dense_total:
        total = values @ coeffs
    else:
        total = sparse_map(coeffs, coeffs_zeros, values)
    if program.offset:
        total = total + program.offset
    if program._picks is None:
        raw = sparse_map(logged, logged_zeros, values) + logged_offset
    else:
        raw = values if picks is None else values.index_select(0, picks)
    return total.to(dtype), raw.to(torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)


class FusedLoss(torch.autograd.Function):
    """``(total, values)`` of an eligible program; backward scales the saved ``d total / d pred``."""

    @staticmethod
    def forward(ctx, pred: Tensor, target: Tensor, program: FusedProgram):
        values, grad = value_and_grad(pred, target, program, need_grad=True)
        total, raw = _combine(program, values, pred.dtype)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(raw)
        return total, raw

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total: Tensor, _grad_raw: Tensor):
        (grad,) = ctx.saved_tensors
        needs_pred, needs_target = ctx.needs_input_grad[:2]
        unit = grad_total.device.type == "cpu" and grad_total.item() == 1.0
        # the common loss.backward(): hand the saved gradient over instead of a scaled copy
        d_pred = (grad if unit else grad * grad_total) if needs_pred else None
        d_target = (grad * -grad_total) if needs_target else None
        return d_pred, d_target, None


def fused_program_for(resolved: ir.Resolved, plan, nonfinite: str) -> FusedProgram | None:
    """The fused form for a ``Loss`` built with ``fuse=True``, or None (with a warning saying
    why) when the program must run on the normal path."""
    program, why = fuse_program(resolved)
    if program is not None and plan.constant_weights is None:
        program, why = None, "the effective weights are not constant"
    if program is not None and not all(map(math.isfinite, (*program.coeffs, program.offset))):
        program, why = None, "a weight is not finite"
    if program is not None and nonfinite in ("zero_term", "skip_batch"):
        program, why = None, f"nonfinite={nonfinite!r} gates each term's gradient separately"
    if program is None:
        warnings.warn(f"lossdsl: fuse=True ignored, the normal path runs: {why}", stacklevel=5)
    return program


def fused_call(program: FusedProgram, pred: Any, target: Any, inputs: dict) -> tuple[Tensor, Tensor] | None:
    """``(total, raw logged values)`` through the fused pass, or None for the normal path."""
    if torch.compiler.is_compiling():
        return None  # the compiler fuses the normal path itself
    if inputs and not program.optional_inputs.isdisjoint(inputs):
        return None
    if not (isinstance(pred, Tensor) and isinstance(target, Tensor)):
        return None
    if (
        pred.shape != target.shape
        or pred.dtype != target.dtype
        or pred.device != target.device
        or not pred.is_floating_point()
        or pred.numel() == 0
        or pred.device.type == "meta"
    ):
        return None
    if torch.is_grad_enabled() and (pred.requires_grad or target.requires_grad):
        return FusedLoss.apply(pred, target, program)
    values, _ = value_and_grad(pred, target, program, need_grad=False)
    return _combine(program, values, pred.dtype)
