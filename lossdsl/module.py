"""``Loss``: the compiled program as one differentiable ``torch.nn.Module`` (DESIGN.md §4).

>>> import torch, lossdsl
>>> crit = lossdsl.compile("0.7*huber(delta=1) + 0.3*temporal_diff")
>>> pred = torch.randn(4, 8, 2, requires_grad=True)
>>> loss = crit(pred, torch.randn(4, 8, 2))
>>> loss.backward()
>>> sorted(crit.terms), crit.weights["huber"].item()
(['huber', 'temporal_diff'], 0.699999988079071)
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from . import ir
from .errors import LossDSLError, LossInputError, did_you_mean
from .nonfinite import GATED_POLICIES, POLICIES, NonFiniteGuard, balancer_ok
from .fused import fused_call, fused_program_for
from .plan import Env, build_plan, shared_plan
from .runners import term_runner
from .terms._common import HALF_DTYPES
from .weights import sweep
from .quickset import set_attributes, set_buffers
from .schedules import schedule_runner

__all__ = ["Loss"]

_STATE_VERSION = 1
_NO_BALANCERS = nn.ModuleList()


class Loss(nn.Module):
    """A compiled loss program. Build one with :func:`lossdsl.compile`.

    ``forward(pred=None, target=None, *, step=None, **inputs)`` returns a 0-dim tensor.
    After a call, ``terms`` holds each term's raw value and ``weights`` its effective weight
    ``d total / d term``; ``monitor`` keeps running statistics.
    """

    def __init__(
        self,
        resolved: ir.Resolved,
        *,
        strict: bool = True,
        nonfinite: str = "raise",
        compile_args: dict | None = None,
        fuse: bool = False,
    ) -> None:
        super().__init__()
        if nonfinite not in POLICIES:
            raise LossDSLError(
                f"unknown nonfinite policy {nonfinite!r}",
                hint="use one of " + ", ".join(repr(p) for p in POLICIES),
            )
        set_attributes(
            self,
            source=resolved.source,
            canonical=resolved.canonical,
            strict=bool(strict),
            nonfinite=nonfinite,
            _compile_args=compile_args or {},
            _resolved=resolved,
            fuse=bool(fuse),
        )
        set_buffers(self, {"step": torch.zeros((), dtype=torch.long)})
        self._build()

    # --- construction ---------------------------------------------------------------------

    def _build(self, keep_modules: bool = False) -> None:
        from .monitor import Monitor

        resolved = self._resolved
        # the runners depend only on the program and the policy: compiled once, shared
        plan = shared_plan(resolved, self.nonfinite, lambda: build_plan(
            resolved,
            make_term_runner=self._term_runner,
            make_schedule_runner=self._schedule_runner,
        ))
        # Slots of the terms: the total takes their dtype (a float32 schedule or balancer
        # weight must not turn a bfloat16 loss into float32).
        term_slots = [s for s, item in zip(plan.logged_slots, plan.logged_items) if isinstance(item, ir.Term)]
        set_attributes(
            self,
            _plan=plan,
            _runs=[instr.run for instr in plan.instrs],
            _root=plan.root,
            _logged_slots=plan.logged_slots,
            _term_slots=term_slots,
        )
        set_attributes(
            self,
            term_names=list(plan.logged_names),
            _read=resolved.inputs_read,
        )
        if plan.balancers:
            from .balance import make_balancer

            if not keep_modules:
                self.balancers = nn.ModuleList(
                    make_balancer(b.method, len(b.args), dict(b.params)) for b in plan.balancers
                )
            for instr in plan.instrs:
                if instr.balancer is not None:
                    instr.run = self._balance_runner(instr)
                    self._runs[instr.slot] = instr.run
        elif not keep_modules:
            # One empty list shared by every loss without a balancer: it has no state, and
            # making one per compile was a tenth of the cost of compiling a cached source.
            self.balancers = _NO_BALANCERS
        constant = plan.constant_weights
        program = plan.weight_program
        matrix, offset = (None, None) if program is None or program.direct else program.tensors()
        set_buffers(self, {
            "_constant_weights": None if constant is None else _constant_weights_of(plan),
            "_weight_matrix": matrix,
            "_weight_offset": offset,
        }, persistent=False)
        # fuse=True: the one-pass value-and-gradient path, when the program allows it
        fused = fused_program_for(resolved, plan, self.nonfinite) if self.fuse else None
        blank = [None] * len(plan.instrs)
        for slot, value in plan.const_slots.items():
            blank[slot] = value
        set_attributes(
            self,
            _blank=blank,  # the values of a call before it runs: the constants in their slots
            _coefficients={},  # (weights, dtype, device) -> the total's coefficients (linear.py)
            _weight_program=program,
            _host_weights=[None, None],  # [monomials, weights] of the last call
            _guard=NonFiniteGuard(self.nonfinite, plan, self.source),
            _fused=fused,
            fused=fused is not None,
        )
        if not keep_modules:
            self.monitor = Monitor(self.term_names, resolved)
            # [raw values, weights] of the last call: a list, so that forward stores them
            # without nn.Module.__setattr__'s checks (a few microseconds per call)
            set_attributes(self, _last=[None, None, False])  # and whether [0] ends with the total
        else:
            self.monitor.program = resolved  # not pickled with the monitor: rebuilt here
        self.monitor.follow_step_of(self)  # the sinks' rows carry the stored step

    def _term_runner(self, term: ir.Term):
        return term_runner(term, self.source, self.nonfinite)

    def _schedule_runner(self, schedule: ir.Schedule):
        run = schedule_runner(schedule.name, dict(schedule.params))
        return lambda vals, env: run(env.step)

    def _balance_runner(self, instr):
        # forward itself: nn.Module.__call__'s hook handling is a tenth of a balancer's call
        forward = self.balancers[instr.balancer].forward
        args = instr.args
        if self.nonfinite in GATED_POLICIES:  # told when the guard zeroed one of its terms
            ok = balancer_ok(self._plan.balancers[instr.balancer])
            return lambda vals, env: forward([vals[a] for a in args], ok(env))
        return lambda vals, env: forward([vals[a] for a in args])

    # --- the call -------------------------------------------------------------------------

    def forward(
        self, pred: Any = None, target: Any = None, *, step: int | Tensor | None = None, **inputs: Any
    ) -> Tensor:
        if step is not None:
            self.step.fill_(step)
        if inputs and self.strict:
            unread = inputs.keys() - self._read
            if unread:
                raise self._unread_error(sorted(unread))
        env = Env(pred, target, inputs, self.step)
        fused = self._fused and fused_call(self._fused, pred, target, inputs)
        if fused:
            # the terms' values come out of the fused pass without a graph each: no probe
            (total, raw), logged, weights = fused, None, self._constant_weights
            row = None
        else:
            lin = self._plan.linear
            # weights that follow the step are Python numbers only with the step on the CPU
            if lin is not None and (
                not lin.step_dependent or (env.step.is_cpu and not torch.compiler.is_compiling())
            ):
                vals, total, weights = self._linear_call(lin, env)
            else:
                vals = []
                for run in self._runs:
                    vals.append(run(vals, env))
                total, weights = vals[self._root], None
            logged = [vals[s] for s in self._logged_slots]
            if self._term_slots and total.dtype != vals[self._term_slots[0]].dtype:
                total = total.to(_result_dtype([vals[s] for s in self._term_slots]))
            logged, total = self._guard.finish(logged, total, env)
            # One copy of the values and the total, detached: a term's 0-dim value may share
            # the storage of a full-size buffer (F.mse_loss's does), which a kept reference
            # would hold on to.
            row, finite = _values_row(logged, total)
            if weights is None:
                weights = self._weights(vals)
        last = self._last
        last[0], last[1], last[2] = raw if row is None else row, weights, row is not None
        if self.monitor.enabled:
            if row is not None:
                self.monitor.record_terms(logged, weights, total, env, row)
            else:
                self.monitor.record(raw, weights, total, logged, env)
        if self.nonfinite in _CHECKED:
            # after recording: a call that raises still shows in crit.terms and the monitor
            ranks = self._guard.across_ranks(self.training)
            if ranks > 1 or not (finite if row is not None else _finite_on_cpu(raw, total)):
                self._guard.check(raw if row is None else row[:-1], total, self.step, ranks)
        return total

    def _linear_call(self, lin, env: Env) -> tuple[list, Tensor, Tensor]:
        """The terms, then ``total = dot(weights, terms) + offset`` (see ``lossdsl/linear.py``)."""
        vals = list(self._blank)
        runs = self._runs
        for s in lin.runs:
            vals[s] = runs[s](vals, env)
        weights = self._weights(vals)
        terms = [vals[s] for s in lin.terms]
        stacked = torch.stack(terms)
        half = stacked.dtype in HALF_DTYPES
        dtype = torch.float32 if half else stacked.dtype
        # The coefficients in the terms' precision, from the Python numbers (not the float32
        # weights): a float64 loss gets 0.7, not float32's 0.699999988.
        constant = self._constant_weights is not None
        host = None if constant else self._host_weights[0]  # the monomials the weights came from
        key = (host, dtype, stacked.device)
        coeffs = None if torch.compiler.is_compiling() else self._coefficients.get(key)
        if coeffs is None:  # under torch.compile: a constant of the graph, no cache to guard on
            numbers = self._plan.constant_weights if constant else self._weight_program.on_host(host)
            with torch.inference_mode(False):  # kept: must be usable by autograd later
                coeffs = torch.tensor(
                    [numbers[i] for i in lin.weight_index], dtype=dtype, device=stacked.device
                )
            if not torch.compiler.is_compiling():
                if len(self._coefficients) > 8:
                    self._coefficients.clear()
                self._coefficients[key] = coeffs
        total = torch.dot(coeffs, stacked.to(dtype) if half else stacked)
        if half:
            total = total.to(stacked.dtype)
        return vals, (total + lin.offset if lin.offset else total), weights

    def _weights(self, vals: list) -> Tensor:
        if self._constant_weights is not None:
            return self._constant_weights
        balancer_weights = [b.last_weights for b in self.balancers]
        program = self._weight_program
        if program is not None:
            m = program.monomial_values(self._plan, vals, balancer_weights)
            if isinstance(m, tuple):
                # Weights from schedules read on the host. Unchanged since the last call (a
                # schedule that has ended, a piecewise step): the same tensor, which the
                # monitor then writes into its history once instead of per call.
                cached = self._host_weights
                if cached[0] != m:
                    cached[0], cached[1] = m, torch.tensor(program.on_host(m), dtype=torch.float32)
                return cached[1]
            if program.direct:
                return m
            matrix, offset = self._weight_matrix, self._weight_offset
            if matrix.device != m.device:  # the module was not moved to the inputs' device
                matrix, offset = matrix.to(m.device), offset.to(m.device)
            return torch.addmv(offset, matrix, m)
        detached = [v.detach() if isinstance(v, Tensor) else v for v in vals]
        ws = sweep(self._plan, detached, balancer_weights)
        ref = next(v for v in detached if isinstance(v, Tensor))
        return torch.stack(
            [w.to(torch.float32) if isinstance(w, Tensor) else torch.tensor(float(w), device=ref.device) for w in ws]
        )

    def _unread_error(self, unread: list[str]) -> LossInputError:
        readable = sorted(self._read - {"pred", "target"})
        read = ", ".join(readable) or "no keyword inputs"
        names = ", ".join(repr(u) for u in unread)
        close = did_you_mean(unread[0], readable)
        return LossInputError(
            f"no term reads the input{'s' if len(unread) > 1 else ''} {names}",
            hint=(close + " " if close else "")
            + f"this loss reads {read}; check the spelling, or compile with strict=False",
        )

    # --- what the last call saw -----------------------------------------------------------

    @property
    def _last_raw(self) -> Tensor | None:
        values, _, with_total = self._last
        return values[:-1] if with_total else values

    @property
    def _last_weights(self) -> Tensor | None:
        return self._last[1]

    @property
    def terms(self) -> dict[str, Tensor]:
        """Raw (unweighted) value of every term and named composite of the last call, detached."""
        if self._last_raw is None:
            return {}
        return dict(zip(self.term_names, self._last_raw.unbind(0)))

    @property
    def weights(self) -> dict[str, Tensor]:
        """Effective weight ``d total / d term`` of every term in the last call."""
        if self._last_weights is None:
            if self._constant_weights is None:
                return {}
            return dict(zip(self.term_names, self._constant_weights.unbind(0)))
        return dict(zip(self.term_names, self._last_weights.unbind(0)))

    def set_step(self, step: int) -> None:
        """Set the stored optimizer step that schedules and balancers read."""
        self.step.fill_(int(step))

    # --- state ----------------------------------------------------------------------------

    def get_extra_state(self) -> dict:
        return {"source": self.canonical, "version": _STATE_VERSION}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # The program is checked before any tensor is copied: a refused state changes nothing
        # (nn.Module would copy this module's own tensors first, then check).
        key = prefix + "_extra_state"
        if key in state_dict:
            self.set_extra_state(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_extra_state(self, state: Any) -> None:
        saved = state.get("source") if isinstance(state, Mapping) else None
        if saved != self.canonical:
            raise LossDSLError(
                "this state was saved from a different loss program",
                hint=f"saved: {saved!r}; this loss: {self.canonical!r}. Compile the saved "
                "program, or delete the state's '_extra_state' entry and load with strict=False",
            )

    def __getstate__(self):
        state = self.__dict__.copy()
        # closures do not pickle; the plan is rebuilt from the resolved program on load
        for key in ("_plan", "_runs", "_guard"):
            state.pop(key, None)
        state["_resolved"] = None
        state["_last"] = [self._last_raw, self._last[1], False]  # detached values, not the graph
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        from .compile import _resolve_cached

        args = self._compile_args
        self._resolved = _resolve_cached(self.source, args.get("terms"))
        self._build(keep_modules=True)

    def extra_repr(self) -> str:
        return repr(self.canonical)


_CHECKED = ("raise", "warn")  # the policies that look at the values after the call


def _finite_on_cpu(raw: Tensor | list, total: Any) -> bool:
    """True when the values are on the CPU and all finite, read on the host: about a
    microsecond instead of the guard's tensor ops. Anything else (another device,
    ``torch.compile`` tracing, a non-finite value) is left to the guard, which checks each.

    ``raw``: the term values (the fused path's), as a tensor or a list of 0-dim tensors.
    """
    if torch.compiler.is_compiling():
        return False
    if isinstance(total, Tensor):
        if not total.is_cpu:
            return False
        total = total.item()
    if isinstance(raw, Tensor):
        if not raw.is_cpu:
            return False
        extra = sum(raw.tolist())
    else:
        if any(not v.is_cpu for v in raw):
            return False
        extra = sum(v.item() for v in raw)
    # A sum is non-finite when any addend is; a sum of finite values that overflows only
    # sends the call to the guard, which checks each value.
    return math.isfinite(extra + total)


def _constant_weights_of(plan) -> Tensor:
    """The folded weights as a CPU tensor made once per plan and shared by the modules built
    from it (never written in place; ``.to()`` gives each module its own copy)."""
    if plan.constant_weights_tensor is None:
        with torch.inference_mode(False):  # a compile under inference_mode must not make it one
            plan.constant_weights_tensor = torch.tensor(plan.constant_weights, dtype=torch.float32)
    return plan.constant_weights_tensor


def _values_row(logged: list, total: Any) -> tuple[Tensor, bool | None]:
    """``[value_1, ..., value_K, total]`` as one new (K+1,) tensor without a graph, and
    whether they are all finite (None: not known, the values are not on the CPU or traced).

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
            dtype = total.dtype
            for v in logged:
                if v.dtype != dtype:
                    dtype = torch.promote_types(dtype, v.dtype)
            numbers.append(total.item())
            return torch.tensor(numbers, dtype=dtype), all(map(math.isfinite, numbers))
    parts = [v.detach() for v in logged]
    parts.append(total.detach() if isinstance(total, Tensor) else torch.tensor(float(total), device=parts[0].device))
    return torch.stack(parts), None


def _result_dtype(values: list) -> torch.dtype:
    """The dtype the term values promote to: the dtype of the loss."""
    dtype = values[0].dtype
    for v in values[1:]:
        dtype = torch.promote_types(dtype, v.dtype)
    return dtype
