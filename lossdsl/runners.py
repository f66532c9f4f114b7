"""The closure that computes one term in ``Loss.forward``: its inputs, its function, its errors.

A term reading plain ``pred`` and ``target`` (the usual case) gets a runner that passes them
straight on; one with a residual form (``terms._common.residual_form``) is computed from
the call's shared ``pred - target``; any other reads its inputs by walking their paths.
Every runner reports a failure with the term's name and place in the source. A value in
half precision is handed on in float32, so that the terms combine in float32 (the loss
returns its total in the terms' dtype, see ``Loss.forward``); ``env.low`` records the dtype.

>>> import torch, lossdsl
>>> crit = lossdsl.compile("mse")
>>> run = term_runner(crit._resolved.root, crit.source, "raise")
>>> from lossdsl.plan import Env
>>> float(run([], Env(torch.ones(2), torch.zeros(2), {}, None)))
1.0
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from . import ir
from .errors import LossDSLError
from .nonfinite import GATED_POLICIES, call_guarded
from .plan import Env, missing_input, read_path, unreadable_input
from .terms._common import HALF_DTYPES

__all__ = ["term_runner"]

Runner = Callable[[list, Env], Any]


def term_runner(term: ir.Term, source: str, nonfinite: str) -> Runner:
    """``run(vals, env) -> value`` of ``term`` under the non-finite policy ``nonfinite``."""
    fn = term.spec.func
    hyper = dict(term.hyper)
    routes = term.routes
    simple = all(len(r.path) == 1 and r.path[0] == r.param for r in routes)
    reads_pred_target = (
        simple and [r.param for r in routes[:2]] == ["pred", "target"] and all(r.required for r in routes[:2])
    )
    if nonfinite in GATED_POLICIES or not reads_pred_target:
        guarded = nonfinite in GATED_POLICIES
        fetch = _fetch(term, source)

        def run(vals, env: Env):
            args = fetch(env)
            try:
                if guarded:  # zero_term / skip_batch: NaN/inf become 0 before any combination
                    out = call_guarded(fn, args, hyper, env, term.name)
                else:
                    out = fn(*args, **hyper)
            except Exception as err:
                raise _reported(err, term, source) from None
            if isinstance(out, Tensor) and out.dtype in HALF_DTYPES:
                return _widened(out, out.dtype, env)
            return out

        return run

    rest = [r.param for r in routes[2:]]
    needed = [r.param for r in routes[2:] if r.required]
    on_residual = getattr(fn, "on_residual", None)
    compute = fn if on_residual is None else on_residual

    def run(vals, env: Env):  # noqa: F811 - the common case: pred, target, optional inputs
        pred, target, inputs = env.pred, env.target, env.inputs
        if pred is None or target is None or (needed and any(inputs.get(p) is None for p in needed)):
            raise _missing(term, source, env, needed)
        try:
            head = (env.residual(),) if on_residual is not None else (pred, target)
            if inputs and rest:
                out = compute(*head, *[inputs.get(p) for p in rest], **hyper)
            else:
                out = compute(*head, **hyper)
        except Exception as err:
            raise _reported(err, term, source) from None
        low = pred.dtype if on_residual is not None else out.dtype  # the residual is float32
        if low in HALF_DTYPES:
            return _widened(out, low, env)
        return out

    return run


def _widened(out: Tensor, low: torch.dtype, env: Env) -> Tensor:
    """A half-precision term value as it enters the combination: in float32 (a term that
    computes in float32 inside hands that value on, unrounded)."""
    env.low = low if env.low in (None, low) else torch.float32
    env.n_low += 1
    return out if out.dtype == torch.float32 else out.float()


def _fetch(term: ir.Term, source: str) -> Callable[[Env], list]:
    """The term's inputs in order, following input references (``pred=out.mean``)."""
    routes = term.routes

    def fetch(env: Env) -> list:
        args = []
        for route in routes:
            try:
                value = read_path(env, route.path)
            except LossDSLError as err:
                raise err.located(source, term.span, term.name) from None
            except Exception as err:  # a property or __getattr__ of the input raised
                raise unreadable_input(term, route.param, route.path, err).located(source, term.span) from err
            if value is None and route.required:
                raise missing_input(term, route.param, route.path, env).located(source, term.span)
            args.append(value)
        return args

    return fetch


def _missing(term: ir.Term, source: str, env: Env, needed: list[str]) -> LossDSLError:
    which = "pred" if env.pred is None else "target" if env.target is None else None
    if which is None:
        which = next(p for p in needed if env.inputs.get(p) is None)
    return missing_input(term, which, (which,)).located(source, term.span)


def _reported(err: Exception, term: ir.Term, source: str) -> Exception:
    """``err`` naming the term: a ``LossDSLError`` located at the term, any other with a note."""
    if isinstance(err, LossDSLError):
        if err.term is None:
            err.message = f"term '{term.name}': {err.message}"
        return err.located(source, term.span, term.name)
    err.add_note(f"lossdsl: raised while computing term '{term.name}' of: {source}")
    return err
