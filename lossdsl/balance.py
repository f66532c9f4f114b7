"""Balancers: ``balance(a, b, ..., method=...)`` combines loss terms with weights it computes.

Each method of DESIGN.md §6 is a small module over a shared base. A balancer is called with
the inner terms' values ``[L_1, ..., L_K]`` and returns the combined total; ``last_weights``
then holds the effective weights ``d total / d L_i`` of that call (detached). Statistics read
the detached ``L_i``. State lives in buffers (and the learnable log-variances of
``uncertainty`` in parameters), so ``state_dict`` resumes a run exactly.

State changes only on training calls (training mode with gradients enabled, the monitor's
training phase), and not on a call where a loss is NaN or infinite or where the loss's
``zero_term``/``skip_batch`` guard found one of the balancer's terms bad (``ok``): such a call
leaves every buffer as it was, as if it had not been made. Other calls use the stored state
as it is. On training calls, under an initialised ``torch.distributed`` group of more than
one rank, the losses (and the ``ok`` flag) are all-reduced first, so every rank computes the
same weights and skips the same calls; other calls are rank-local and need no other rank.
The forward pass never synchronises with the device and has no data-dependent Python
branches, so ``torch.compile(crit, fullgraph=True)`` traces it in one graph.

>>> import torch
>>> from lossdsl.balance import make_balancer
>>> ema = make_balancer("ema", 2, {"beta": 0.9, "eps": 1e-8})
>>> total = ema([torch.tensor(4.0), torch.tensor(0.5)])
>>> [round(float(w), 4) for w in ema.last_weights]   # first call: 1 / L_i
[0.25, 2.0]
>>> round(float(total), 4)
2.0
"""

from __future__ import annotations

from functools import reduce

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "Balancer",
    "UncertaintyBalancer",
    "EmaBalancer",
    "DwaBalancer",
    "CovBalancer",
    "SoftAdaptBalancer",
    "ReLoBRaLoBalancer",
    "BALANCERS",
    "make_balancer",
    "counter_uniform",
]


def _stack(values: list[Tensor]) -> Tensor:
    """The term values as one (K,) tensor of their common dtype, gradient kept."""
    first = values[0].dtype
    if all(v.dtype == first and v.dim() == 0 for v in values):
        return torch.stack(values)
    dtype = reduce(torch.promote_types, (v.dtype for v in values))
    return torch.stack([v.to(dtype).reshape(()) for v in values])


def _mean_over_ranks(seen: Tensor, ok: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Average the detached losses over the ranks of an initialised process group; ``ok``
    becomes true only where it is true on every rank. One all-reduce for both."""
    if not (dist.is_available() and dist.is_initialized()):
        return seen, ok
    world = dist.get_world_size()
    if world == 1:
        return seen, ok
    if ok is None:
        reduced = seen.clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced / world, None
    # the number of ranks with a bad term rides in one more entry
    packed = torch.cat([seen, (~ok).to(seen.dtype).reshape(1)])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return packed[:-1] / world, packed[-1] == 0


def _accepted(seen: Tensor, ok: Tensor | None) -> Tensor:
    """Whether a training call may change the state: every loss finite (and ``ok``)."""
    finite = torch.isfinite(seen).all()
    return finite if ok is None else finite & ok


class Balancer(nn.Module):
    """Base of all balancers: ``forward(values) -> total`` with ``total = sum w_i L_i + extra``.

    Subclasses implement ``weigh(seen, update, ok) -> w`` (``seen`` = detached losses,
    averaged over ranks when training; ``update`` = whether this is a training call; ``ok`` =
    None, or a flag that is false when the loss's guard replaced one of the terms by 0) and
    may add ``extra()`` (a term that does not depend on the losses). ``weigh`` stores its new
    state only where ``_accepted(seen, ok)`` holds (``_commit`` does that).
    """

    reads_statistics = True  # False: the weights do not depend on the losses (no all-reduce)

    def __init__(self, n: int) -> None:
        super().__init__()
        if n < 2:
            raise ValueError("a balancer needs at least two terms")
        self.n = n
        self.last_weights: Tensor | None = None

    def weigh(self, seen: Tensor, update: bool, ok: Tensor | None) -> Tensor:
        raise NotImplementedError

    def extra(self) -> Tensor | float:
        return 0.0

    def _commit(self, accept: Tensor, **updates: Tensor) -> None:
        """Store new state where ``accept`` (see ``_accepted``): one bad batch must not poison
        the statistics for the rest of the run (decided on the device, without a sync)."""
        for name, value in updates.items():
            buf = getattr(self, name)
            buf.copy_(torch.where(accept, value, buf))

    def forward(self, values: list[Tensor], ok: Tensor | None = None) -> Tensor:
        """The combined total of ``values``; ``ok``: see the class docstring."""
        losses = _stack(values)
        seen = losses.detach()
        if seen.dtype in (torch.float16, torch.bfloat16):
            seen = seen.float()  # statistics in at least single precision
        # A validation call (eval mode or no gradients) neither changes the state nor waits
        # for the other ranks, so it may run on one rank alone.
        update = self.training and torch.is_grad_enabled()
        if update and self.reads_statistics:
            seen, ok = _mean_over_ranks(seen, ok)
        weights = self.weigh(seen, update, ok)
        self.__dict__["last_weights"] = weights.detach()  # a plain attribute: no Module checks
        total = torch.dot(weights, losses) if weights.dtype == losses.dtype else (weights * losses).sum()
        extra = self.extra()
        return total if isinstance(extra, float) and extra == 0.0 else total + extra


class UncertaintyBalancer(Balancer):
    """Kendall et al. 2018: ``sum 0.5 exp(-s_i) L_i + 0.5 s_i``, ``s_i`` learnable from 0.

    Add ``crit.parameters()`` to the optimizer so the log-variances ``s_i`` are trained.
    """

    reads_statistics = False

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.log_var = nn.Parameter(torch.zeros(n))

    def weigh(self, seen: Tensor, update: bool, ok: Tensor | None) -> Tensor:
        return 0.5 * torch.exp(-self.log_var)

    def extra(self) -> Tensor:
        return 0.5 * self.log_var.sum()


class EmaBalancer(Balancer):
    """``sum L_i / (m_i + eps)``, ``m_i`` the bias-corrected EMA of ``L_i``, updated before use."""

    def __init__(self, n: int, beta: float = 0.99, eps: float = 1e-8) -> None:
        super().__init__(n)
        self.beta, self.eps = float(beta), float(eps)
        self.register_buffer("ema", torch.zeros(n))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def weigh(self, seen: Tensor, update: bool, ok: Tensor | None) -> Tensor:
        if not update:
            return self._stored_weights(seen)
        ema = self.ema
        if ema.dtype == seen.dtype:
            new = torch.lerp(ema, seen, 1.0 - self.beta)  # beta * ema + (1 - beta) * seen
        else:
            new = self.beta * ema + (1.0 - self.beta) * seen
        # the training step in few operations: a step with a NaN/inf loss changes nothing
        accept = _accepted(seen, ok)
        ema = torch.where(accept, new, ema)
        self.ema.copy_(ema)
        self.count.add_(accept)
        if ok is not None:
            # Under the guard the loss must stay finite, also when the very first call is
            # refused and there is no average yet to divide by.
            return self._stored_weights(seen)
        count = self.count if ema.dtype == torch.float32 else self.count.to(ema.dtype)
        return 1.0 / (ema / (1.0 - torch.pow(self.beta, count)) + self.eps)

    def _stored_weights(self, seen: Tensor) -> Tensor:
        ema, count = self.ema, self.count
        correction = 1.0 - torch.pow(self.beta, count.to(ema.dtype))
        started = count > 0
        # Before any training step (eval only) the EMA is empty: use the losses themselves.
        mean = torch.where(started, ema / torch.where(started, correction, 1.0), seen)
        return 1.0 / (mean + self.eps)


class DwaBalancer(Balancer):
    """Dynamic weight average (Liu et al. 2019): ``lambda = K softmax(r / temperature)``.

    ``r_i`` = mean of ``L_i`` over the last ``window`` steps (the current one included) / mean
    over the window before; ``lambda = 1`` until two windows are seen.
    """

    def __init__(self, n: int, temperature: float = 2.0, window: int = 10, eps: float = 1e-8) -> None:
        super().__init__(n)
        self.temperature, self.window, self.eps = float(temperature), int(window), float(eps)
        # A shift register of the last 2*window losses, oldest first.
        self.register_buffer("history", torch.zeros(2 * self.window, n))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def weigh(self, seen: Tensor, update: bool, ok: Tensor | None) -> Tensor:
        if update:
            history = torch.cat([self.history[1:], seen.to(self.history.dtype).unsqueeze(0)])
            self._commit(_accepted(seen, ok), history=history, count=self.count + 1)
        # read after the commit: a refused call weighs with the stored windows
        history, count = self.history, self.count
        w = self.window
        ratio = history[w:].mean(0) / (history[:w].mean(0) + self.eps)
        lam = self.n * torch.softmax(ratio / self.temperature, dim=0)
        return torch.where(count >= 2 * w, lam, torch.ones_like(lam))


class CovBalancer(Balancer):
    """Coefficient-of-variation weighting (Groenendijk et al. 2021): ``sum alpha_i L_i / mu_i``.

    ``mu_i`` = running mean of ``L_i``; ``l_i = L_i / mu_i``; Welford mean and (population)
    variance of ``l_i``; ``alpha_i = c_i / sum c``, ``c_i = std(l_i) / mean(l_i)``. All are
    updated with the current step before use; ``alpha = 1/K`` for the first two steps.
    """

    def __init__(self, n: int, eps: float = 1e-8) -> None:
        super().__init__(n)
        self.eps = float(eps)
        self.register_buffer("loss_mean", torch.zeros(n))
        self.register_buffer("ratio_mean", torch.zeros(n))
        self.register_buffer("ratio_m2", torch.zeros(n))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def weigh(self, seen: Tensor, update: bool, ok: Tensor | None) -> Tensor:
        if update:
            loss_mean, ratio_mean, ratio_m2 = self.loss_mean, self.ratio_mean, self.ratio_m2
            count = self.count + 1
            c = count.to(loss_mean.dtype)
            loss_mean = loss_mean + (seen - loss_mean) / c
            ratio = seen / (loss_mean + self.eps)
            delta = ratio - ratio_mean
            ratio_mean = ratio_mean + delta / c
            ratio_m2 = ratio_m2 + delta * (ratio - ratio_mean)
            accept = _accepted(seen, ok)
            self._commit(accept, loss_mean=loss_mean, ratio_mean=ratio_mean, ratio_m2=ratio_m2, count=count)
        # read after the commit: a refused call weighs with the stored statistics
        loss_mean, ratio_mean, ratio_m2, count = self.loss_mean, self.ratio_mean, self.ratio_m2, self.count
        c = count.to(loss_mean.dtype).clamp(min=1.0)
        cv = torch.sqrt(ratio_m2 / c) / (ratio_mean + self.eps)
        total_cv = cv.sum()
        uniform = torch.full_like(cv, 1.0 / self.n)
        # 1/K while there are too few steps for a variance (or every ratio is constant).
        spread = total_cv > 0
        alpha = torch.where((count > 2) & spread, cv / torch.where(spread, total_cv, 1.0), uniform)
        mean = torch.where(count > 0, loss_mean, seen)
        return alpha / (mean + self.eps)


class SoftAdaptBalancer(Balancer):
    """SoftAdapt (Heydari et al. 2019): ``lambda = softmax(beta s)``, ``s_i = L_i(t) - L_i(t-1)``.

    On the first call there is no previous loss: ``s = 0``, so ``lambda = 1/K``.
    """

    def __init__(self, n: int, beta: float = 0.1) -> None:
        super().__init__(n)
        self.beta = float(beta)
        self.register_buffer("previous", torch.zeros(n))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def weigh(self, seen: Tensor, update: bool, ok: Tensor | None) -> Tensor:
        slope = torch.where(self.count > 0, seen - self.previous, torch.zeros_like(seen))
        lam = torch.softmax(self.beta * slope, dim=0)
        if update:
            self._commit(_accepted(seen, ok), previous=seen, count=self.count + 1)
        return lam


_MASK32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """``(x * c) mod 2**32`` for ``0 <= x < 2**32`` in int64 without overflow (16-bit halves)."""
    low, high = x & 0xFFFF, x >> 16
    return (low * c + (((high * c) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: Tensor) -> Tensor:
    # A 32-bit integer finaliser (xorshift-multiply rounds): every input bit affects every output bit.
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def counter_uniform(key: Tensor, counter: Tensor) -> Tensor:
    """A uniform number in ``[0, 1)`` from a key and a counter (int64 tensors), in float32.

    Counter-based: the generator's whole state is ``(key, counter)``, plain tensor maths on any
    device, with no global RNG involved.

    >>> import torch
    >>> u = counter_uniform(torch.tensor(7), torch.arange(1000))
    >>> bool((u >= 0).all() and (u < 1).all()), abs(float(u.mean()) - 0.5) < 0.05
    (True, True)
    """
    x = _mix32(_mix32(counter & _MASK32) ^ (key & _MASK32))
    return (x >> 8).to(torch.float32) * (1.0 / (1 << 24))


class ReLoBRaLoBalancer(Balancer):
    """Relative loss balancing with random lookback (Bischof & Kraus 2021).

    ``lambda_i(t) = alpha [rho lambda_i(t-1) + (1-rho) lhat_i(t,0)] + (1-alpha) lhat_i(t,t-1)``,
    ``lhat_i(t,t') = K softmax_i(L_i(t) / (temperature L_i(t') + eps))``,
    ``rho ~ Bernoulli(expected_rho)`` from a counter-based generator seeded by ``seed``.
    ``lambda(-1) = 1`` and ``L(-1) = L(0)``, so the first call gives 1 per term. In eval mode no
    number is drawn: ``rho`` is replaced by its expectation.
    """

    def __init__(
        self,
        n: int,
        alpha: float = 0.999,
        expected_rho: float = 0.999,
        temperature: float = 0.1,
        eps: float = 1e-8,
        seed: int = 0,
    ) -> None:
        super().__init__(n)
        self.alpha, self.expected_rho = float(alpha), float(expected_rho)
        self.temperature, self.eps = float(temperature), float(eps)
        self.register_buffer("initial", torch.zeros(n))
        self.register_buffer("previous", torch.zeros(n))
        self.register_buffer("lambdas", torch.ones(n))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("rng_key", _mix32(torch.tensor(int(seed) & _MASK32, dtype=torch.long)))
        self.register_buffer("rng_counter", torch.zeros((), dtype=torch.long))

    def _lhat(self, now: Tensor, then: Tensor) -> Tensor:
        return self.n * torch.softmax(now / (self.temperature * then + self.eps), dim=0)

    def weigh(self, seen: Tensor, update: bool, ok: Tensor | None) -> Tensor:
        first = self.count == 0
        initial = torch.where(first, seen, self.initial)
        previous = torch.where(first, seen, self.previous)
        if update:
            u = counter_uniform(self.rng_key, self.rng_counter)
            rho = (u < self.expected_rho).to(seen.dtype)
        else:
            rho = torch.full_like(seen[0], self.expected_rho)
        lam = self.alpha * (rho * self.lambdas + (1.0 - rho) * self._lhat(seen, initial)) + (
            1.0 - self.alpha
        ) * self._lhat(seen, previous)
        if update:
            accept = _accepted(seen, ok)
            self._commit(accept, initial=initial, previous=seen, lambdas=lam, count=self.count + 1)
            # a refused call leaves the draw for the next one: as if it had not been made
            self.rng_counter.add_(accept)
        return lam


BALANCERS: dict[str, type[Balancer]] = {
    "uncertainty": UncertaintyBalancer,
    "ema": EmaBalancer,
    "dwa": DwaBalancer,
    "cov": CovBalancer,
    "softadapt": SoftAdaptBalancer,
    "relobralo": ReLoBRaLoBalancer,
}


def make_balancer(method: str, n: int, params: dict) -> Balancer:
    """The balancer module of ``method`` for ``n`` terms with validated ``params``.

    >>> import torch
    >>> b = make_balancer("softadapt", 2, {"beta": 0.1})
    >>> _ = b([torch.tensor(1.0), torch.tensor(2.0)])
    >>> b.last_weights.tolist()
    [0.5, 0.5]
    """
    params = {k: v for k, v in params.items() if k != "method"}
    return BALANCERS[method](n, **params)

