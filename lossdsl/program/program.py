"""The compiled form of a loss: a ``torch.fx`` graph generated from the IR, and what the
``Loss`` needs to know about it (DESIGN.md §2).

A :class:`Program` is built once per canonical source and non-finite policy and shared by
every ``Loss`` compiled from it; it holds no state (the step, the balancers and the monitor
live in the ``Loss``). Its generated ``forward`` is straight-line code:

>>> import lossdsl
>>> code = lossdsl.compile("0.7*huber + 0.3*mse").program.code
>>> [line.split(" = ")[0].strip() for line in code.strip().splitlines()[1:7]]
['weight_or_none', 'mask_or_none', 'huber', 'huber_wide', 'mul', 'mse']
"""

from __future__ import annotations

import operator
from numbers import Number
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from ..errors import LossDSLError, LossInputError
from ..resolve import ir
from ..runtime.inputs import Absent, missing_input
from .emit import emit

__all__ = ["Program", "build_program", "CheckedRun", "both_enlarged"]


class Program:
    """A compiled loss program.

    ``forward(pred, target, inputs, step, balancers) -> (total, values, weights)``: the loss,
    the raw value of every logged item, and the weights as one tensor (``None`` when they are
    the constants in :attr:`constant_weights`). ``balancers``: ``(method, k, params)`` of each
    ``balance(...)``, for the ``Loss`` to make their modules.
    """

    def __init__(self, resolved: ir.IR, policy: str) -> None:
        emitted = emit(resolved, policy)
        self.module = fx.GraphModule(torch.nn.Module(), emitted.graph, class_name="LossProgram")
        self.forward = self.module.forward
        self.names = resolved.names()
        self.is_term = [item.is_term for item in resolved.logged]
        self.balancers = emitted.balancers
        self.constant_weights = emitted.constant_weights
        self.schedules = emitted.schedules
        # tensor expressions: their shapes are checked on the first call with new shapes
        self.tensor_paths = emitted.tensor_paths
        self.inputs_read = resolved.inputs_read
        self.canonical = resolved.canonical
        self.policy = policy

    def checked_run(self, strict: bool) -> CheckedRun:
        """A node-by-node run of the graph that checks tensor shapes and locates failures."""
        return CheckedRun(self.module, strict)

    @property
    def graph(self) -> fx.Graph:
        return self.module.graph

    @property
    def code(self) -> str:
        """The generated ``forward``, as Python source."""
        return self.module.code


def build_program(resolved: ir.IR, policy: str) -> Program:
    return Program(resolved, policy)


# --- running the graph node by node --------------------------------------------------
# Running a program's graph node by node, to check its tensor expressions (DESIGN.md §3.1).
#
# A program with tensor expressions runs its generated code on every call; this slower run is
# for the calls that need to know more: the first call with new input shapes (under
# ``strict=True``, an operation between tensors of different ranks whose broadcasting enlarges
# *both* operands is refused: ``(N, 1)`` with ``(N,)`` gives ``(N, N)``, the classic silent bug),
# and a call whose fast run failed, to say which operation failed, where it stands in the text
# and on which shapes. Errors carry the IR index of the operation (``err.node_index``); the
# ``Loss`` turns it into a span of its own source.

_SYMBOLS = {
    operator.add: "+", operator.sub: "-", operator.mul: "*", operator.truediv: "/", operator.pow: "^",
    operator.neg: "unary -", operator.lt: "<", operator.le: "<=", operator.gt: ">", operator.ge: ">=",
    operator.eq: "==", operator.ne: "!=", operator.getitem: "[...]",
}


def both_enlarged(a: Any, b: Any) -> tuple | None:
    """The broadcast shape when ``a`` and ``b`` (tensors of different ranks) both grow in it."""
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.dim() == b.dim():
        return None
    if a.dim() == 0 or b.dim() == 0:
        return None
    try:
        shape = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:  # the operation itself fails, and says so with both shapes
        return None
    if shape != a.shape and shape != b.shape:
        return tuple(shape)
    return None


def _shapes(args: Any) -> str:
    shapes = []
    for a in args:
        if isinstance(a, Tensor):
            shapes.append(str(tuple(a.shape)))
        elif isinstance(a, (list, tuple)):
            shapes.extend(str(tuple(x.shape)) for x in a if isinstance(x, Tensor))
    return " and ".join(shapes) or "no tensors"


class CheckedRun(fx.Interpreter):
    """``CheckedRun(module, strict).run(*args)``: the program's outputs, each node checked."""

    def __init__(self, module: fx.GraphModule, strict: bool) -> None:
        super().__init__(module)
        self.strict = strict

    def run_node(self, n: fx.Node) -> Any:
        index = n.meta.get("ir_index")
        symbol = _SYMBOLS.get(n.target) if n.op == "call_function" else None
        what = f"operator '{symbol}'" if symbol else n.meta.get("what", str(n.target))
        if self.strict and n.meta.get("broadcasts"):
            args = fx.node.map_arg(n.args, lambda a: self.env[a])
            tensors = [a for a in args if isinstance(a, Tensor)]
            if len(tensors) >= 2:
                grown = both_enlarged(tensors[0], tensors[1])
                if grown is not None:
                    raise self._error(
                        f"{what} broadcasts shapes {tuple(tensors[0].shape)} and {tuple(tensors[1].shape)} "
                        f"to {grown}, enlarging both",
                        "give both operands the same rank with explicit axes (x[:, none] - y[none, :]) "
                        "for an outer operation, or reshape one of them; strict=False allows it",
                        index,
                    )
        try:
            value = super().run_node(n)
        except LossDSLError as err:
            if err.span is None and err.term is None and getattr(err, "node_index", None) is None:
                err.node_index = index  # e.g. a path into a tensor: the caret goes under it
            raise
        except Exception as exc:
            if index is None:
                raise
            args = fx.node.map_arg(n.args, lambda a: self.env[a])
            if n.target is torch.where and isinstance(args[0], Tensor) and args[0].dtype != torch.bool:
                raise self._error(
                    f"where's condition is a {args[0].dtype} tensor, not a boolean one",
                    "compare it (m > 0), or pass a bool tensor",
                    index,
                ) from exc
            raise self._error(
                f"{what} failed on shapes {_shapes(args)}: {exc}",
                "check the shapes of the inputs this operation reads",
                index,
            ) from exc
        if n.meta.get("what") == "input" and not isinstance(value, (Tensor, Number)):
            # an input of an expression that the call did not give, or gave as something
            # else than a tensor: named here, not as a failure of the operation that meets it
            if isinstance(value, Absent):
                err = missing_input(value, value.path[0], None)
            else:
                err = LossInputError(
                    f"input '{'.'.join(n.target.path)}' is a {type(value).__name__}, not a tensor",
                    hint="pass a torch.Tensor (torch.as_tensor(x) converts lists and arrays)",
                )
            err.node_index = index
            raise err
        return value

    @staticmethod
    def _error(message: str, hint: str, index: int | None) -> LossInputError:
        err = LossInputError(message, hint=hint)
        err.node_index = index
        return err
