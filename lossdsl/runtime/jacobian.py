"""Gradient aggregators (DESIGN.md §6.1): the forward of an aggregating balancer and the
pieces of ``crit.backward``.

The forward returns the plain sum of the terms and keeps the terms (with their graph) for
the backward. ``crit.backward(shared=...)`` builds one Jacobian row per term over the
shared parameters (``torch.autograd.grad`` per term), lets the balancer's TorchJD
aggregator combine the rows, and runs one backward of the total in which a hook on each
shared tensor turns the gradient that reaches it into the aggregate: every other parameter
gets the gradient of the plain sum, and terms outside the ``balance(...)`` add theirs
everywhere. ``crit.backward(features=h)`` does the same with the Jacobian with respect to
the features ``h``, so the aggregated feature gradient flows through the shared part once.

Aggregators that draw random numbers (PCGrad's order, GradDrop's masks) take them from
torch's global generators: they run inside ``torch.random.fork_rng``, seeded from the
balancer's own counter-based generator (whose key and counter are buffers), so the global
RNG is left as it was and a resumed run draws the same numbers.

>>> import torch
>>> w = torch.tensor([3.0, -4.0], requires_grad=True)
>>> jacobian([(w ** 2).sum() / 2, w.sum()], [w]).tolist()   # one row per term
[[3.0, -4.0], [1.0, 1.0]]
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Sequence

import torch
from torch import Tensor

from ..language.balancers import counter_seed
from ..errors import LossDSLError, LossInputError
from .gradients import average_over_ranks, missing_shared, shared_tensors, term_gradients

__all__ = [
    "aggregate_forward", "jacobian", "aggregate", "outer_adjoint", "term_influence", "backward_with_aggregates",
    "feature_tensors", "cut_tensors", "aggregated_backward", "mean_jacobian", "combine",
]

logger = logging.getLogger("lossdsl")


def aggregate_forward(
    balancer: Any, values: Sequence[Tensor], losses: Tensor, shared: Any, ok: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``(sum of the terms, the weights of the last crit.backward)``; a training call keeps
    the terms for ``crit.backward``, with whether they were all finite and none refused by the
    loss's guard (a device flag, read in the backward)."""
    total = losses.sum()
    if balancer.training and torch.is_grad_enabled() and total.requires_grad:
        accept = torch.isfinite(losses.detach()).all()
        balancer.pending = (list(values), total, shared, accept if ok is None else accept & ok)
    weights = balancer.weights
    return total, weights.to(device=losses.device, dtype=losses.dtype)


def jacobian(values: Sequence[Tensor], tensors: Sequence[Tensor]) -> Tensor:
    """``(K, n)``: row ``i`` is the gradient of ``values[i]`` with respect to every entry of
    ``tensors`` (zeros where it does not reach them); the graph is kept."""
    if not tensors:
        raise ValueError("a Jacobian needs at least one tensor to differentiate by")
    k, like = len(values), tensors[0]
    grads = term_gradients(values, tensors)
    return torch.cat([like.new_zeros(k, t.numel()) if g is None else g for g, t in zip(grads, tensors)], 1)


def _aggregator(balancer: Any) -> Any:
    made = getattr(balancer, "_aggregator", None)
    if made is None:
        spec = balancer.method.aggregation
        made = spec.make.resolve()(**spec.arguments(balancer.params, balancer.k))
        balancer.__dict__["_aggregator"] = made  # not a submodule: no state of its own in state_dict
    return made


@contextlib.contextmanager
def _seeded(balancer: Any, device: torch.device):
    """torch's generators of the CPU (and of ``device``) seeded from the balancer's own
    generator for one draw, and restored afterwards; the balancer's counter moves on."""
    seed = int(counter_seed(balancer.rng_key, balancer.rng_counter))
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.default_generators[cuda[0]].manual_seed(seed)
        yield
    balancer.rng_counter.add_(1)


def aggregate(balancer: Any, matrix: Tensor) -> tuple[Tensor, Tensor]:
    """``(aggregate (n,), weights (K,))`` of the Jacobian ``matrix`` by the balancer's
    aggregator; the weights are NaN for an aggregator that has none (GradDrop)."""
    spec = balancer.method.aggregation
    agg = _aggregator(balancer)
    weighting = getattr(agg, "weighting", None)
    if spec.carried:  # Nash-MTL's previous solution, carried in the balancer's state
        setattr(weighting, spec.carried, balancer.carried.detach().cpu().float().numpy())
    with _seeded(balancer, matrix.device) if spec.random else contextlib.nullcontext(), warnings.catch_warnings():
        # cvxpy says on every solve of Nash-MTL's problem that it is not DPP: nothing to act on
        warnings.filterwarnings("ignore", message=".*not DPP.*")
        if spec.weighted:
            weights = weighting(matrix)
            vector = weights @ matrix  # as the aggregator's own forward combines the rows
        else:
            vector = agg(matrix)
            weights = torch.full(matrix.shape[:1], float("nan"), dtype=matrix.dtype, device=matrix.device)
    if spec.carried:
        balancer.carried.copy_(torch.as_tensor(getattr(weighting, spec.carried)))
    return vector, weights


def combine(balancer: Any, matrix: Tensor, ok: Tensor | None) -> tuple[Tensor, Tensor, bool]:
    """``(aggregate, weights, accepted)`` of ``matrix``: the aggregator's, its state moved on
    only when ``accepted`` (every term finite and none refused, ``ok``; a refused call combines
    the rows with the stored weights, changing nothing). A matrix of zeros
    (nothing reaches the cut, or ``skip_batch`` zeroed the terms) aggregates to zero and one
    that is not finite to the stored weights' combination (not finite too), both without the
    solver; on ``meta`` (no numbers) the stored weights combine the rows. A solver's failure
    is a :class:`LossDSLError` naming the balancer."""
    stored = balancer.weights.detach().to(device=matrix.device, dtype=matrix.dtype)
    if matrix.device.type == "meta":
        return stored @ matrix, stored, False
    if not bool(torch.isfinite(matrix).all()):
        logger.warning(
            'balance(method="%s"): the terms\' gradients are not finite; its state is left as it was',
            balancer.method.name,
        )
        return stored @ matrix, stored, False
    if not bool(matrix.any()):
        return matrix.new_zeros(matrix.shape[1]), stored, False
    if ok is not None and not bool(ok):  # a term refused (on some rank): weighed as stored, as a balancer does
        return stored @ matrix, stored, False
    accepted = True
    kept = {name: getattr(balancer, name).clone() for name in ("rng_counter", "carried") if hasattr(balancer, name)}
    try:
        vector, weights = aggregate(balancer, matrix)
        if not bool(torch.isfinite(vector).all()):
            raise ArithmeticError("the aggregate is not finite")
    except Exception as err:
        accepted = False
        raise LossDSLError(
            f'balance(method="{balancer.method.name}") could not aggregate the terms\' gradients: '
            f"{type(err).__name__}: {err}",
            span=getattr(balancer, "span", None),
            hint="check the terms' gradients on the shared part (crit.monitor logs their norms), "
            'or use method="upgrad", which needs no iterative solver',
        ) from err
    finally:
        if not accepted:  # as if the call had not been made: generators and carried solution
            for name, value in kept.items():
                getattr(balancer, name).copy_(value)
    return vector, weights, accepted


def outer_adjoint(total: Tensor, balanced: Tensor) -> Tensor | float:
    """``d total / d balanced``: 1 when the total is the balance itself."""
    if balanced is total:
        return 1.0
    (adjoint,) = torch.autograd.grad(total, balanced, retain_graph=True, allow_unused=True)
    return 0.0 if adjoint is None else adjoint.detach()


def term_influence(operands: Sequence[Tensor], logged: Sequence[Any]) -> Tensor:
    """``(K, L)``: ``d operand_k / d logged_j`` over the scalar part of the program (how a
    weight given to a balance operand reaches each logged term); zeros where none."""
    targets = [(j, v) for j, v in enumerate(logged) if isinstance(v, Tensor) and v.requires_grad]
    like = operands[0]
    out = torch.zeros(len(operands), len(logged), dtype=torch.promote_types(like.dtype, torch.float32), device=like.device)
    if not targets:
        return out
    for k, operand in enumerate(operands):
        if not operand.requires_grad:
            continue
        grads = torch.autograd.grad(operand, [v for _, v in targets], retain_graph=True, allow_unused=True)
        for (j, _), g in zip(targets, grads):
            if g is not None:
                out[k, j] = g.detach().reshape(()).to(out.dtype)
    return out


def _hook(part: Tensor, replace: bool):
    if replace:
        return lambda grad: part
    return lambda grad: grad + part


def backward_with_aggregates(total: Tensor, corrections: list[tuple[list[Tensor], Tensor, bool]], retain_graph: bool) -> None:
    """One backward of ``total`` in which the gradient of each cut tensor is changed as it
    arrives: per entry ``(tensors, flat, replace)``, ``flat`` (laid out over ``tensors``) is
    put in its place (``replace``) or added to it."""
    handles = []
    try:
        for tensors, flat, replace in corrections:
            offset = 0
            for t in tensors:
                part = flat[offset: offset + t.numel()].view(t.shape).to(t.dtype)
                offset += t.numel()
                handles.append(t.register_hook(_hook(part, replace)))
        torch.autograd.backward(total, retain_graph=retain_graph)
    finally:
        for handle in handles:
            handle.remove()


def feature_tensors(features: Any, owner: Any = None) -> list[Tensor]:
    """The tensors of ``features`` (a tensor or a sequence of tensors) that carry a graph."""
    found = [features] if isinstance(features, Tensor) else list(features) if isinstance(features, (list, tuple)) else None
    if not found or not all(isinstance(f, Tensor) and f.requires_grad for f in found):
        raise LossInputError(
            "features must be a tensor (or a list of tensors) computed by the shared part of the model in this step",
            span=getattr(owner, "span", None),
            hint="pass the output of the shared part: h = model.trunk(x); ...; crit.backward(features=h)",
        )
    return found


def cut_tensors(pending: list, shared: Any, features: Any) -> list[Tensor]:
    """Where ``crit.backward`` aggregates: the features ``h`` when given, else the shared
    parameters given to it or, failing that, to the call (``pending``: the aggregating
    balancers of the call, the first of which errors name)."""
    first = pending[0][0]
    if shared is not None and features is not None:
        raise LossDSLError(
            "backward() takes shared= or features=, not both", span=first.span,
            hint="shared= is exact; features= is cheaper",
        )
    if features is not None:
        return feature_tensors(features, first)
    shared = shared if shared is not None else pending[0][1][2]
    if shared is None:
        raise missing_shared(
            first, "aggregates the gradients of its terms with respect to the shared parameters",
            "crit.backward(shared=model.trunk), or crit.backward(features=h)",
        )
    return shared_tensors(shared, first)


def _corrected(weights: Tensor, changes: list) -> Tensor:
    """The reported weights with each aggregator's new weights in place of those the forward
    used: the change of an operand's weight reaches each logged item through its influence."""
    out = weights.clone()
    for influence, before, after, adjoint in changes:
        delta = (adjoint * (after - before.to(after.dtype))).to(out.dtype)
        reach = influence.to(out.dtype)
        out = out + torch.where(reach != 0, delta[:, None] * reach, 0).sum(0)
    return out


def aggregated_backward(
    total: Tensor, pending: list, cut: list[Tensor], by_features: bool, logged: Sequence[Any], weights: Tensor | None,
    retain_graph: bool = False,
) -> None:
    """``crit.backward``: for each aggregating balancer (``(balancer, (operands, balanced,
    shared))`` in ``pending``), the Jacobian of its operands with respect to ``cut`` (averaged
    over ranks when it is the shared parameters), its aggregate and weights; then one backward
    of ``total`` that puts the aggregate where the plain sum's gradient would reach ``cut``.
    ``weights`` (the reported weights of the call) is updated in place."""
    exact = len(pending) == 1 and pending[0][1][1] is total
    corrections, changes = [], []
    for balancer, (operands, balanced, _, ok) in pending:
        adjoint = outer_adjoint(total, balanced)
        local = jacobian(operands, cut)
        matrix, ok = (local, ok) if by_features else mean_jacobian(local, ok)
        matrix = matrix.to(torch.promote_types(matrix.dtype, torch.float32))  # half precision: in float32
        vector, new, accepted = combine(balancer, matrix, ok)
        if exact:  # the total is this balance: its gradient on `cut` is the aggregate itself
            corrections.append((cut, vector, True))
        else:
            corrections.append((cut, adjoint * (vector - local.sum(0)), False))
        if weights is not None:
            changes.append((term_influence(operands, logged), balancer.weights.detach().to(new.device, copy=True), new, adjoint))
        if accepted:
            balancer.weights.copy_(new)
        report = getattr(balancer, "report", None)
        if report is not None:
            report(matrix.norm(dim=1).detach(), (matrix @ matrix.T).detach())
    if changes:
        weights.copy_(_corrected(weights, changes))
    backward_with_aggregates(total, corrections, retain_graph)


def mean_jacobian(matrix: Tensor, ok: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The Jacobian averaged over the ranks of an initialised process group, so that every
    rank aggregates the same matrix and gets the same weights, and ``ok`` true only where it
    is true on every rank (in the same all-reduce), so that every rank keeps or moves its
    state alike."""
    if ok is None:
        return average_over_ranks({"jacobian": matrix})["jacobian"], None
    refused = (~ok.to(torch.bool)).to(matrix.dtype).reshape(1)
    mean = average_over_ranks({"jacobian": matrix, "refused": refused})
    return mean["jacobian"], mean["refused"][0] == 0
