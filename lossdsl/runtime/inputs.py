"""Reading a call's inputs by path: ``pred``, ``target``, ``weight``, ``out.depth``.

An input reference reads mapping keys or public attributes of the objects given to the call,
never a private name, and never an attribute of a tensor (``pred.grad``). Where a key is not
there the read gives an :class:`Absent` that remembers what was there, so the error can say
which key is missing, list the keys present and suggest the nearest.

>>> read_path({"out": {"depth": 1.0}}, ("out", "depth"))
1.0
>>> absent = read_path({"out": {"depth": 1.0}}, ("out", "dpth"))
>>> print(missing_input(absent, "pred", "mse").hint)
did you mean 'depth'? 'out' has 'depth'
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..errors import LossInputError, did_you_mean

__all__ = ["Absent", "read_path", "missing_input", "is_absent"]


class Absent:
    """An input that is not there: ``path`` was asked for, ``at`` parts of it were found,
    ``keys`` are what the last object found has (None when the call gave nothing)."""

    __slots__ = ("path", "at", "keys")

    def __init__(self, path: tuple[str, ...], at: int, keys: list[str] | None) -> None:
        self.path, self.at, self.keys = path, at, keys

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"Absent({'.'.join(self.path)})"


def is_absent(value: Any) -> bool:
    return value is None or isinstance(value, Absent)


def _keys_of(value: Any) -> list[str]:
    if isinstance(value, Mapping) or (hasattr(value, "keys") and hasattr(value, "__getitem__")):
        return [str(k) for k in value.keys()]
    return [k for k in dir(value) if not k.startswith("_")]


def read_path(inputs: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """Follow ``path`` into ``inputs``: the value, or an :class:`Absent`."""
    if path[0] not in inputs or inputs[path[0]] is None:
        return Absent(path, 0, None)
    value = inputs[path[0]]
    for depth, part in enumerate(path[1:], start=1):
        if part.startswith("_"):
            # resolve refuses these when compiling; refuse here too, whatever built the path
            raise LossInputError(
                f"input reference '{'.'.join(path)}' reads a private name '{part}'",
                hint="input references read mapping keys or public attributes only",
            )
        if isinstance(value, torch.Tensor):
            raise LossInputError(
                f"input reference '{'.'.join(path)}' reads '{part}' of a tensor",
                hint="a path reads keys or attributes of the objects passed to the loss, not of "
                "tensors; pass the tensor you mean as an input of its own",
            )
        if isinstance(value, Mapping) or (hasattr(value, "keys") and hasattr(value, "__getitem__")):
            found = value[part] if part in value else Absent(path, depth, None)
        else:
            try:
                found = getattr(value, part, None)
            except Exception as exc:  # a property or __getattr__ of the user's object raised
                raise LossInputError(
                    f"reading '{'.'.join(path[: depth + 1])}' raised {type(exc).__name__}: {exc}",
                    hint=f"the attribute '{part}' of what was passed as '{'.'.join(path[:depth])}' "
                    "failed; check that object",
                ) from exc
            if found is None and not hasattr(type(value), part):
                found = Absent(path, depth, None)
        if isinstance(found, Absent):
            return Absent(path, depth, _keys_of(value))
        value = found
    return value


def missing_input(absent: Any, param: str, term: str, path: tuple[str, ...] | None = None) -> LossInputError:
    """The error for a required input the call did not give."""
    path = absent.path if isinstance(absent, Absent) else path or (param,)
    where = ".".join(path)
    message = f"term '{term}' needs input '{where}' for its '{param}', but the call did not give it"
    if not isinstance(absent, Absent) or absent.keys is None:
        if path == (param,) and param in ("pred", "target"):
            hint = f"call the loss as crit({'pred, target' if param == 'target' else 'pred'}, ...)"
        else:
            hint = f"pass {path[0]}=... to the loss call"
        return LossInputError(message, hint=hint, term=term)
    there = ".".join(path[: absent.at])
    missing = path[absent.at]
    listed = ", ".join(repr(k) for k in absent.keys[:12]) or "nothing"
    close = did_you_mean(missing, absent.keys)
    return LossInputError(
        f"term '{term}' needs input '{where}' for its '{param}', but '{there}' has no '{missing}'",
        hint=(close + " " if close else "") + f"'{there}' has {listed}",
        term=term,
    )
