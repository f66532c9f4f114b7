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

from typing import Any

import torch
import torch.fx as fx

from ..resolve import ir
from .checking import CheckedRun
from .emit import emit

__all__ = ["Program", "build_program"]


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
