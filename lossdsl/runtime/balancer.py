"""The balancer module: runs one method of ``language.balancers`` and owns its state.

``forward([L_1, ..., L_K])`` returns ``(total, weights)`` with ``total = sum w_i L_i + extra``;
``weights`` are the effective weights ``d total / d L_i`` of that call, detached. The method's
statistics read the detached ``L_i`` (in at least single precision); under an initialised
``torch.distributed`` they are first averaged over ranks so every rank computes the same
weights. State lives in buffers (and learnable state in parameters), so ``state_dict``
resumes a run exactly. State changes only on training calls, and is committed only when every
term is finite (decided on the device, without a sync), so one bad batch cannot poison the
statistics for the rest of the run; a validation call (eval mode or no gradients) reads the
state without changing it and talks to no other rank. The forward has no data-dependent Python branch, so
``torch.compile(crit, fullgraph=True)`` traces it in one graph. Methods that read the terms'
gradients (§6.1) are run by :mod:`.gradients` (a training call of a weight producer, eagerly)
and :mod:`.jacobian` (an aggregator: the plain sum here, the aggregation in ``crit.backward``).

>>> import torch
>>> from lossdsl.language.balancers import METHODS
>>> ema = Balancer(METHODS["ema"], 2, {"beta": 0.9, "eps": 1e-8})
>>> total, weights = ema([torch.tensor(4.0), torch.tensor(0.5)])
>>> [round(float(w), 4) for w in weights], round(float(total), 4)
([0.25, 2.0], 2.0)
"""

from __future__ import annotations

import threading
from functools import reduce
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .gradients import produce, uncompiled
from .jacobian import aggregate_forward

__all__ = ["Balancer", "mean_over_ranks"]

_HALF = (torch.float16, torch.bfloat16)
# An update reads the state, then writes it: calls from several threads (nn.DataParallel)
# take turns, or one would overwrite another's and its call would be lost. Re-entrant, and
# one for the module, so that a balancer stays picklable and copyable.
_UPDATING = threading.RLock()


def mean_over_ranks(seen: Tensor, ok: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Average the detached losses over the ranks of an initialised process group; ``ok``
    becomes true only where it is true on every rank. One all-reduce for both."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return seen, ok
    world = dist.get_world_size()
    if ok is None:
        reduced = seen.clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced / world, None
    # the number of ranks with a refused term rides in one more entry
    packed = torch.cat([seen, (~ok).to(seen.dtype).reshape(1)])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return packed[:-1] / world, packed[-1] == 0


def _stack(values: Sequence[Tensor]) -> Tensor:
    """The term values as one (K,) tensor of their common dtype, gradient kept."""
    first = values[0].dtype
    if all(v.dtype == first and v.dim() == 0 for v in values):
        return torch.stack(list(values))
    dtype = reduce(torch.promote_types, (v.dtype for v in values))
    return torch.stack([v.to(dtype).reshape(()) for v in values])


class _Params:
    def __init__(self, values: dict) -> None:
        self.__dict__.update(values)


class Balancer(nn.Module):
    """One ``balance(...)`` of a program: ``method`` (a row of ``language.balancers``), ``k``
    terms, validated ``params``."""

    def __init__(self, method: Any, k: int, params: dict) -> None:
        super().__init__()
        if k < 2:
            raise ValueError("a balancer needs at least two terms")
        self.method, self.k = method, k
        # validated again here, so a balancer made directly gets the method's defaults
        validated = method.params.model_validate({key: v for key, v in params.items() if key != "method"})
        self.params = _Params({name: getattr(validated, name) for name in type(validated).model_fields if name != "method"})
        if getattr(method, "gradients", None) == "weights":
            uncompiled(produce)  # made now, outside any compiled call
        self._buffer_names = []
        for name, value in method.state(k, self.params, torch).items():
            self.register_buffer(name, value)
            self._buffer_names.append(name)
        self._parameter_names = []
        for name, value in method.learnable(k, self.params, torch).items():
            self.register_parameter(name, nn.Parameter(value))
            self._parameter_names.append(name)

    def _state(self, dtype: torch.dtype | None = None, lent: torch.device | None = None) -> dict[str, Tensor]:
        """The state by name; floating buffers in at least ``dtype`` (a float64 loss computes
        its weights in float64 from float32 statistics, without rounding them); copies on
        ``lent`` when given."""
        state = {}
        for name in self._buffer_names + self._parameter_names:
            value = getattr(self, name)
            if dtype is not None and value.is_floating_point() and name in self._buffer_names:
                wider = torch.promote_types(value.dtype, dtype)
                value = value if wider == value.dtype else value.to(wider)
            state[name] = value if lent is None else value.to(lent)
        return state

    def _follow(self, device: torch.device) -> torch.device | None:
        """The state follows the inputs' device, moved once when it changes (as the monitor's
        statistics). Inputs on ``meta`` hold no numbers: the state stays where it is and the
        call reads a meta copy of it (returned), changing nothing."""
        home = next((getattr(self, n).device for n in self._buffer_names + self._parameter_names), device)
        if home == device:
            return None
        if device.type == "meta":
            return device
        with torch.inference_mode(False), torch.no_grad():  # state made under inference_mode stays writable
            if home.type != "meta":
                self.to(device)
                return None
            self.to_empty(device=device)
            self.restart()  # state on meta (a loss moved there whole) held no numbers
        return None

    def _apply(self, fn, recurse: bool = True):
        # `.half()`/`.bfloat16()` must not round the statistics, whose small updates would
        # vanish below half precision: they stay in float32, converted from the original
        before = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, buf in self._buffers.items():
            old = before.get(name)
            if buf is not None and buf.dtype in _HALF and old is not None and not old.is_meta:
                self._buffers[name] = old.to(buf.device, torch.float32)
        return self

    def restart(self) -> None:
        """Start with the state of a new balancer."""
        with torch.inference_mode(False), torch.no_grad():
            for name, value in self.method.initial_state(self.k, self.params, torch).items():
                getattr(self, name).copy_(value)
        self._host_count = None

    def forward(self, values: Sequence[Tensor], ok: Tensor | None = None, shared: Any = None) -> tuple[Tensor, Tensor]:
        """``(total, weights)`` of ``values``. ``ok``: under ``zero_term``/``skip_batch``,
        false when the loss's guard replaced one of these terms by 0 (the call then leaves
        the state as it was, as if it had not been made). ``shared``: the call input that
        methods reading the terms' gradients differentiate by (§6.1)."""
        losses = _stack(values)
        lent = self._follow(losses.device)
        if self.method.gradients == "aggregate":  # the plain sum; crit.backward aggregates
            return aggregate_forward(self, values, losses, shared, ok)
        seen = losses.detach()
        if seen.dtype in _HALF:
            seen = seen.float()  # statistics in at least single precision
        # A validation call (eval mode or no gradients) neither changes the state nor waits
        # for the other ranks, so it may run on one rank alone.
        update = self.training and torch.is_grad_enabled() and lent is None
        if update and (self.method.reads_losses or self.method.gradients == "weights"):
            # a gradient producer decides on the mean too: a term bad on one rank makes every
            # rank skip the update, and its gradient all-reduce, alike
            seen, ok = mean_over_ranks(seen, ok)
        if torch.compiler.is_compiling():  # a lock is not traced; a compiled call is one graph
            weights, extra = self._weigh(values, seen, ok, shared, update, lent)
        else:
            with _UPDATING:
                weights, extra = self._weigh(values, seen, ok, shared, update, lent)
        weights = weights.to(losses.dtype) if weights.dtype != losses.dtype else weights
        total = torch.dot(weights, losses)
        if extra is not None:
            total = total + extra
        return total, weights.detach()

    def _weigh(self, values: Sequence[Tensor], seen: Tensor, ok: Tensor | None, shared: Any, update: bool,
               lent: torch.device | None) -> tuple[Tensor, Tensor | None]:
        """The weights of this call from the stored state, which a training call updates, and
        the method's extra part of the total (None: none), read from the same state."""
        if update and self.method.gradients == "weights":
            uncompiled(produce)(self, values, seen, ok, shared)  # updates the weights before use
        state = self._state(seen.dtype, lent)
        weights, new = self.method.weigh(state, seen, self.params, update, torch)
        if update and new:
            accept = torch.isfinite(seen).all()
            if ok is not None:
                accept = accept & ok
                # a refused call weighs with the stored state, and its loss stays finite
                stored, _ = self.method.weigh(state, seen, self.params, False, torch)
                weights = torch.where(accept, weights, stored)
            for name, value in new.items():
                buffer = getattr(self, name)
                if value.dtype != buffer.dtype:
                    value = value.to(buffer.dtype)
                buffer.copy_(torch.where(accept, value, buffer))
        extra = self.method.extra
        return weights, None if extra is None else extra(self._state(None, lent), self.params, torch)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._host_count = None  # the count of training calls is read again from the state

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_aggregator", None)  # a solver's objects: made again at the next use
        return state

    def extra_repr(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in vars(self.params).items())
        return f"method={self.method.name!r}, k={self.k}" + (f", {shown}" if shown else "")
