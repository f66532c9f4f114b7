"""``Loss``: the compiled program as one differentiable ``torch.nn.Module`` (DESIGN.md §4).

>>> import torch, lossdsl
>>> crit = lossdsl.compile("0.7*huber(delta=1) + 0.3*temporal_diff")
>>> pred = torch.randn(4, 8, 2, requires_grad=True)
>>> loss = crit(pred, torch.randn(4, 8, 2))
>>> loss.backward()
>>> sorted(crit.terms), crit.weights["huber"].item()
(['huber', 'temporal_diff'], 0.699999988079071)

The total, ``crit.terms`` and ``crit.weights`` are in the terms' dtype: a float64 loss has
the weight 0.7 exactly. Half-precision terms combine in float32 (``crit.terms`` and
``crit.weights`` report them in float32); the total is returned in their dtype.

>>> _ = crit(pred.double(), torch.randn(4, 8, 2, dtype=torch.float64))
>>> crit.weights["huber"].item(), crit.weights["huber"].dtype
(0.7, torch.float64)
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from . import ir
from .call_values import CallWeights, combining_dtype, constant_weights_of, values_row
from .errors import LossDSLError, LossInputError, did_you_mean
from .nonfinite import GATED_POLICIES, POLICIES, NonFiniteGuard, balancer_ok
from .fused import fused_call, fused_program_for
from .plan import Env, build_plan, shared_plan
from .runners import term_runner
from .quickset import set_attributes, set_buffers
from .schedules import schedule_runner
from .steps import STEP_LIMIT, checked_step, stepless_warning

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
        # the number of training calls while no step was given, for the one warning that
        # the schedules are not moving (None: no schedule, or a step was given, set or loaded)
        set_attributes(self, _step_watch=[0] if self._plan.schedules else None)

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
        # Slots of the terms: the total takes their dtype (a schedule's float64 value or a
        # balancer's float32 weight must not change the dtype of the loss).
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
        # float32 and on the module's device (.to() moves it; _apply keeps it float32): the
        # weights of the common float32 call; other dtypes get theirs from the numbers
        set_buffers(self, {
            "_constant_weights": None if constant is None else constant_weights_of(plan),
        }, persistent=False)
        # fuse=True: the one-pass value-and-gradient path, when the program allows it
        fused = fused_program_for(resolved, plan, self.nonfinite) if self.fuse else None
        blank = [None] * len(plan.instrs)
        for slot, value in plan.const_slots.items():
            blank[slot] = value
        set_attributes(
            self,
            _blank=blank,  # the values of a call before it runs: the constants in their slots
            _call_weights=CallWeights(plan, self.balancers),
            _n_terms=sum(1 for instr in plan.instrs if instr.kind == "term"),
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
            self._store_step(step)
        elif self._step_watch is not None:
            self._count_stepless_call()
        if inputs and self.strict:
            unread = inputs.keys() - self._read
            if unread:
                raise self._unread_error(sorted(unread))
        env = Env(pred, target, inputs, self.step)
        fused = self._fused and fused_call(self._fused, pred, target, inputs)
        if fused:
            # the terms' values come out of the fused pass without a graph each: no probe
            (total, raw), logged = fused, None
            weights = self._call_weights.weights(self._constant_weights, None, combining_dtype(total.dtype))
            row = None
        else:
            lin = self._plan.linear
            # weights that follow the step are Python numbers only with the step on the CPU
            if lin is not None and (
                not lin.step_dependent or (env.step.is_cpu and not torch.compiler.is_compiling())
            ):
                vals, total, weights = self._linear_call(lin, env)
                wide = total.dtype
            else:
                vals = []
                for run in self._runs:
                    vals.append(run(vals, env))
                total, weights = vals[self._root], None
                wide = self._combined_dtype(vals, total)
            # the total in the terms' dtype: half-precision terms were combined in float32,
            # a schedule's float64 value must not make a float32 loss float64
            low = env.low
            dtype = low if low is not None and env.n_low == self._n_terms else wide
            if total.dtype != dtype:
                total = total.to(dtype)
            logged = [vals[s] for s in self._logged_slots]
            logged, total = self._guard.finish(logged, total, env)
            # One copy of the values and the total, detached: a term's 0-dim value may share
            # the storage of a full-size buffer (F.mse_loss's does), which a kept reference
            # would hold on to. In the dtype they combined in: a half-precision term of 70000
            # under a weight of 0.001 is reported as it counted, not as float16's inf.
            row, finite = values_row(logged, total, wide)
            if weights is None:
                weights = self._call_weights.weights(self._constant_weights, vals, wide)
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

    def _combined_dtype(self, vals: list, total: Any) -> torch.dtype:
        """The dtype the terms' values (half precision already widened) promote to."""
        slots = self._term_slots
        if not slots:
            return total.dtype
        dtype = vals[slots[0]].dtype
        for s in slots[1:]:
            other = vals[s].dtype
            if other is not dtype:
                dtype = torch.promote_types(dtype, other)
        return dtype

    def _linear_call(self, lin, env: Env) -> tuple[list, Tensor, Tensor]:
        """The terms, then ``total = dot(weights, terms) + offset`` (see ``lossdsl/linear.py``)."""
        vals = list(self._blank)
        runs = self._runs
        for s in lin.runs:
            vals[s] = runs[s](vals, env)
        stacked = torch.stack([vals[s] for s in lin.terms])  # half precision arrives as float32
        total, weights = self._call_weights.linear_total(self._constant_weights, lin, vals, stacked)
        return vals, total, weights

    # --- the step -------------------------------------------------------------------------

    def _store_step(self, step: Any) -> None:
        if type(step) is not int or not 0 <= step < STEP_LIMIT:
            step = checked_step(step)
        self.step.fill_(step)
        if not torch.compiler.is_compiling() and self._step_watch is not None:
            self.__dict__["_step_watch"] = None

    def _count_stepless_call(self) -> None:
        """Warn once when training calls run schedules that no step was ever given to."""
        if torch.compiler.is_compiling() or not (self.training and torch.is_grad_enabled()):
            return
        watch = self._step_watch
        watch[0] += 1
        if watch[0] < 2:
            return
        self.__dict__["_step_watch"] = None
        # stacklevel: this method, forward, and nn.Module's two call wrappers, then the caller
        warnings.warn(stepless_warning(self._plan.schedules), UserWarning, stacklevel=5)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # .double()/.half() would round the float32 constant weights' buffer through another
        # dtype; keep it exact and float32, on the device it was moved to
        weights = self._buffers.get("_constant_weights")
        if weights is not None and weights.dtype != torch.float32:
            self._buffers["_constant_weights"] = constant_weights_of(self._plan).to(weights.device)
        self._call_weights.clear()
        return self

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
        """Set the stored optimizer step that the schedules read (see ``step=`` of the call).

        >>> import lossdsl
        >>> crit = lossdsl.compile("mse + linear(0, 1, steps=10)*mae")
        >>> crit.set_step(4)
        >>> int(crit.step)
        4
        """
        self._store_step(step)

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
        if prefix + "step" in state_dict:  # a resumed run has its step
            self.__dict__["_step_watch"] = None

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
        for key in ("_plan", "_runs", "_guard", "_call_weights"):
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
