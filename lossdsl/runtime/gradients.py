"""The terms' gradients with respect to the shared part of a model (DESIGN.md §6.1), and the
training step of the balancers that compute weights from them (``gradnorm``, ``lra``).

``shared`` is a module or an iterable of parameters (or tensors). Each term's gradient is
taken with ``torch.autograd.grad(L_i, shared, retain_graph=True)``: no ``.grad`` changes and
the later ``loss.backward()`` is unaffected. Statistics over all shared entries (largest and
mean absolute entry, norm, and the Gram matrix of the terms' gradients, whose normalised
entries are the cosines the monitor reports) are averaged over the ranks of an initialised
process group, so every rank computes the same weights.

A weight producer's training call runs eagerly (under ``torch.compile`` it is a graph
break); evaluation calls read the stored weights and take no gradient.

>>> import torch
>>> w = torch.tensor([3.0, -4.0], requires_grad=True)
>>> grads = term_gradients([(w ** 2).sum() / 2, w.sum()], [w])
>>> stats = gradient_statistics(grads, [w], 2)
>>> stats["abs_max"].tolist(), stats["norm"].tolist(), stats["gram"][0, 1].item()
([4.0, 1.0], [5.0, 1.4142135381698608], -1.0)
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import LossDSLError, LossInputError

__all__ = [
    "shared_tensors", "term_gradients", "gradient_statistics", "average_over_ranks", "produce",
    "missing_shared", "host_count", "commit", "refuse_plain_backward",
]

_STATS = ("abs_max", "abs_mean", "norm")


def shared_tensors(shared: Any, owner: Any = None) -> list[Tensor]:
    """The tensors ``shared`` stands for: a module's parameters that require grad, or the
    tensors of an iterable (a generator of parameters is read once), or one tensor."""
    if isinstance(shared, nn.Module):
        found = [p for p in shared.parameters() if p.requires_grad]
    elif isinstance(shared, Tensor):
        found = [shared]
    else:
        try:
            found = list(shared)
        except TypeError:
            found = None
        if found is None or not all(isinstance(p, Tensor) for p in found):
            raise LossInputError(
                f"shared must be a module or an iterable of parameters, not {type(shared).__name__}",
                span=getattr(owner, "span", None),
                hint="pass the shared part of the model: shared=model.trunk or shared=model.trunk.parameters()",
            )
    unique, seen = [], set()
    for p in found:
        if id(p) not in seen and p.requires_grad:
            seen.add(id(p))
            unique.append(p)
    if not unique:
        raise LossInputError(
            "shared holds no tensor that requires grad",
            span=getattr(owner, "span", None),
            hint="pass the parameters the terms share (their requires_grad must be True)",
        )
    return unique


def term_gradients(values: Sequence[Tensor], tensors: Sequence[Tensor]) -> list[Tensor | None]:
    """Each value's gradient with respect to each of ``tensors``: per tensor a ``(K, n)``
    matrix (row ``i``: the flattened gradient of ``values[i]``), or None where no value
    reaches it. One ``torch.autograd.grad`` per value (on the CPU a batched backward,
    ``is_grads_batched``, measured slower); the graph is kept for the backward that follows."""
    rows = [
        torch.autograd.grad(v, tensors, retain_graph=True, allow_unused=True)
        if isinstance(v, Tensor) and v.requires_grad else (None,) * len(tensors)
        for v in values
    ]
    out: list[Tensor | None] = []
    for j, t in enumerate(tensors):
        column = [r[j] for r in rows]
        if all(g is None for g in column):
            out.append(None)
        else:
            out.append(torch.stack([(torch.zeros_like(t) if g is None else g).reshape(-1) for g in column]))
    return out


def gradient_statistics(grads: list[Tensor | None], tensors: Sequence[Tensor], k: int) -> dict[str, Tensor]:
    """Per term (over every entry of every shared tensor, a missing gradient counting as
    zeros): ``abs_max``, ``abs_mean`` and ``norm`` (K,), and the Gram matrix ``gram`` (K, K),
    in float32 or wider, on the tensors' device. ``grads``: from :func:`term_gradients`."""
    first = tensors[0]
    dtype = torch.promote_types(first.dtype, torch.float32)
    size = sum(t.numel() for t in tensors)
    abs_max = torch.zeros(k, dtype=dtype, device=first.device)
    abs_sum = torch.zeros_like(abs_max)
    gram = torch.zeros(k, k, dtype=dtype, device=first.device)
    for rows in grads:
        if rows is None:
            continue
        rows = rows.to(dtype)
        absolute = rows.abs()
        abs_max = torch.maximum(abs_max, absolute.amax(1))
        abs_sum += absolute.sum(1)
        gram += rows @ rows.T
    return {"abs_max": abs_max, "abs_mean": abs_sum / max(size, 1), "norm": gram.diagonal().sqrt(), "gram": gram}


def average_over_ranks(stats: dict[str, Tensor]) -> dict[str, Tensor]:
    """The statistics averaged over the ranks of an initialised process group (one all-reduce)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return stats
    names = list(stats)
    flat = torch.cat([stats[n].reshape(-1) for n in names])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = flat / dist.get_world_size()
    parts = flat.split([stats[n].numel() for n in names])
    return {n: part.reshape(stats[n].shape) for n, part in zip(names, parts)}


def missing_shared(balancer: Any, needs: str, how: str = "crit(pred, target, shared=model.trunk)") -> LossInputError:
    """The error of a call that a gradient balancer needs ``shared`` for, without it."""
    return LossInputError(
        f'balance(method="{balancer.method.name}") {needs}, but the call did not give shared=...',
        span=getattr(balancer, "span", None),
        hint=f"pass the shared part of the model, a module or an iterable of parameters: {how}",
    )


def host_count(balancer: Any) -> int:
    """The balancer's count of training calls as a Python int: read from its buffer once
    (after a load), then kept on the host, so a call needs no device sync to know whether
    it updates."""
    if getattr(balancer, "_host_count", None) is None:
        # on meta there is no number to read: the count starts where this process starts
        balancer._host_count = 0 if balancer.count.is_meta else int(balancer.count)
    return balancer._host_count


def commit(balancer: Any, new: dict[str, Tensor], accept: Tensor | None = None) -> None:
    """Write ``new`` state into the balancer's buffers and parameters (where ``accept``)."""
    with torch.no_grad():
        for name, value in new.items():
            held = getattr(balancer, name)
            value = value.to(held.dtype)
            held.copy_(value if accept is None else torch.where(accept, value, held))


def produce(balancer: Any, values: Sequence[Tensor], seen: Tensor, ok: Tensor | None, shared: Any) -> None:
    """One training call of a weight producer: ``before`` (every call), then on an update
    call (the first, then every ``every``) the terms' gradient statistics and ``update``,
    committed only when the call's terms and the new state are finite. The weights then
    read by the balancer are updated before use. A call with a term that is not finite or
    refused by the loss's guard (``ok``) changes nothing, its count of training calls
    included: one flag read per training call (none on ``meta``)."""
    method, p = balancer.method, balancer.params
    if shared is None:
        raise missing_shared(balancer, "takes its weights from the gradients of its terms with respect to the shared parameters")
    good = torch.isfinite(seen).all()
    if ok is not None:
        good = good & ok
    if not (seen.is_meta or bool(good)):
        return  # as if the call had not been made: the stored weights weigh it
    count = host_count(balancer)
    if method.before is not None:
        commit(balancer, method.before(balancer._state(seen.dtype), p, torch))
    if count % p.every == 0:
        tensors = shared_tensors(shared, balancer)
        stats = average_over_ranks(gradient_statistics(term_gradients(values, tensors), tensors, len(values)))
        new = method.update(balancer._state(seen.dtype), stats, seen, p, torch)
        accept = good
        for value in new.values():
            accept = accept & torch.isfinite(value).all()
        commit(balancer, new, accept)
        report = getattr(balancer, "report", None)
        if report is not None:
            report(stats["norm"].detach(), stats["gram"].detach())
    balancer.count.fill_(count + 1)
    balancer._host_count = count + 1


def refuse_plain_backward(name: str, span: Any) -> LossDSLError:
    """The error of ``loss.backward()`` on a program whose balancer aggregates gradients."""
    return LossDSLError(
        f'balance(method="{name}") aggregates the terms\' gradients: the update is not the gradient '
        "of any weighted sum, so loss.backward() cannot apply it",
        span=span,
        hint="call crit.backward(shared=model.trunk) (exact) or crit.backward(features=h) (cheaper) "
        "instead of loss.backward()",
    )



_UNCOMPILED: dict[str, Any] = {}


def uncompiled(fn: Any) -> Any:
    """``fn`` marked for ``torch.compile`` to run eagerly (a graph break), made once. Made
    when a loss with a gradient balancer is built, so the compiler is imported only by the
    programs that need it (importing it costs a second)."""
    found = _UNCOMPILED.get(fn.__name__)
    if found is None:
        found = _UNCOMPILED[fn.__name__] = torch.compiler.disable(fn)
    return found
