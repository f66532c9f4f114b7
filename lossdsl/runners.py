"""The closure that computes one term in ``Loss.forward``: its inputs, its function, its errors.

A term reading plain ``pred`` and ``target`` (the usual case) gets a runner that passes them
straight on; one with a residual form (``terms._common.residual_form``) is computed from
the call's shared ``pred - target``; any other reads its inputs by walking their paths.
Every runner reports a failure with the term's name and place in the source.

>>> import torch, lossdsl
>>> crit = lossdsl.compile("mse")
>>> run = term_runner(crit._resolved.root, crit.source, "raise")
>>> from lossdsl.plan import Env
>>> float(run([], Env(torch.ones(2), torch.zeros(2), {}, None)))
1.0
"""

from __future__ import annotations

from typing import Any, Callable

from . import ir
from .errors import LossDSLError
from .nonfinite import GATED_POLICIES, call_guarded
from .plan import Env, missing_input, read_path

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
                    return call_guarded(fn, args, hyper, env, term.name)
                return fn(*args, **hyper)
            except Exception as err:
                raise _reported(err, term, source) from None

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
            if on_residual is not None and out.dtype != pred.dtype:
                out = out.to(pred.dtype)  # a half-precision loss is computed in float32
            return out
        except Exception as err:
            raise _reported(err, term, source) from None

    return run


def _fetch(term: ir.Term, source: str) -> Callable[[Env], list]:
    """The term's inputs in order, following input references (``pred=out.mean``)."""
    routes = term.routes

    def fetch(env: Env) -> list:
        args = []
        for route in routes:
            value = read_path(env, route.path)
            if value is None and route.required:
                raise missing_input(term, route.param, route.path).located(source, term.span)
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
