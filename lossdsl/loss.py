"""``Loss``: a compiled program as one differentiable ``torch.nn.Module`` (DESIGN.md §4).

The ``Loss`` owns the state of a run: the stored step, the balancers, the monitor and the
non-finite policy. It runs the shared :class:`~lossdsl.program.Program` and keeps what the
last call saw for ``terms`` and ``weights``.

>>> import torch, lossdsl
>>> crit = lossdsl.compile("0.7*huber(delta=1) + 0.3*temporal_diff")
>>> pred = torch.randn(4, 8, 2, requires_grad=True)
>>> loss = crit(pred, torch.randn(4, 8, 2))
>>> loss.backward()
>>> sorted(crit.terms), round(crit.weights["huber"].item(), 6)
(['huber', 'temporal_diff'], 0.7)
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .errors import LossDSLError, location
from .monitor import CallInputs, Monitor
from .monitor.gradients import reporter
from .program import Program, build_program
from .resolve import ir
from .resolve.logged import operand_names
from .resolve.places import locate, spans_by_name
from .resolve.rewrite import rewriter
from .runtime.balancer import Balancer
from .runtime.gradients import refuse_plain_backward
from .runtime.jacobian import aggregated_backward, cut_tensors
from .runtime.guard import CHECKED_POLICIES, POLICIES, bad_counts, nonfinite_error, ranks_deciding
from .runtime.inputs import devices_error, missing_input, read_path, unread_error
from .runtime.precision import values_row
from .runtime.state import check_keys, check_program, check_shapes
from .runtime.step_check import STEP_LIMIT, StepWatch, checked_step

__all__ = ["Loss"]

_STATE_VERSION = 2
logger = logging.getLogger("lossdsl")


class LastCall:
    """What the last call left for ``crit.terms`` and ``crit.weights``: the row of raw values
    (and the total) and the weights, both detached. A plain object: a call updates it
    without going through ``nn.Module.__setattr__``'s checks."""

    __slots__ = ("row", "weights")

    def __init__(self) -> None:
        self.row: Tensor | None = None
        self.weights: Tensor | None = None


class Loss(nn.Module):
    """A compiled loss program. Build one with :func:`lossdsl.compile`.

    ``forward(pred=None, target=None, *, step=None, **inputs)`` returns a 0-dim tensor.
    After a call, ``terms`` holds each term's raw value and ``weights`` its effective weight
    ``d total / d term``; ``monitor`` keeps running statistics.

    >>> import torch, lossdsl
    >>> crit = lossdsl.compile("mse + linear(0, 1, steps=10)*mae")
    >>> _ = crit(torch.zeros(2), torch.ones(2), step=5)
    >>> {name: round(w.item(), 2) for name, w in crit.weights.items()}
    {'mse': 1.0, 'mae': 0.5}
    """

    def __init__(self, resolved: ir.IR, program: Program, *, strict: bool = True, nonfinite: str = "raise") -> None:
        super().__init__()
        if nonfinite not in POLICIES:
            raise LossDSLError(
                f"unknown nonfinite policy {nonfinite!r}", hint="use one of " + ", ".join(repr(p) for p in POLICIES)
            )
        self.source = resolved.source
        self.canonical = resolved.canonical
        self.strict = bool(strict)
        self.nonfinite = nonfinite
        self.program = program
        self.ir = resolved
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.balancers = nn.ModuleList(Balancer(method, k, params) for method, k, params in program.balancers)
        self.monitor = Monitor(program.names, program.is_term, program.inputs_read, rewriter(resolved))
        self._last = LastCall()
        self._constant = {}  # (dtype, device) -> the constant weights as a tensor
        self._shapes_seen: set = set()  # shapes of tensor-expression inputs already checked
        self._watch = StepWatch(program.schedules)
        self._aggregating = self._wire_gradient_balancers(resolved)
        self._held = None  # an aggregating program's last training call, for backward()
        self._backward_open = False

    @property
    def term_names(self) -> list[str]:
        """The keys of :attr:`terms`: the terms and named composites, in source order."""
        return list(self.program.names)

    @property
    def graph(self) -> torch.fx.Graph:
        """The program's ``torch.fx`` graph (``print(crit.graph)``, ``lossdsl explain --graph``)."""
        return self.program.graph

    # --- the call -------------------------------------------------------------------------

    def forward(self, pred: Any = None, target: Any = None, *, step: Any = None, **inputs: Any) -> Tensor:
        """The total of one call, 0-dim. ``inputs``: what the program reads besides ``pred``
        and ``target`` (with ``strict``, one it does not read is an error); ``step``: the
        optimizer step, stored for the schedules. A bad input is a ``LossInputError``.

        >>> import torch, lossdsl
        >>> crit = lossdsl.compile("mse(weight=w)")
        >>> crit(torch.zeros(2), torch.ones(2), w=torch.tensor([1.0, 3.0]))
        tensor(2.)
        """
        if self.step.is_meta:  # moved to meta whole: a real call starts the step anew on its device
            self._step_anew(pred, target, inputs)
        if step is not None:
            self._store_step(step)
        elif self._watch.calls is not None:
            self._watch.missing(self.training)
        if inputs and self.strict:
            unread = inputs.keys() - self.program.inputs_read
            if unread:
                raise unread_error(sorted(unread), sorted(self.program.inputs_read - {"pred", "target"}))
        args = (pred, target, inputs, self.step, self.balancers)
        total, values, weights = self._run(args)
        try:
            row, finite = values_row(values, total)
        except RuntimeError as err:  # terms on two devices meet here first
            raise self._devices_error(args) or err
        if weights is None:
            weights = self._constant_weights(row)
        last = self._last
        last.row, last.weights = row, weights
        if self._aggregating:
            self._hold(total, values, weights)
        monitor = self.monitor
        if monitor.enabled:
            monitor.record(row, weights, self.step, values, CallInputs(pred, target, inputs))
        if self.nonfinite in CHECKED_POLICIES:
            self._check(row, finite)  # after recording: a call that raises still shows in the logs
        return total

    def _run(self, args: tuple) -> tuple:
        """The program's outputs; an error names the term or the operation and its place."""
        # the checked run interprets the graph node by node, which torch.compile cannot
        # trace: compiled calls run the graph as it is (README, "Shapes and gradients")
        checks = bool(self.program.tensor_paths) and not torch.compiler.is_compiling()
        if checks and (args[0] is None or args[1] is None):
            self._refuse_missing_tensor(args[0], args[1])
        try:
            signature = self._new_shapes(*args[:3]) if checks else None
            if signature is not None:
                outputs = self.program.checked_run(self.strict).run(*args)
                if len(self._shapes_seen) < 64:  # seen once they passed: a refused call refuses again
                    self._shapes_seen.add(signature)
                return outputs
            return self.program.forward(*args)
        except LossDSLError as err:
            error = err
            if checks and err.span is None and err.term is None and getattr(err, "node_index", None) is None:
                error = self._checked_error(args) or err  # the checked run knows the node
        except Exception:
            # the checked run names the operation, its place and shapes; inputs on two devices
            # meet where no operation of the text stands (the sum of the terms)
            error = (self._checked_error(args) if checks else None) or self._devices_error(args)
            if error is None:
                raise
        located = locate(error, self.ir)
        raise located from located.__cause__

    def _devices_error(self, args: tuple) -> LossDSLError | None:
        error = devices_error(args[:3])  # the whole program meets them: the caret under all of it
        return None if error is None else error.located(self.source, self.ir.root.span, None)

    def _refuse_missing_tensor(self, pred: Any, target: Any) -> None:
        """``pred`` or ``target`` left out of a call although an expression reads it."""
        for name, value in (("pred", pred), ("target", target)):
            reader = self.ir.reader_of((name,)) if value is None else None
            if reader is not None and reader[1] is None:  # (a term that reads it says so itself)
                raise missing_input(None, name, None).located(self.source, reader[0].span, None)

    def _checked_error(self, args: tuple) -> LossDSLError | None:
        try:
            self.program.checked_run(False).run(*args)
        except LossDSLError as err:
            return err
        except Exception:  # outside the text's operations: the caller says what it can
            return None
        return None

    def _new_shapes(self, pred: Any, target: Any, inputs: Mapping[str, Any]) -> tuple | None:
        """The shapes of the tensors that tensor expressions read, when not seen before (the
        first call with them runs checked); None when seen."""
        given = {"pred": pred, "target": target, **inputs}
        signature = tuple(getattr(read_path(given, path), "shape", None) for path in self.program.tensor_paths)
        return None if signature in self._shapes_seen else signature

    def _constant_weights(self, like: Tensor) -> Tensor:
        dtype = torch.float32 if like.dtype in (torch.float16, torch.bfloat16) else like.dtype
        key = (dtype, like.device)
        found = self._constant.get(key)
        if found is None:
            with torch.inference_mode(False):  # kept across calls: never an inference tensor
                found = torch.tensor(self.program.constant_weights, dtype=dtype, device=like.device)
            if not torch.compiler.is_compiling():
                self._constant[key] = found
        return found

    def _check(self, row: Tensor, finite: bool | None) -> None:
        """``raise``/``warn``: one flag read per call (one all-reduce of the flags on a
        ``raise`` training call across ranks); nothing on ``meta`` or while tracing."""
        if row.device.type == "meta" or torch.compiler.is_compiling():
            return
        ranks = ranks_deciding(self.nonfinite, self.training)
        if ranks == 1 and (finite if finite is not None else bool(torch.isfinite(row).all())):
            return
        counts = bad_counts(row, ranks)
        if not any(counts):
            return
        names, spans = self.program.names, spans_by_name(self.ir)

        def where(i: int) -> str:
            span = spans.get(names[i])
            if span is None:
                return ""
            line, column = location(self.source, span[0])
            return f" (line {line}, column {column})"

        error = locate(
            nonfinite_error(row, names, self.program.is_term, int(self.step), counts, ranks, where), self.ir
        )
        if self.nonfinite == "warn":
            logger.warning("%s", error)
            return
        raise error

    # --- what the last call saw -----------------------------------------------------------

    @property
    def terms(self) -> dict[str, Tensor]:
        """Raw (unweighted) value of every term and named composite of the last call, detached."""
        row = self._last.row
        return {} if row is None else dict(zip(self.program.names, row[:-1].unbind(0)))

    @property
    def weights(self) -> dict[str, Tensor]:
        """Effective weight ``d total / d term`` of every term in the last call."""
        weights = self._last.weights
        if weights is None:
            if self.program.constant_weights is None:
                return {}
            weights = self._constant_weights(torch.zeros(()))
        return dict(zip(self.program.names, weights.unbind(0)))

    def set_step(self, step: int) -> None:
        """Set the stored optimizer step that schedules read (as ``crit(..., step=step)``).

        >>> import lossdsl
        >>> crit = lossdsl.compile("linear(0, 1, steps=4)*mse")
        >>> crit.set_step(3); int(crit.step)
        3
        """
        self._store_step(step)

    # --- balancing gradients (§6.1) --------------------------------------------------------

    def _wire_gradient_balancers(self, resolved: ir.IR) -> bool:
        """Give each balancer its place in the text, and each gradient balancer its reports
        to the monitor; whether the program has an aggregator (it needs ``backward()``)."""
        nodes = [n for n in resolved.nodes() if isinstance(n, ir.Balance)]  # the balancers' order
        groups = []
        for balancer, node in zip(self.balancers, nodes):
            balancer.span = node.span
            if node.method.gradients is not None:
                balancer.report = reporter(self.monitor, len(groups))
                groups.append(operand_names(node, resolved.logged))
        if groups:
            self.monitor.gradients.track(groups)
        return any(node.method.gradients == "aggregate" for node in nodes)

    def _hold(self, total: Tensor, values: Any, weights: Tensor) -> None:
        pending = [(b, b.__dict__.pop("pending")) for b in self.balancers if "pending" in b.__dict__]
        if pending:  # a training call: kept for backward(), and loss.backward() refused
            self._held = (total, list(values), weights, pending)
            total.register_hook(self._refuse_plain_backward)

    def _refuse_plain_backward(self, grad: Tensor) -> None:
        if not self._backward_open:
            first = next(b for b in self.balancers if b.method.gradients == "aggregate")
            raise locate(refuse_plain_backward(first.method.name, first.span), self.ir)

    def backward(self, shared: Any = None, *, features: Any = None, retain_graph: bool = False) -> None:
        """Back-propagate the last training call of a program whose ``balance(...)`` aggregates
        gradients (``method="upgrad"``, ...), in place of ``loss.backward()``.

        ``shared`` (a module or an iterable of parameters; default: the ``shared=`` given to the
        call): exact, one Jacobian row per term over the shared parameters, aggregated; every
        other parameter gets the gradient of the plain sum of the terms, and terms outside the
        balance add their ordinary gradient. ``features`` (the shared part's output ``h``):
        cheaper, the Jacobian with respect to ``h`` is aggregated and back-propagated once.
        Afterwards ``weights`` holds the weights the aggregator gave each term.

        >>> import torch, lossdsl
        >>> w = torch.tensor([1.0, 1.0], requires_grad=True)
        >>> crit = lossdsl.compile('balance(mse(pred=a), mse(pred=b), method="mean")')
        >>> _ = crit(a=w[0] * torch.ones(1), b=-w[1] * torch.ones(1), target=torch.zeros(1))
        >>> crit.backward(shared=[w])
        >>> w.grad.tolist(), crit.weights["mse"].item()
        ([1.0, 1.0], 0.5)
        """
        held = self._held
        if held is None:
            raise LossDSLError(
                "backward() has no training call to back-propagate" if self._aggregating else
                "backward() is for programs whose balance(...) aggregates gradients",
                hint="call the loss in training mode with gradients enabled, then crit.backward(shared=...)"
                if self._aggregating else "back-propagate this loss with loss.backward()",
            )
        total, values, weights, pending = held
        self._backward_open = True
        try:
            cut = cut_tensors(pending, shared, features)
            aggregated_backward(total, pending, cut, features is not None, values, weights, retain_graph)
        except LossDSLError as err:  # a bad cut or a solver's failure: with the balancer's place
            raise locate(err, self.ir) from err.__cause__
        finally:
            self._backward_open = False
        self._last.weights = weights  # the aggregator's, though a validation call came in between
        if not retain_graph:
            self._held = None

    # --- the step -------------------------------------------------------------------------

    def _store_step(self, step: Any) -> None:
        if type(step) is not int or not 0 <= step < STEP_LIMIT:
            step = checked_step(step)
        if isinstance(step, Tensor):
            self.step.copy_(step)
        else:
            self.step.fill_(step)
        self._watch.given()

    def _step_anew(self, pred: Any, target: Any, inputs: Mapping[str, Any]) -> None:
        given = (pred, target, *inputs.values())
        device = next((t.device for t in given if isinstance(t, Tensor) and not t.is_meta), None)
        if device is not None:
            self.step = torch.zeros((), dtype=torch.long, device=device)

    def _apply(self, fn, recurse: bool = True):
        from_meta = self.step.is_meta
        super()._apply(fn, recurse)
        if from_meta and not self.step.is_meta:  # to_empty(): what was on meta held no numbers
            self.step = torch.zeros_like(self.step)
            for balancer in self.balancers:
                balancer.restart()
        return self

    # --- state ----------------------------------------------------------------------------

    def get_extra_state(self) -> dict:
        return {"source": self.canonical, "version": _STATE_VERSION}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a state of ``state_dict``; one that does not fit (another program, a missing key
        under ``strict``, another shape) is a ``LossDSLError`` before anything is copied.

        >>> import lossdsl; crit = lossdsl.compile("mse + mae")
        >>> crit.load_state_dict(crit.state_dict())
        <All keys matched successfully>
        """
        check_keys(self, state_dict, self.canonical, strict)
        return super().load_state_dict(state_dict, strict, assign)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checked before anything is copied (nn.Module copies, then checks): nothing changes
        check_shapes(self, state_dict, prefix, self.canonical)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "step" in state_dict:  # a resumed run has its step
            self._watch.given()

    def set_extra_state(self, state: Any) -> None:
        check_program(state, self.canonical)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["program"] = None  # generated code: rebuilt from the IR when loaded
        state["_held"] = None  # a call's graph is not part of the loss
        state["_constant"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.program = build_program(self.ir, self.nonfinite)

    def extra_repr(self) -> str:
        return f"{self.source!r}, nonfinite={self.nonfinite!r}, strict={self.strict}"
