"""IR to a ``torch.fx`` graph: one node per operation, in one pass over :func:`~lossdsl.resolve.ir.walk`.

The graph's ``forward(pred, target, inputs, step, balancers)`` returns ``(total, values,
weights)``: the loss, the raw value of every logged item, and the effective weights (or
``None`` when they are constants, kept in the program's metadata). Operations of the function
table record themselves (a torch function becomes a ``call_function`` node, a rule written
with operators becomes its operators); a term, an input path and a schedule are called
through the objects of :mod:`~lossdsl.program.bound` and :mod:`~lossdsl.runtime`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx
from torch.fx.proxy import GraphAppendingTracer, Proxy

from ..language import algebra
from ..language.lazy import resolve as resolve_lazy
from ..language.schedules import Schedule
from ..resolve import ir
from ..resolve.calls import is_condition
from ..runtime.guard import GATED_POLICIES, Gate, entry_views, gate_values, settle
from ..runtime.precision import as_number, half_again, list_tensor, narrow, number_tensor, weight_vector, widen
from ..runtime.steps import ScheduleValue, scalar_tensor
from .sums import addends, weighted_sum
from .bound import BoundTerm, InputReader, Residual, ResidualTerm, identifier, reads_residual
from .weights import sweep, whole_vector

__all__ = ["Emitted", "emit", "run_balancer"]


def run_balancer(balancers: Any, index: int, values: list, ok: Any = None, *shared: Any) -> tuple:
    """Call balancer ``index`` of the loss on the term values: ``(total, weights)``. A method
    that reads the terms' gradients is also given the call input ``shared`` (§6.1)."""
    return balancers[index](values, ok, *shared)


def all_finite(*gated: Any) -> Any:
    """Whether every gated term of a balancer was finite in this call (a 0-dim bool tensor)."""
    ok = gated[0].ok
    for g in gated[1:]:
        ok = ok & g.ok
    return ok


class _Tracer(GraphAppendingTracer):
    """Records, on every node it makes, the IR operation it belongs to (for errors)."""

    def __init__(self, graph: fx.Graph) -> None:
        super().__init__(graph)
        self.meta: dict[str, Any] = {}

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta.update(self.meta)
        return node


@dataclass
class Emitted:
    """The graph and what the program needs to know about it."""

    graph: fx.Graph
    balancers: list[tuple[Any, int, dict]] = field(default_factory=list)  # (method, k, params)
    constant_weights: tuple[float, ...] | None = None
    schedules: list = field(default_factory=list)  # the schedule rows the program reads
    tensor_paths: tuple[tuple[str, ...], ...] = ()  # inputs read by tensor expressions


class _Emitter:
    def __init__(self, program: ir.IR, policy: str) -> None:
        self.ir, self.policy = program, policy
        self.graph = fx.Graph()
        self.tracer = _Tracer(self.graph)
        self.slots = {
            name: Proxy(self.graph.placeholder(name), self.tracer)
            for name in ("pred", "target", "inputs", "step", "balancers")
        }
        self.value: dict[int, Any] = {}  # what a node's consumers compute with
        self.raw: dict[int, Any] = {}  # what is logged (a gated term's raw value, widened)
        self.native: dict[int, Any] = {}  # a term's value in its own dtype (the total's dtype)
        self.readers: dict[tuple, Any] = {}
        self.gated: list[Any] = []
        self.gates: dict[int, Any] = {}  # id of a term -> its gated call
        self.residual: Any = None
        self.balance_weights: dict[int, Any] = {}
        self.out = Emitted(self.graph)
        self.names = {id(item.node): item.name for item in program.logged}
        self.index: dict[int, int] = {}  # id of an IR node -> its place in the walk
        self.scoped = False  # emitting an inline term's own copy (see _gated_inline)

    def call(self, target: Any, args: tuple, kwargs: dict | None = None, name: str | None = None) -> Proxy:
        return self.tracer.create_proxy("call_function", target, args, kwargs or {}, name=name)

    def convert(self, target: Any, args: tuple, name: str) -> Proxy:
        """A call that prepares an operand (a list or a condition as numbers): it takes the
        operation's place in the text but none of its broadcasting, which the strict check
        must not read off its arguments."""
        meta = self.tracer.meta
        self.tracer.meta = {**meta, "broadcasts": False}
        try:
            return self.call(target, args, name=name)
        finally:
            self.tracer.meta = meta

    def at(self, node: ir.Node) -> None:
        """The nodes recorded next belong to ``node`` (its place in the text, for errors)."""
        self.tracer.meta = {"ir_index": self.index[id(node)], "what": _describe(node), "broadcasts": _broadcasts(node)}

    def input(self, path: tuple[str, ...], required: bool = True) -> Any:
        if path in (("pred",), ("target",)):
            return self.slots[path[0]]
        reader = self.readers.get((path, required))
        if reader is None:
            name = identifier("_".join(path)) + ("" if required else "_or_none")
            reader = self.call(InputReader(path, required), (self.slots["inputs"],), name=name)
            self.readers[(path, required)] = reader
        return reader

    def run(self) -> Emitted:
        nodes = self.ir.nodes()
        self.index = {id(node): index for index, node in enumerate(nodes)}
        for node in nodes:
            self.at(node)
            self.emit(node)
        self.tracer.meta = {}
        root = self.ir.root
        total = self.value[id(root)]
        raws = tuple(self.raw.get(id(item.node), self.value[id(item.node)]) for item in self.ir.logged)
        natives = [self.native.get(id(item.node), self.value[id(item.node)]) for item in self.ir.logged if item.is_term]
        total = self.call(narrow, (total, *natives), name="total")
        if self.policy in GATED_POLICIES and self.gated:
            total = self.call(settle, (self.policy, total, self.gated), name="settled")
        weights = sweep(self, nodes, root)
        if all(algebra.is_number(w) for w in weights):
            self.out.constant_weights = tuple(float(w) for w in weights)
            weight_out = None
        else:
            # `balance(a, b)` at the top: its own weight vector is the program's
            whole = whole_vector(weights)
            if whole is None:
                weight_out = self.call(weight_vector, (total, *weights), name="weights")
            else:  # a copy: the balancer may keep (and later change) the tensor it returned
                weight_out = self.call(_copied, (whole,), name="weights")
        self.graph.output(fx.node.map_aggregate((total, raws, weight_out), _unwrap))
        # derivative rules compute every partial; those of numbers are never used
        self.graph.eliminate_dead_code()
        return self.out

    def emit(self, node: ir.Node) -> None:
        key = id(node)
        if isinstance(node, ir.Const):
            self.value[key] = node.value
        elif isinstance(node, ir.Term):
            self._term(node)
        elif isinstance(node, ir.Named):
            self.value[key] = self.value[id(node.value)]
            for table in (self.raw, self.native):
                if id(node.value) in table:
                    table[key] = table[id(node.value)]
        elif isinstance(node, ir.Balance):
            index = len(self.out.balancers)
            self.out.balancers.append((node.method, len(node.args), dict(node.params)))
            args = [self.value[id(a)] for a in node.args]
            gates = [self.gates[id(n)] for n in ir.walk(*node.args) if id(n) in self.gates]
            ok = self.call(all_finite, tuple(gates), name="terms_ok") if gates else None
            shared = (self.input(("shared",), required=False),) if node.method.gradients is not None else ()
            call_args = (self.slots["balancers"], index, args, ok, *shared)
            both = self.call(run_balancer, call_args, name=f"balance_{node.method.name}")
            self.value[key] = self.call(operator.getitem, (both, 0), name="balanced")
            weights = self.call(operator.getitem, (both, 1), name="balance_weights")
            weights.node.meta["entries"] = len(node.args)
            self.balance_weights[key] = weights
        elif isinstance(node, ir.Call) and isinstance(node.fn, Schedule):
            self.out.schedules.append(node.fn)
            self.value[key] = self.call(ScheduleValue(node.fn, dict(node.params)), (self.slots["step"],), name=node.fn.name)
        elif isinstance(node, ir.Call):
            self._function(node)
        elif isinstance(node, ir.Input):
            self.value[key] = self.input(node.path)
            self._shapes_matter(node.path)
        elif isinstance(node, ir.ListConst):
            pass  # made where it is used: in the dtype and on the device of what it meets
        else:  # pragma: no cover - every IR node type is handled above
            raise TypeError(f"cannot compile {type(node).__name__}")

    def _shapes_matter(self, path: tuple[str, ...]) -> None:
        """``path`` feeds a tensor expression: a call with new shapes there runs checked."""
        if path not in self.out.tensor_paths:
            self.out.tensor_paths += (path,)

    def _term(self, node: ir.Term) -> None:
        name = self.names.get(id(node), node.label)
        if node.kind == "tensor":  # an unreduced term's values meet tensor expressions
            for route in node.routes:
                if route.required:
                    self._shapes_matter(route.path)
        args = tuple(self.input(route.path, route.required) for route in node.routes)
        if reads_residual(node) and self.policy not in GATED_POLICIES:
            # the terms on e = pred - target share one e (a gated term needs its own inputs)
            if self.residual is None:
                self.residual = self.call(Residual(name), args[:2], name="residual")
            bound = ResidualTerm(node, name)
            args = (self.residual, args[0], *args[2:])
        else:
            bound = BoundTerm(node, name)
        if self.policy in GATED_POLICIES:
            gated = self.call(Gate(bound), args, name=f"gated_{identifier(name)}")
            self.gated.append(gated)
            self.gates[id(node)] = gated
            self.raw[id(node)] = self.call(widen, (gated.raw,), name=f"{identifier(name)}_raw")
            value = gated.value
        else:
            value = self.call(bound, args, name=identifier(name))
        if node.kind == "tensor":  # unreduced: values for a tensor expression, in the inputs' dtype
            self.value[id(node)] = self.call(half_again, (value, self.slots["pred"]), name=identifier(name))
            return
        # half-precision terms combine (and are reported) in float32; the total comes back in
        # the terms' own dtype (a residual term's is pred's: it computes in float32)
        self.native[id(node)] = self.slots["pred"] if isinstance(bound, ResidualTerm) else value
        self.value[id(node)] = self.call(widen, (value,), name=f"{identifier(name)}_wide")

    def _operand(self, node: ir.Node, siblings: tuple) -> Any:
        if not isinstance(node, ir.ListConst):
            return self.value[id(node)]
        like = next(
            (self.value[id(s)] for s in siblings if s.kind == "tensor" and not isinstance(s, ir.ListConst)),
            self.slots["pred"],
        )
        return self.convert(list_tensor, (node.values, like, self.slots["pred"]), name="list")

    def scalar(self, node: ir.Node) -> Any:
        """A schedule's value as a tensor (made once per value)."""
        key = ("tensor", id(node))
        if key not in self.value:
            self.value[key] = self.call(scalar_tensor, (self.value[id(node)],), name=f"{identifier(node.name)}_tensor")
        return self.value[key]

    def _weighted_sum(self, plan: list) -> Any:
        """A weighted sum of terms as one dot product (see :mod:`lossdsl.program.sums`)."""
        numbers, places, dynamic = [], [], []
        for i, (coefficient, _) in enumerate(plan):
            if isinstance(coefficient, float):
                numbers.append(coefficient)
                continue
            numbers.append(0.0)
            places.append(i)
            negated = isinstance(coefficient, tuple)
            value = self.value[id(coefficient[1] if negated else coefficient)]
            dynamic.append(self.call(operator.neg, (value,)) if negated else value)
        terms = [self.value[id(term)] for _, term in plan]
        return self.call(weighted_sum, (tuple(numbers), tuple(places), *dynamic, *terms), name="weighted_sum")

    def _gated_inline(self, node: ir.Call) -> None:
        """An inline term under ``zero_term``/``skip_batch``: its expression again, reading
        what comes from outside it (inputs, catalogue terms) through views of its own, so
        that the gate stops its gradient alone (a shared subexpression would mix it with
        the other terms' before the inputs)."""
        inner = ir.walk(node)
        entries = [n for n in inner if isinstance(n, (ir.Input, ir.Term))]
        opened = self.call(entry_views, tuple(self.value[id(n)] for n in entries), name="entries")
        outside, self.value = self.value, dict(self.value)
        self.scoped = True
        try:
            for i, n in enumerate(entries):
                self.value[id(n)] = self.call(operator.getitem, (opened.values, i), name="entry")
            for n in inner:
                self.at(n)
                if isinstance(n, ir.Call) and not isinstance(n.fn, Schedule) and n.kind in ("tensor", "loss"):
                    self._function(n)
                elif isinstance(n, ir.Named):
                    self.value[id(n)] = self.value[id(n.value)]
        finally:
            self.value, self.scoped = outside, False
        gated = self.call(gate_values, (self.native[id(node)], opened.views), name=f"gated_{identifier(node.name)}")
        self.gated.append(gated)
        self.gates[id(node)] = gated
        self.native[id(node)] = gated.value
        self.raw[id(node)] = self.call(widen, (gated.raw,), name=f"{identifier(node.name)}_raw")
        self.value[id(node)] = self.call(widen, (gated.value,), name=f"{identifier(node.name)}_wide")

    def _function(self, node: ir.Call) -> None:
        fn = node.fn
        if self.policy in GATED_POLICIES and not self.scoped and id(node) in self.names and any(
            a.kind == "tensor" for a in node.args
        ):
            self._gated_inline(node)
            return
        params = dict(node.params)
        plan = addends(node) if fn.name == "add" else None
        if plan is not None:
            self.value[id(node)] = self._weighted_sum(plan)
            return
        # A schedule's value is a Python number in an eager call: + - * and comparisons of
        # numbers are safe, anything else (a division, a power, a torch function) gets a tensor.
        safe = fn.name in ("add", "neg", "min", "max", "clamp") or fn.group == "comparison" or (
            fn.name == "multiply" and "/" not in params["ops"]
        )
        args = tuple(
            self.scalar(a) if a.kind == "schedule" and not safe else self._operand(a, node.args) for a in node.args
        )
        if fn.group != "logical":  # a condition in arithmetic counts as 0/1
            keep = 0 if fn.name == "where" else -1
            args = tuple(
                self.convert(as_number, (v, self.slots["pred"]), name="as_number") if i != keep and is_condition(a) else v
                for i, (a, v) in enumerate(zip(node.args, args))
            )
        if fn.name == "where" and node.kind == "tensor" and all(a.kind != "tensor" for a in node.args[1:]):
            # with no tensor beside them, numbers, schedules and losses (float32 for half
            # inputs) would set the dtype: they take the inputs'
            args = (args[0], *(self.convert(number_tensor, (v, self.slots["pred"]), name="number") for v in args[1:]))
        if fn.inline:
            if node.kind == "tensor" and fn.name in ("add", "multiply"):
                params["fold"] = False  # x * 1.0 of class indices is floats, as in torch
            out = fn.run(*args, **params)
        else:
            out = self.call(resolve_lazy(fn.run), args, params, name=identifier(fn.name))
        if node.kind == "loss" and any(a.kind == "tensor" for a in node.args):
            self.native[id(node)] = out  # an inline term: combined (and logged) in float32+
            out = self.call(widen, (out,), name=f"{identifier(fn.name)}_wide")
        self.value[id(node)] = out


def _copied(x: Any) -> Any:
    return x.detach().clone()


def _describe(node: ir.Node) -> str:
    """An operation in the user's words, for errors at call time."""
    if isinstance(node, ir.Term):
        return f"term '{node.label}'"
    if isinstance(node, ir.Call):
        return f"{node.name}(...)"
    return type(node).__name__.lower()


def _broadcasts(node: ir.Node) -> bool:
    return isinstance(node, ir.Call) and getattr(node.fn, "broadcasts", False) and node.kind == "tensor"


def _unwrap(x: Any) -> Any:
    return x.node if isinstance(x, Proxy) else x


def emit(program: ir.IR, policy: str) -> Emitted:
    """The graph of ``program`` under the non-finite ``policy``."""
    return _Emitter(program, policy).run()
