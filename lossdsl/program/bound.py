"""The callables a program's graph calls for what is not plain torch: a term with its
hyperparameters bound, and the reading of a call input by path.

Binding hyperparameters (strings included) into these objects keeps every string of the
program text out of the generated code: the graph shows ``huber = lossdsl_program_bound_huber(pred,
target)``, never ``reduction="sum"`` or an input path.

>>> import torch, lossdsl
>>> from lossdsl.resolve import resolve_text
>>> term = resolve_text("huber(delta=2)").root
>>> run = BoundTerm(term, "huber")
>>> float(run(torch.zeros(2), torch.full((2,), 3.0)))
4.0
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from torch import Tensor

from ..errors import LossDSLError, LossInputError
from ..resolve import ir
from ..runtime.inputs import is_absent, missing_input, read_path
from ..terms import CATALOGUE
from ..terms._common import check_same_shape, residual

# the catalogue's functions return what they promise; a user's term is checked (see _custom)
_CATALOGUE_FUNCTIONS = frozenset(id(f) for f in CATALOGUE.values())

__all__ = ["BoundTerm", "ResidualTerm", "Residual", "InputReader", "identifier", "reads_residual"]


def identifier(text: str) -> str:
    """``text`` as a Python identifier, for the names of graph nodes and globals."""
    name = re.sub(r"\W", "_", text)
    return name if name and not name[0].isdigit() else f"_{name}"


def _named(obj: Any, name: str, module: str) -> None:
    # torch.fx names a called object's global after its __module__ and __name__
    obj.__name__ = obj.__qualname__ = identifier(name)
    obj.__module__ = module


class BoundTerm:
    """Calls one term of the program: ``run(*inputs)`` with the hyperparameters bound.

    ``name`` is the term's log name. A missing required input or a failure inside the term
    is reported naming the term; a :class:`~lossdsl.LossDSLError` from the term keeps its type.
    """

    def __init__(self, term: ir.Term, name: str) -> None:
        self.func = term.spec.func
        self.hyper = dict(term.hyper)
        self.term_name = name
        self.routes = term.routes
        self.required = [i for i, r in enumerate(term.routes) if r.required]
        self.custom = id(self.func) not in _CATALOGUE_FUNCTIONS and term.kind == "loss"
        _named(self, name, __name__)

    def _call(self, args: tuple) -> Any:
        out = self.func(*args, **self.hyper)
        return _custom_result(out, args, self.term_name) if self.custom else out

    def __call__(self, *args: Any) -> Any:
        # an optional input that is not there arrives as None (InputReader), a required one
        # as an Absent that says what was there instead
        for i in self.required:
            if is_absent(args[i]):
                raise missing_input(args[i], self.routes[i].param, self.term_name, self.routes[i].path)
        try:
            return self._call(args)
        except LossDSLError as err:
            if err.term is None:
                err.message = f"term '{self.term_name}': {err.message}"
                err.term = self.term_name
            raise
        except Exception as err:
            if isinstance(err, RuntimeError) and "Inference tensors cannot be saved" in str(err):
                raise LossInputError(
                    f"term '{self.term_name}': an input was made under torch.inference_mode(), and a "
                    "training call cannot save it for the backward pass",
                    hint="make it outside inference_mode (torch.no_grad() does not have this limit), "
                    "or pass a .clone() of it", term=self.term_name,
                ) from err
            err.add_note(f"lossdsl: raised while computing term '{self.term_name}'")
            raise


def _custom_result(out: Any, args: tuple, name: str) -> Tensor:
    """A user's term's result as the 0-dim floating-point tensor a loss is: one element of
    any shape is reshaped, an integer or boolean one becomes a float (in pred's dtype) as
    torch's arithmetic would make it; anything else is refused naming the term."""
    if isinstance(out, Tensor) and out.numel() == 1 and not out.is_complex():
        if not out.is_floating_point():
            pred = args[0] if args else None
            dtype = pred.dtype if isinstance(pred, Tensor) and pred.is_floating_point() else torch.get_default_dtype()
            out = out.to(dtype)
        return out.reshape(()) if out.dim() else out
    what = f"a {tuple(out.shape)} {out.dtype} tensor" if isinstance(out, Tensor) else f"a {type(out).__name__}"
    raise LossDSLError(
        f"term '{name}' returned {what}, not a loss",
        hint="a term function returns its loss as one real number in a 0-dim tensor, "
        "e.g. ((pred - target) ** 2).mean()",
        term=name,
    )


def reads_residual(term: ir.Term) -> bool:
    """Whether ``term`` can be computed from the call's shared ``e = pred - target``: it has
    a residual form (``terms._common.residual_form``) and reads the call's own pred and target."""
    routes = term.routes
    return (
        getattr(term.spec.func, "on_residual", None) is not None
        and len(routes) >= 2
        and (routes[0].path, routes[1].path) == (("pred",), ("target",))
    )


class Residual:
    """``e = pred - target`` of one call (half precision in float32), computed once for every
    term that reads it: one subtraction and one saved tensor instead of one per term. Errors
    name the first term that reads it."""

    def __init__(self, first: str) -> None:
        self.first = first
        _named(self, "residual", __name__)

    def __call__(self, pred: Any, target: Any) -> Any:
        for param, value in (("pred", pred), ("target", target)):
            if value is None:
                raise missing_input(None, param, self.first, (param,))
        try:
            check_same_shape(pred, target)
        except LossDSLError as err:
            err.message = f"term '{self.first}': {err.message}"
            err.term = self.first
            raise
        return residual(pred, target)


class ResidualTerm(BoundTerm):
    """A term computed from the shared residual: ``run(e, pred, *other_inputs)``. Its value
    stays in the residual's precision (float32 for half-precision inputs): it is combined
    and reported as computed, so 120000 in a float16 loss is 120000, not float16's inf."""

    def __init__(self, term: ir.Term, name: str) -> None:
        super().__init__(term, name)
        self.func = term.spec.func.on_residual
        self.required = [i for i in self.required if i >= 2]

    def __call__(self, e: Any, pred: Any, *rest: Any) -> Any:
        return super().__call__(e, None, *rest)

    def _call(self, args: tuple) -> Any:
        return self.func(args[0], *args[2:], **self.hyper)


class InputReader:
    """``read(inputs)``: the call input at one path (``out.depth``); where it is not there,
    None for an optional input and an ``Absent`` (what was there instead) for a required one."""

    def __init__(self, path: tuple[str, ...], required: bool) -> None:
        self.path, self.required = path, required
        _named(self, "input_" + "_".join(path), __name__)

    def __call__(self, inputs: Mapping[str, Any]) -> Any:
        value = read_path(inputs, self.path)
        return None if not self.required and is_absent(value) else value
