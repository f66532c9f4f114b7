"""Checks of a state given to ``Loss.load_state_dict``, made before any tensor is copied.

``nn.Module`` copies each module's tensors as it walks the tree and reports a wrong shape,
a missing or an unexpected key only at the end, with the tensors before it already copied
(the step of a run resumed from a broken checkpoint changes although the load raised). A
state is therefore checked whole first: the program it was saved from, then (strict loading)
its keys, then the shape of every tensor this loss holds; a refused state changes nothing.
The keys are checked by ``Loss.load_state_dict`` (strictness is known only there); the
program and the shapes on every load, a loss inside another module's state included.

>>> import torch, lossdsl
>>> crit = lossdsl.compile('balance(mse, mae, method="ema")')
>>> state = crit.state_dict()
>>> state["balancers.0.ema"] = torch.zeros(5)
>>> try:
...     crit.load_state_dict(state)
... except lossdsl.LossDSLError as err:
...     print(err.message)
the state's 'balancers.0.ema' has shape (5,), this loss holds (2,)
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from ..errors import LossDSLError, LossInputError
from .step_check import checked_step

__all__ = ["check_program", "check_keys", "check_shapes"]


def check_program(state: Any, canonical: str) -> None:
    """Refuse the ``_extra_state`` of a loss compiled from another program."""
    saved = state.get("source") if isinstance(state, Mapping) else None
    if saved != canonical:
        raise LossDSLError(
            "this state was saved from a different loss program",
            hint=f"saved: {saved!r}; this loss: {canonical!r}. Compile the saved "
            "program, or delete the state's '_extra_state' entry and load with strict=False",
        )


def _held(module: nn.Module, prefix: str) -> dict[str, Tensor | nn.Module]:
    """The keys of ``module``'s state under ``prefix``: its tensors, and for each module's
    extra state the module (which may check it: ``check_extra_state``)."""
    held: dict[str, Tensor | nn.Module] = {}
    for name, sub in module.named_modules():
        base = prefix + (name + "." if name else "")
        for key, value in sub._parameters.items():
            if value is not None:
                held[base + key] = value
        for key, value in sub._buffers.items():
            if value is not None and key not in sub._non_persistent_buffers_set:
                held[base + key] = value
        if type(sub).get_extra_state is not nn.Module.get_extra_state:
            held[base + "_extra_state"] = sub
    return held


def check_keys(module: nn.Module, state_dict: Any, canonical: str, strict: bool = True) -> None:
    """A mapping, and under ``strict``: the state of this program (``canonical``), every key
    of this loss present, and no other."""
    if not isinstance(state_dict, Mapping):
        raise LossDSLError(
            f"load_state_dict takes a state (a mapping of names to tensors), not a {type(state_dict).__name__}",
            hint="load a saved file first: crit.load_state_dict(torch.load(path))",
        )
    if not strict:
        return
    if "_extra_state" in state_dict:
        check_program(state_dict["_extra_state"], canonical)
    held = _held(module, "")
    missing = [k for k in held if k not in state_dict]
    unexpected = [k for k in state_dict if k not in held]
    if not (missing or unexpected):
        return
    parts = []
    if missing:
        parts.append("misses " + ", ".join(repr(k) for k in missing[:8]) + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        parts.append("has keys this loss does not: " + ", ".join(repr(k) for k in unexpected[:8]))
    raise LossDSLError(
        "the state " + "; it ".join(parts) + " (nothing was loaded)",
        hint="load the state saved from this loss (crit.state_dict()), or load with strict=False "
        "to keep what it lacks",
    )


def check_shapes(module: nn.Module, state_dict: Mapping[str, Any], prefix: str, canonical: str) -> None:
    """The state of this program (``canonical``, when the state says), and every tensor of it
    that this loss holds a tensor of the same shape."""
    if prefix + "_extra_state" in state_dict:
        check_program(state_dict[prefix + "_extra_state"], canonical)
    for key, own in _held(module, prefix).items():
        if key not in state_dict:
            continue
        given = state_dict[key]
        if isinstance(own, nn.Module):
            if own is not module and hasattr(own, "check_extra_state"):
                own.check_extra_state(given)
            continue
        if not isinstance(given, Tensor):
            raise LossDSLError(
                f"the state's {key!r} is a {type(given).__name__}, not a tensor (nothing was loaded)",
                hint="load the state saved from this loss (crit.state_dict())",
            )
        if given.shape != own.shape:
            raise LossDSLError(
                f"the state's {key!r} has shape {tuple(given.shape)}, this loss holds {tuple(own.shape)}",
                hint="load the state saved from this loss (crit.state_dict()); nothing was loaded",
            )
        if given.is_meta and not own.is_meta:
            raise LossDSLError(
                f"the state's {key!r} is on the meta device: it holds no numbers (nothing was loaded)",
                hint="save the state of a loss that has run on a real device",
            )
        if key == prefix + "step":
            _check_step(given)


def _check_step(step: Tensor) -> None:
    """A saved step obeys the rules of ``step=`` (:func:`.step_check.checked_step`)."""
    try:
        checked_step(step)
    except LossInputError as err:
        raise LossDSLError(
            f"the state's step: {err.message} (nothing was loaded)",
            hint="load the state saved from this loss (crit.state_dict())",
        ) from None
