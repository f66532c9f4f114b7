"""Balancer methods: ``balance(a, b, ..., method="...")``, one row per method (DESIGN.md §6).

A method is pure functions over named state, in the manner of optax: ``state(k, p)`` gives
the initial state of ``k`` terms, ``weigh(state, seen, p, update)`` returns the weights of the
call and the new state (``seen``: the detached term values; ``update``: training mode).
The one balancer module of the runtime owns the state as buffers, commits it only when every
term is finite, and computes ``total = sum w_i L_i + extra(state)``. Torch is reached through
:data:`~lossdsl.language.lazy.T`, so the table imports without it.

>>> import torch
>>> ema = METHODS["ema"]
>>> p = ema.params(beta=0.9)
>>> state = ema.initial_state(2, p, torch)
>>> w, new = ema.weigh(state, torch.tensor([4.0, 0.5]), p, True, torch)
>>> [round(float(x), 4) for x in w]          # the first call gives 1 / L_i
[0.25, 2.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal

from annotated_types import Ge, Gt, Le
from pydantic import BaseModel

from .params import STRICT, Positive, Unit
from . import gradient_methods as G

__all__ = ["Method", "METHODS", "MAX_WINDOW", "MAX_BALANCED", "counter_uniform", "counter_seed", "seed_key"]

MAX_WINDOW = 10_000  # dwa keeps 2 * window rows of losses
MAX_BALANCED = 256  # terms in one balance(...)


@dataclass(frozen=True)
class Method:
    """One balancer method.

    ``state(k, p, t)``: ``{name: initial tensor}`` (buffers); ``learnable(k, p, t)``:
    ``{name: initial tensor}`` trained by the optimizer (``uncertainty``'s log-variances);
    ``weigh(state, seen, p, update, t) -> (weights, new_state)``: the new state is committed
    only on an accepted training call (every term finite and none refused by the loss's
    guard); a refused call weighs with the stored state;
    ``extra(state, p, t)``: a term added to the total that does not depend on the losses.
    ``t`` is the torch module, given by the runtime (the table itself imports no torch).

    Methods that read the terms' gradients (§6.1, :mod:`~lossdsl.language.gradient_methods`)
    set ``gradients``: ``"weights"`` for a weight producer, with ``before`` (every training
    call) and ``update`` (update calls); ``"aggregate"`` for an aggregator, with its
    ``aggregation``.
    """

    name: str
    params: type[BaseModel]
    weigh: Callable[..., tuple]
    summary: str
    state: Callable[[int, Any, Any], dict] = lambda k, p, t: {}
    learnable: Callable[[int, Any, Any], dict] = lambda k, p, t: {}
    extra: Callable[[dict, Any, Any], Any] | None = None
    reads_losses: bool = True  # False: the weights do not depend on the losses (no all-reduce)
    gradients: str | None = None  # None, "weights" or "aggregate"
    before: Callable[[dict, Any, Any], dict] | None = None
    update: Callable[..., dict] | None = None
    aggregation: Any = None  # gradient_methods.Aggregation

    def __reduce__(self):
        return (_method_named, (self.name,))

    def initial_state(self, k: int, p: Any, t: Any) -> dict:
        return {**self.state(k, p, t), **self.learnable(k, p, t)}


def _long(t, value: int = 0):
    return t.tensor(value, dtype=t.long)


# --- uncertainty (Kendall et al. 2018) ----------------------------------------------------


class UncertaintyParams(BaseModel):
    model_config = STRICT
    method: Literal["uncertainty"] = "uncertainty"


def _uncertainty(state, seen, p, update, t):
    return 0.5 * t.exp(-state["log_var"]), {}


# --- ema ----------------------------------------------------------------------------------


class EmaParams(BaseModel):
    model_config = STRICT
    method: Literal["ema"] = "ema"
    beta: Unit = 0.99
    eps: Positive = 1e-8


def _ema(state, seen, p, update, t):
    ema, count = state["ema"], state["count"]
    if update:
        ema = t.lerp(ema, seen.to(ema.dtype), 1.0 - p.beta)  # beta * ema + (1 - beta) * seen
        count = count + 1
        mean = ema / (1.0 - p.beta ** count.to(ema.dtype))
        return 1.0 / (mean + p.eps), {"ema": ema, "count": count}
    # eval: the stored state as it is; before any training step, the losses themselves
    started = count > 0
    correction = t.where(started, 1.0 - p.beta ** count.to(ema.dtype), 1.0)
    mean = t.where(started, ema / correction, seen.to(ema.dtype))
    return 1.0 / (mean + p.eps), {}


# --- dwa (Liu et al. 2019) ----------------------------------------------------------------


class DwaParams(BaseModel):
    model_config = STRICT
    method: Literal["dwa"] = "dwa"
    temperature: Positive = 2.0
    window: Annotated[int, Gt(0), Le(MAX_WINDOW)] = 10
    eps: Positive = 1e-8


def _dwa(state, seen, p, update, t):
    history, count = state["history"], state["count"]
    new = {}
    if update:
        history = t.cat([history[1:], seen.to(history.dtype).unsqueeze(0)])
        count = count + 1
        new = {"history": history, "count": count}
    w = p.window
    ratio = history[w:].mean(0) / (history[:w].mean(0) + p.eps)
    lam = seen.shape[0] * t.softmax(ratio / p.temperature, dim=0)
    return t.where(count >= 2 * w, lam, t.ones_like(lam)), new


# --- cov (Groenendijk et al. 2021) --------------------------------------------------------


class CovParams(BaseModel):
    model_config = STRICT
    method: Literal["cov"] = "cov"
    eps: Positive = 1e-8


def _cov(state, seen, p, update, t):
    loss_mean, ratio_mean, ratio_m2, count = (state[k] for k in ("loss_mean", "ratio_mean", "ratio_m2", "count"))
    new = {}
    if update:  # Welford statistics of l_i = L_i / mu_i, with the current step
        count = count + 1
        c = count.to(loss_mean.dtype)
        loss_mean = loss_mean + (seen - loss_mean) / c
        ratio = seen / (loss_mean + p.eps)
        delta = ratio - ratio_mean
        ratio_mean = ratio_mean + delta / c
        ratio_m2 = ratio_m2 + delta * (ratio - ratio_mean)
        new = {"loss_mean": loss_mean, "ratio_mean": ratio_mean, "ratio_m2": ratio_m2, "count": count}
    c = count.to(loss_mean.dtype).clamp(min=1.0)
    cv = t.sqrt(ratio_m2 / c) / (ratio_mean + p.eps)
    total_cv = cv.sum()
    uniform = t.full_like(cv, 1.0 / cv.shape[0])
    # 1/K while there are too few steps for a variance (or every ratio is constant)
    spread = total_cv > 0
    alpha = t.where((count > 2) & spread, cv / t.where(spread, total_cv, 1.0), uniform)
    mean = t.where(count > 0, loss_mean, seen)
    return alpha / (mean + p.eps), new


# --- softadapt (Heydari et al. 2019) ------------------------------------------------------


class SoftAdaptParams(BaseModel):
    model_config = STRICT
    method: Literal["softadapt"] = "softadapt"
    beta: float = 0.1


def _softadapt(state, seen, p, update, t):
    previous, count = state["previous"], state["count"]
    slope = t.where(count > 0, seen - previous, t.zeros_like(seen))
    lam = t.softmax(p.beta * slope, dim=0)
    return lam, ({"previous": seen, "count": count + 1} if update else {})


# --- relobralo (Bischof & Kraus 2021) -----------------------------------------------------


class ReLoBRaLoParams(BaseModel):
    model_config = STRICT
    method: Literal["relobralo"] = "relobralo"
    alpha: Annotated[float, Ge(0), Le(1)] = 0.999
    expected_rho: Annotated[float, Ge(0), Le(1)] = 0.999
    temperature: Positive = 0.1
    eps: Positive = 1e-8
    seed: int = 0


def _relobralo(state, seen, p, update, t):
    k = seen.shape[0]

    def lhat(now, then):
        return k * t.softmax(now / (p.temperature * then + p.eps), dim=0)

    first = state["count"] == 0
    initial = t.where(first, seen, state["initial"])
    previous = t.where(first, seen, state["previous"])
    if update:
        rho = (counter_uniform(state["rng_key"], state["rng_counter"]) < p.expected_rho).to(seen.dtype)
    else:  # no draw in eval mode: rho is its expectation
        rho = t.full_like(seen[0], p.expected_rho)
    lam = p.alpha * (rho * state["lambdas"] + (1.0 - rho) * lhat(seen, initial)) + (1.0 - p.alpha) * lhat(seen, previous)
    if not update:
        return lam, {}
    # the draw is used up with the call: a refused call leaves it for the next one
    new = {"initial": initial, "previous": seen, "lambdas": lam, "count": state["count"] + 1, "rng_counter": state["rng_counter"] + 1}
    return lam, new


def _row(name, params, weigh, summary, **kw):
    return name, Method(name, params, weigh, summary, **kw)


METHODS: dict[str, Method] = dict(
    [
        _row(
            "uncertainty", UncertaintyParams, _uncertainty,
            "sum 0.5 exp(-s_i) L_i + 0.5 s_i, s_i learnable (Kendall et al. 2018)",
            learnable=lambda k, p, t: {"log_var": t.zeros(k)},
            extra=lambda state, p, t: 0.5 * state["log_var"].sum(),
            reads_losses=False,
        ),
        _row(
            "ema", EmaParams, _ema, "sum L_i / (m_i + eps), m_i the bias-corrected EMA of L_i",
            state=lambda k, p, t: {"ema": t.zeros(k), "count": _long(t)},
        ),
        _row(
            "dwa", DwaParams, _dwa, "dynamic weight average (Liu et al. 2019)",
            state=lambda k, p, t: {"history": t.zeros(2 * p.window, k), "count": _long(t)},
        ),
        _row(
            "cov", CovParams, _cov, "coefficient-of-variation weighting (Groenendijk et al. 2021)",
            state=lambda k, p, t: {
                "loss_mean": t.zeros(k), "ratio_mean": t.zeros(k), "ratio_m2": t.zeros(k), "count": _long(t),
            },
        ),
        _row(
            "softadapt", SoftAdaptParams, _softadapt, "softmax of the loss slopes (Heydari et al. 2019)",
            state=lambda k, p, t: {"previous": t.zeros(k), "count": _long(t)},
        ),
        _row(
            "relobralo", ReLoBRaLoParams, _relobralo,
            "relative loss balancing with random lookback (Bischof & Kraus 2021)",
            state=lambda k, p, t: {
                "initial": t.zeros(k), "previous": t.zeros(k), "lambdas": t.ones(k), "count": _long(t),
                "rng_key": seed_key(p.seed, t), "rng_counter": _long(t),
            },
        ),
    ]
)


# --- methods that read the terms' gradients (§6.1) -----------------------------------------


def _held(name):
    def weigh(state, seen, p, update, t):
        # between updates the weights are constants; a copy, so that the next call's update
        # (in place) leaves this call's graph as it was: two calls may share one backward
        return state[name].detach().clone(), {}

    return weigh


METHODS["gradnorm"] = Method(
    "gradnorm", G.GradNormParams, _held("weights"), "GradNorm: weights that equalise the gradient norms' training rates (Chen et al. 2018)",
    state=lambda k, p, t: {"initial": t.zeros(k), "push": t.zeros(k), "count": _long(t)},
    learnable=lambda k, p, t: {"weights": t.ones(k)},
    extra=G.gradnorm_extra, gradients="weights", before=G.gradnorm_before, update=G.gradnorm_update,
)
METHODS["lra"] = Method(
    "lra", G.LraParams, _held("lambdas"), "learning-rate annealing from gradient statistics (Wang, Teng & Perdikaris 2021)",
    state=lambda k, p, t: {"lambdas": t.ones(k), "count": _long(t)},
    reads_losses=False, gradients="weights", update=G.lra_update,
)


def _aggregator_state(aggregation):
    def state(k, p, t):
        made = {"weights": t.ones(k)}  # the weights of the last crit.backward (1: none yet)
        if aggregation.random:
            made.update(rng_key=seed_key(p.seed, t), rng_counter=_long(t))
        if aggregation.carried:
            made["carried"] = t.ones(k)
        return made

    return state


for _name, (_params, _aggregation, _summary) in G.AGGREGATIONS.items():
    METHODS[_name] = Method(
        _name, _params, _held("weights"), _summary, state=_aggregator_state(_aggregation),
        reads_losses=False, gradients="aggregate", aggregation=_aggregation,
    )


def _method_named(name: str) -> Method:
    return METHODS[name]


# --- a counter-based random generator ------------------------------------------------
# A counter-based random generator: plain integer maths on tensors, no global RNG.
#
# Balancers that draw random numbers (``relobralo``'s ``rho``) keep the generator's whole
# state, a key and a counter, in their buffers: a resumed run draws the same numbers, on any
# device, under ``torch.compile``, and the global RNG is never touched.
#

_MASK32 = 0xFFFFFFFF


def _mul32(x: Any, c: int) -> Any:
    """``(x * c) mod 2**32`` for ``0 <= x < 2**32`` in int64 without overflow (16-bit halves)."""
    low, high = x & 0xFFFF, x >> 16
    return (low * c + (((high * c) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: Any) -> Any:
    # a 32-bit integer finaliser (xorshift-multiply rounds): every input bit affects every output bit
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def seed_key(seed: int, t: Any) -> Any:
    """The generator's key for ``seed``: an int64 0-dim tensor (``t``: the torch module)."""
    return _mix32(t.tensor(int(seed) & _MASK32, dtype=t.long))


def counter_seed(key: Any, counter: Any) -> Any:
    """A 32-bit integer from a key and a counter (int64 tensors): the seed of one draw of a
    library that takes its random numbers from torch's own generators (seeded, then restored)."""
    return _mix32(_mix32(counter & _MASK32) ^ (key & _MASK32))


def counter_uniform(key: Any, counter: Any) -> Any:
    """A uniform number in ``[0, 1)`` from a key and a counter (int64 tensors), in float32."""
    return (counter_seed(key, counter) >> 8).float() * (1.0 / (1 << 24))
