"""Balancer methods that read the terms' gradients (DESIGN.md §6.1), for the rows of
:data:`~lossdsl.language.balancers.METHODS`: their parameters and pure functions.

Two families. **Weight producers** (``gradnorm``, ``lra``) compute weights from statistics
of each unweighted term's gradient with respect to the call input ``shared``: ``before(state,
p, t)`` runs on every training call, ``update(state, grads, seen, p, t)`` on update calls (the
first training call, then every ``every``), where ``grads`` holds, per term, the largest
absolute entry (``abs_max``), the mean absolute entry (``abs_mean``) and the norm (``norm``)
of the gradient over all shared entries. **Aggregators** combine the Jacobian of the terms in
``crit.backward(...)`` with a TorchJD aggregator, named by an :class:`Aggregation`.

>>> import torch
>>> p = LraParams(alpha=0.5)
>>> grads = {"abs_max": torch.tensor([8.0, 1.0]), "abs_mean": torch.tensor([2.0, 0.5])}
>>> lra_update({"lambdas": torch.ones(2)}, grads, None, p, torch)["lambdas"].tolist()
[1.0, 8.5]
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal

from annotated_types import Ge, Gt, Le
from pydantic import BaseModel, create_model

from .lazy import TORCHJD, LazyAttribute
from .params import STRICT, NonNegative, Positive

__all__ = [
    "Aggregation", "AGGREGATIONS", "MTL_EXTRA", "LraParams", "GradNormParams", "lra_update",
    "gradnorm_before", "gradnorm_update", "gradnorm_extra", "missing_modules",
]

MTL_EXTRA = "pip install 'lossdsl[mtl]'"
MAX_EVERY = 1_000_000_000
Every = Annotated[int, Ge(1), Le(MAX_EVERY)]


# --- weight producers ---------------------------------------------------------------------


class LraParams(BaseModel):
    model_config = STRICT
    method: Literal["lra"] = "lra"
    alpha: Annotated[float, Gt(0), Le(1)] = 0.1
    every: Every = 1


def lra_update(state, grads, seen, p, t) -> dict:
    """Learning-rate annealing (Wang, Teng & Perdikaris 2021): the first term is the
    reference, weight 1; ``lambda_i <- (1 - alpha) lambda_i + alpha max|grad L_1| / mean|grad L_i|``.
    A term whose gradient is all zero (or not finite) keeps its weight."""
    lam = state["lambdas"]
    ratio = (grads["abs_max"][0] / grads["abs_mean"]).to(lam.dtype)
    moved = (1.0 - p.alpha) * lam + p.alpha * ratio
    moved = t.where(t.isfinite(moved), moved, lam)
    return {"lambdas": t.cat([t.ones_like(lam[:1]), moved[1:]])}


class GradNormParams(BaseModel):
    model_config = STRICT
    method: Literal["gradnorm"] = "gradnorm"
    alpha: NonNegative = 1.5
    every: Every = 1


def gradnorm_before(state, p, t) -> dict:
    """Every training call: the weights renormalised to sum to K, and no gradient for them
    unless this call updates it."""
    w = state["weights"].detach()
    return {"weights": w * (w.shape[0] / w.sum()), "push": t.zeros_like(state["push"])}


def gradnorm_update(state, grads, seen, p, t) -> dict:
    """GradNorm (Chen et al. 2018): ``G_i = w_i ||grad L_i||``, ``r_i`` the inverse training
    rate ``L_i(t)/L_i(0)`` over its mean; the weights' gradient (``push``) is that of the
    gradient-norm loss ``sum |G_i - mean(G) r_i^alpha|`` with the target held constant:
    ``sign(G_i - target_i) ||grad L_i||``. ``L_i(0)`` is taken on the first training call."""
    initial = t.where(state["count"] == 0, seen, state["initial"].to(seen.dtype))
    w = state["weights"].detach().to(seen.dtype)
    norms = grads["norm"].to(seen.dtype)
    rate = seen / initial
    g = w * norms
    target = g.mean() * (rate / rate.mean()) ** p.alpha
    return {"initial": initial, "push": t.sign(g - target) * norms}


def gradnorm_extra(state, p, t):
    """Adds exactly 0 to the total, and ``push`` to the weights' gradient."""
    w = state["weights"]
    # a copy of this call's push: the next call rewrites the buffer in place, and two calls
    # may share one backward
    return t.dot(w - w.detach(), state["push"].to(w.dtype, copy=True))


# --- aggregators --------------------------------------------------------------------------


@dataclass(frozen=True)
class Aggregation:
    """A TorchJD aggregator: ``make`` its class, ``arguments(p, k)`` its keyword arguments,
    ``modules`` what must be installed (checked when compiling). ``weighted``: the aggregate
    is ``w @ J`` for the weights of its ``weighting`` (false: GradDrop, which has none);
    ``random``: it draws from torch's global generators (seeded from the balancer's own state
    and restored around the call); ``carried``: an attribute of its weighting that carries
    from call to call (Nash-MTL's previous solution), kept in the balancer's state."""

    make: LazyAttribute
    modules: tuple[str, ...] = ("torchjd",)
    arguments: Callable[[Any, int], dict] = lambda p, k: {}
    weighted: bool = True
    random: bool = False
    carried: str | None = None


_QP = ("torchjd", "numpy", "qpsolvers", "quadprog")  # the dual-cone projection of UPGrad, DualProj
_CONIC = ("torchjd", "numpy", "cvxpy")
_AGG = TORCHJD.aggregation


def _params(method: str, **fields: Any) -> type[BaseModel]:
    return create_model(f"{method.title()}Params", __config__=STRICT, method=(Literal[method], method), **fields)


_SEED = (int, 0)
# name -> (parameters, aggregation, summary)
AGGREGATIONS: dict[str, tuple[type[BaseModel], Aggregation, str]] = {
    "upgrad": (_params("upgrad"), Aggregation(_AGG.UPGrad, _QP), "projects each gradient onto the dual cone of all (Quinton & Rey 2024)"),
    "mgda": (
        _params("mgda", epsilon=(Positive, 0.001), max_iters=(Annotated[int, Ge(1), Le(100_000)], 100)),
        Aggregation(_AGG.MGDA, arguments=lambda p, k: {"epsilon": p.epsilon, "max_iters": p.max_iters}),
        "the min-norm point of the gradients' convex hull (Désidéri 2012; Sener & Koltun 2018)",
    ),
    "pcgrad": (
        _params("pcgrad", seed=_SEED), Aggregation(_AGG.PCGrad, random=True),
        "projects away conflicting components, in random order (Yu et al. 2020)",
    ),
    "cagrad": (
        _params("cagrad", c=(NonNegative, 0.5), norm_eps=(Positive, 1e-4)),
        Aggregation(_AGG.CAGrad, _CONIC + ("clarabel",), lambda p, k: {"c": p.c, "norm_eps": p.norm_eps}),
        "conflict-averse gradient descent (Liu et al. 2021)",
    ),
    "imtl_g": (_params("imtl_g"), Aggregation(_AGG.IMTLG), "impartial multi-task learning, gradient part (Liu et al. 2021)"),
    "aligned_mtl": (
        _params("aligned_mtl", scale_mode=(Literal["min", "median", "rmse"], "min")),
        Aggregation(_AGG.AlignedMTL, arguments=lambda p, k: {"scale_mode": p.scale_mode}),
        "aligns the gradients' principal components (Senushkin et al. 2023)",
    ),
    "nash_mtl": (
        _params("nash_mtl", max_norm=(NonNegative, 1.0), optim_niter=(Annotated[int, Ge(1), Le(10_000)], 20)),
        Aggregation(
            _AGG.NashMTL, _CONIC + ("ecos",),
            lambda p, k: {"n_tasks": k, "max_norm": p.max_norm, "optim_niter": p.optim_niter},
            carried="prvs_alpha",
        ),
        "the Nash bargaining solution of the tasks (Navon et al. 2022)",
    ),
    "dualproj": (_params("dualproj"), Aggregation(_AGG.DualProj, _QP), "projects the mean gradient onto the dual cone"),
    "graddrop": (
        _params("graddrop", seed=_SEED), Aggregation(_AGG.GradDrop, weighted=False, random=True),
        "drops gradient signs at random by their purity (Chen et al. 2020)",
    ),
    "mean": (_params("mean"), Aggregation(_AGG.Mean), "the mean of the gradients"),
}


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    """The modules of ``modules`` that are not installed (found without importing them).

    >>> missing_modules(("json", "surely_not_an_installed_module"))
    ['surely_not_an_installed_module']
    """
    return [name for name in modules if importlib.util.find_spec(name) is None]
