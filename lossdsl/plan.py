"""Resolved program to straight-line code: a list of small closures, one per operation.

``forward`` runs the list in order, each closure appending one value; there is no tree walk
and no lookup by name per call. Effective weights ``d total / d term`` are compiled from the
same list once (``weights.py``), and a total that is a weighted sum of the terms is marked
for one dot product (``linear.py``).
"""

from __future__ import annotations

import difflib
import inspect
import weakref
from dataclasses import dataclass
from typing import Any, Callable

from . import ir, ops
from .errors import LossDSLError, LossInputError
from .terms._common import check_same_shape, upcast
from .linear import LinearTotal, linear_total
from .resolve_facts import operands
from .weights import WeightProgram, power, prepare_weights

__all__ = ["Plan", "build_plan", "Env", "shared_plan", "read_path", "missing_input", "unreadable_input"]


class Env:
    """The inputs of one ``forward`` call."""

    __slots__ = ("pred", "target", "inputs", "step", "guarded", "_residual", "low", "n_low")

    def __init__(self, pred, target, inputs, step) -> None:
        self.pred, self.target, self.inputs, self.step = pred, target, inputs, step
        self.guarded = None  # terms run under nonfinite="zero_term"/"skip_batch" (nonfinite.py)
        self._residual = None
        # half-precision term values enter the combination in float32 (runners.py): their
        # dtype, and how many there were, give the dtype the total is returned in
        self.low = None
        self.n_low = 0

    def residual(self):
        """``pred - target`` (half precision in float32), computed once per call for every
        term that has a residual form (``terms._common.residual_form``)."""
        e = self._residual
        if e is None:
            check_same_shape(self.pred, self.target)
            p, t = upcast(self.pred, self.target)
            e = self._residual = p - t
        return e


@dataclass
class Instr:
    """One operation: ``run(vals, env)`` returns the value of slot ``slot``."""

    slot: int
    run: Callable[[list, Env], Any]
    args: tuple[int, ...] = ()
    fn: str | None = None  # an operation of lossdsl.ops (for the weight sweep), else None
    params: dict | None = None
    balancer: int | None = None  # index into Loss.balancers
    kind: str = "op"  # "const", "term", "schedule", "balance" or "op"


@dataclass
class Plan:
    instrs: list[Instr]
    root: int
    logged_slots: list[int]
    logged_names: list[str]
    logged_items: list[Any]
    const_slots: dict[int, float]
    constant_weights: list[float] | None  # None: the weights depend on the values
    adjoint_order: list[Instr]  # instrs the weight sweep visits, last first
    balancers: list[ir.Balance]
    schedules: list[ir.Schedule]
    weight_program: WeightProgram | None = None  # weights that depend on the values
    constant_weights_tensor: Any = None  # made once, shared by the modules (Loss)
    linear: LinearTotal | None = None  # the total as one dot product, when it is one


def build_plan(resolved: ir.Resolved, *, make_term_runner, make_schedule_runner) -> Plan:
    """Lay the resolved program out as straight-line code.

    ``make_term_runner(term) -> run(vals, env)`` and ``make_schedule_runner(schedule)`` come
    from the module, which owns input routing and the step.
    """
    builder = _Builder(make_term_runner, make_schedule_runner)
    try:
        root = builder.emit(resolved.root)
    except LossDSLError as err:
        raise err.located(resolved.source, err.span) from None
    logged_slots = [builder.slot_of[id(item)] for item in resolved.logged]
    plan = Plan(
        instrs=builder.instrs,
        root=root,
        logged_slots=logged_slots,
        logged_names=[item.name for item in resolved.logged],
        logged_items=list(resolved.logged),
        const_slots=builder.consts,
        constant_weights=None,
        adjoint_order=[],
        balancers=builder.balancers,
        schedules=builder.schedules,
    )
    prepare_weights(plan)
    plan.linear = linear_total(plan)
    return plan


# Plans shared by the modules compiled from one resolved program (which compile caches), so
# compiling the same text again does not lay it out again. Weak keys: a program dropped from
# the resolve cache takes its plans with it.
_SHARED_PLANS: "weakref.WeakKeyDictionary[ir.Resolved, dict]" = weakref.WeakKeyDictionary()


def shared_plan(resolved: ir.Resolved, key: Any, build: Callable[[], Plan]) -> Plan:
    """``build()``'s plan for ``resolved``, built once per ``key`` (e.g. the non-finite policy
    the runners depend on). A plan with balancers is never shared: the module binds its own
    balancer modules into the instructions."""
    per_key = _SHARED_PLANS.get(resolved)
    plan = None if per_key is None else per_key.get(key)
    if plan is None:
        plan = build()
        if not plan.balancers:
            _SHARED_PLANS.setdefault(resolved, {})[key] = plan
    return plan


_KINDS = {ir.Const: "const", ir.Term: "term", ir.Schedule: "schedule", ir.Balance: "balance"}


class _Builder:
    def __init__(self, make_term_runner, make_schedule_runner) -> None:
        self.instrs: list[Instr] = []
        self.slot_of: dict[int, int] = {}
        self.consts: dict[int, float] = {}
        self.balancers: list[ir.Balance] = []
        self.schedules: list[ir.Schedule] = []
        self.make_term_runner = make_term_runner
        self.make_schedule_runner = make_schedule_runner

    def _add(self, node, run, args=(), fn=None, params=None, balancer=None) -> int:
        slot = len(self.instrs)
        kind = _KINDS.get(type(node), "op")
        self.instrs.append(Instr(slot, run, tuple(args), fn, params, balancer, kind))
        self.slot_of[id(node)] = slot
        return slot

    def emit(self, root) -> int:
        """Lay out ``root`` and everything it is computed from, operands first (in source
        order), each node once; iterative, so no depth of program can exhaust the stack."""
        done = self.slot_of
        stack = [(root, False)]
        while stack:
            node, ready = stack.pop()
            if id(node) in done:
                continue
            if not ready:
                stack.append((node, True))
                stack.extend((child, False) for child in reversed(operands(node)))
                continue
            self._one(node)
        return done[id(root)]

    def _slot(self, node) -> int:
        return self.slot_of[id(node)]  # operands are laid out before the nodes that use them

    def _one(self, node) -> int:
        if isinstance(node, ir.Const):
            value = node.value
            slot = self._add(node, lambda vals, env, v=value: v)
            self.consts[slot] = value
            return slot
        if isinstance(node, ir.Term):
            return self._add(node, self.make_term_runner(node))
        if isinstance(node, ir.Schedule):
            self.schedules.append(node)
            return self._add(node, self.make_schedule_runner(node))
        if isinstance(node, ir.Named):
            inner = self._slot(node.value)
            return self._add(node, lambda vals, env, i=inner: vals[i], (inner,), "named", {})
        if isinstance(node, ir.Balance):
            args = list(map(self._slot, node.args))
            index = len(self.balancers)
            self.balancers.append(node)
            return self._add(node, None, args, None, None, balancer=index)
        if isinstance(node, ir.Apply):
            return self._apply(node)
        raise TypeError(f"cannot compile {type(node).__name__}")

    def _apply(self, node: ir.Apply) -> int:
        params = dict(node.params)
        if node.fn == "sum":
            # watch(...) adds exactly 0: keep its term computed but leave it out of the sum.
            slots = list(map(self._slot, node.args))
            kept = [(s, slot) for s, a, slot in zip(params["signs"], node.args, slots) if not _is_watch(a)]
            if len(kept) == 1 and kept[0][0] > 0:
                inner = kept[0][1]
                return self._add(node, lambda vals, env, i=inner: vals[i], (inner,), "named", {})
            if not kept:
                return self._add(node, lambda vals, env: 0.0)
            params = {"signs": tuple(s for s, _ in kept)}
            args = [slot for _, slot in kept]
        else:
            args = list(map(self._slot, node.args))
        run = _op_runner(node.fn, args, params)
        return self._add(node, run, args, node.fn, params)


def _is_watch(node) -> bool:
    return isinstance(node, ir.Apply) and node.fn == "watch"


def _op_runner(fn: str, args: list[int], params: dict):
    # Specialised closures for the common shapes keep the per-call cost at one Python call.
    if fn == "sum" and len(args) == 2:
        (i, j), (si, sj) = args, params["signs"]
        if si > 0 and sj > 0:
            return lambda vals, env: vals[i] + vals[j]
        if si > 0:
            return lambda vals, env: vals[i] - vals[j]
    if fn == "product" and len(args) == 2:
        i, j = args
        if params["ops"][0] == "*":
            return lambda vals, env: vals[i] * vals[j]
        return lambda vals, env: ops.divide(vals[i], vals[j])
    if fn == "product" and len(args) > len(set(args)) + _REPEATS_WORTH_POWERS:
        return _powers_runner(args, params["ops"])
    return lambda vals, env: ops.apply(fn, [vals[a] for a in args], params)


# A product that repeats operands this many times more than it has distinct ones
# (`a*a*...*a`, a binding used thousands of times) runs as powers: one operation per distinct
# operand instead of one per operand. Shorter products run as written.
_REPEATS_WORTH_POWERS = 8


def _powers_runner(args: list[int], ops_: tuple[str, ...]):
    """``prod x_s^m_s / prod x_s^d_s`` (``m_s``, ``d_s``: how often ``x_s`` multiplies and
    divides); numerator and denominator apart, so that ``0/0`` stays NaN as written."""
    up: dict[int, int] = {}
    down: dict[int, int] = {}
    for slot, op in zip(args, ("*",) + tuple(ops_)):
        side = up if op == "*" else down
        side[slot] = side.get(slot, 0) + 1
    head, *rest = [(s, m) for s, m in up.items()]
    below = list(down.items())

    def run(vals, env):
        out = power(vals[head[0]], head[1])
        for s, m in rest:
            out = out * power(vals[s], m)
        for s, d in below:
            out = out / power(vals[s], d)
        return out

    return run


def missing_input(term: ir.Term, param: str, path: tuple[str, ...], env: Env | None = None) -> LossInputError:
    """The error for a required input the call did not give; with ``env``, a nested path
    (``out.seg``) says where it broke off, what is there, and the nearest name."""
    where = ".".join(path)
    why, cause = "but the call did not give it", None
    if path == (param,) and param in ("pred", "target"):
        how = f"call the loss as crit({'pred, target' if param == 'target' else 'pred'}, ...)"
    elif len(path) == 1 or env is None or _head(env, path[0]) is None:
        how = f"pass {path[0]}=... to the loss call"
    else:
        try:
            why, how, cause = _broken_path(_head(env, path[0]), path)
        except Exception as err:  # the objects read differently this time: say what raised
            why, cause = f"but reading it raised {type(err).__name__}: {err}", err
            how = f"check the object passed as {path[0]}=..."
    error = LossInputError(
        f"term '{term.name}' needs input '{where}' for its '{param}', {why}",
        span=term.span,
        hint=how,
        term=term.name,
    )
    error.__cause__ = cause
    return error


def unreadable_input(term: ir.Term, param: str, path: tuple[str, ...], err: Exception) -> LossInputError:
    """The error for an input whose reading raised (a property or ``__getattr__`` of the
    object given to the call); raise it ``from err``."""
    return LossInputError(
        f"term '{term.name}' could not read its input '{'.'.join(path)}' for its '{param}': "
        f"{type(err).__name__}: {err}",
        span=term.span,
        hint=f"reading '{'.'.join(path)}' from the object passed as {path[0]}=... raised; "
        "input references read mapping keys and public attributes, so check that property "
        "or __getattr__",
        term=term.name,
    )


def _head(env: Env, head: str):
    if head == "pred":
        return env.pred
    if head == "target":
        return env.target
    return env.inputs.get(head)


def _is_mapping(value) -> bool:
    return isinstance(value, dict) or hasattr(value, "keys") and hasattr(value, "__getitem__")


def _child(value, part: str):
    """``value[part]`` of a mapping, else the public attribute; None when absent."""
    if _is_mapping(value):
        return value[part] if part in value else None
    return getattr(value, part, None)


def read_path(env: Env, path: tuple[str, ...]):
    """Follow an input reference: mapping keys or public attributes, never private names.

    Returns None where the path breaks off; what the objects raise while being read
    propagates (the term runner reports it, see :func:`unreadable_input`).
    """
    value = _head(env, path[0])
    for part in path[1:]:
        if value is None:
            return None
        if part.startswith("_"):
            # resolve refuses these when compiling; refuse here too, whatever built the path
            raise LossInputError(
                f"input reference '{'.'.join(path)}' reads a private name '{part}'",
                hint="input references read mapping keys or public attributes only",
            )
        value = _child(value, part)
    return value


def _broken_path(value, path: tuple[str, ...]) -> tuple[str, str, Exception | None]:
    """(why, hint, cause) for a nested path that reads None: the first part that is absent
    (or None), the names that are there and the nearest of them."""
    for i, part in enumerate(path[1:], 1):
        have = ".".join(path[:i])
        mapping = _is_mapping(value)
        child = _child(value, part)
        if child is not None:
            value = child
            continue
        kind = "key" if mapping else "attribute"
        names = _names(value, mapping)
        if not mapping:
            try:  # a property that raised AttributeError reads as absent: say so
                inspect.getattr_static(value, part)
                getattr(value, part)
            except Exception as err:
                if hasattr(type(value), part):
                    return f"but reading '{have}.{part}' raised {type(err).__name__}: {err}", (
                        f"the property '{part}' of the object passed as {path[0]}=... raised"
                    ), err
        if part in names:
            return f"but '{have}.{part}' is None", f"give '{have}' a value for '{part}'", None
        shown = ", ".join(repr(n) for n in names[:12]) + (", ..." if len(names) > 12 else "")
        listing = f"'{have}' has the {kind}s {shown}" if names else f"'{have}' has no {kind}s"
        close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
        hint = (f"did you mean '{have}.{close[0]}'? " if close else "") + listing
        return f"but '{have}' has no {kind} '{part}'", hint, None
    return "but it is None", f"give '{'.'.join(path)}' a value", None


def _names(value, mapping: bool) -> list[str]:
    """The keys of a mapping, or the public data attributes of an object (its own, its
    properties, dataclass and namedtuple fields), without running any of them."""
    try:
        if mapping:
            return [k for k in value.keys() if isinstance(k, str)]
        own = [n for n in getattr(value, "__dict__", {}) if not n.startswith("_")]
        fields = list(getattr(value, "_fields", ())) + list(getattr(value, "__dataclass_fields__", {}))
        props = [
            n for n in dir(type(value))
            if not n.startswith("_") and isinstance(inspect.getattr_static(type(value), n, None), property)
        ]
    except Exception:  # an object that will not even list its names
        return []
    return sorted(set(own + fields + props))
