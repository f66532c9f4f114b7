"""Reading a call's inputs by path: ``pred``, ``target``, ``weight``, ``out.depth``.

An input reference reads mapping keys or public attributes of the objects given to the call,
never a private name, and never an attribute of a tensor (``pred.grad``). Where the path
breaks off the read gives an :class:`Absent`, from which the error says which key or
attribute is missing, lists those that are there and suggests the nearest; what the
objects raise while being read is a :class:`~lossdsl.LossInputError` that names the path.

>>> read_path({"out": {"depth": 1.0}}, ("out", "depth"))
1.0
>>> absent = read_path({"out": {"depth": 1.0, "seg": 2.0}}, ("out", "dpth"))
>>> print(missing_input(absent, "pred", "mse").hint)
did you mean 'out.depth'? 'out' has the keys 'depth', 'seg'
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Mapping

import torch

from ..errors import LossInputError, did_you_mean

__all__ = ["Absent", "read_path", "missing_input", "unread_error", "devices_error", "unreadable_input", "is_absent"]


class Absent:
    """An input that is not there: ``path`` was asked for; ``head`` is what the call gave
    for its first name (None when nothing)."""

    __slots__ = ("path", "head")

    def __init__(self, path: tuple[str, ...], head: Any) -> None:
        self.path, self.head = path, head

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"Absent({'.'.join(self.path)})"


def is_absent(value: Any) -> bool:
    return value is None or isinstance(value, Absent)


def _is_mapping(value: Any) -> bool:
    return isinstance(value, Mapping) or (hasattr(value, "keys") and hasattr(value, "__getitem__"))


def _child(value: Any, part: str) -> Any:
    """``value[part]`` of a mapping, else the public attribute; None when absent."""
    if _is_mapping(value):
        return value[part] if part in value else None
    return getattr(value, part, None)


def read_path(inputs: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """Follow ``path`` into ``inputs``: the value, or an :class:`Absent`."""
    head = inputs.get(path[0])
    value = head
    for depth, part in enumerate(path[1:], start=1):
        if value is None:
            return Absent(path, head)
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
        try:
            value = _child(value, part)
        except Exception as err:  # a property or __getattr__ of the user's object raised
            raise unreadable_input(path, err) from err
    return Absent(path, head) if value is None else value


def unreadable_input(path: tuple[str, ...], err: Exception) -> LossInputError:
    """The error for an input whose reading raised; the ``Loss`` names the term reading it."""
    error = LossInputError(
        f"could not read the input '{'.'.join(path)}': {type(err).__name__}: {err}",
        hint=f"reading '{'.'.join(path)}' from the object passed as {path[0]}=... raised; "
        "input references read mapping keys and public attributes, so check that property "
        "or __getattr__",
    )
    error.input_path = path
    return error


def devices_error(given: tuple) -> LossInputError | None:
    """The error for a call whose tensors (``pred``, ``target``, the keyword inputs) are on
    more than one device; None when they are on one.

    >>> devices_error((torch.zeros(1), torch.zeros(1, device="meta"), {})).message
    'the inputs are on different devices: pred on cpu, target on meta'
    """
    pred, target, inputs = given
    named = {"pred": pred, "target": target, **inputs}
    devices = {name: str(v.device) for name, v in named.items() if isinstance(v, torch.Tensor)}
    if len(set(devices.values())) < 2:
        return None
    where = ", ".join(f"{name} on {device}" for name, device in devices.items())
    return LossInputError(
        f"the inputs are on different devices: {where}",
        hint="move them to one device, and the loss with them (crit.to(device))",
    )


def unread_error(unread: list[str], readable: list[str]) -> LossInputError:
    """The error for keyword inputs that no term reads (under ``strict=True``).

    >>> print(unread_error(["wieght"], ["weight"]).hint)
    did you mean 'weight'? this loss reads weight; check the spelling, or compile with strict=False
    """
    read = ", ".join(readable) or "no keyword inputs"
    names = ", ".join(repr(u) for u in unread)
    close = did_you_mean(unread[0], readable)
    return LossInputError(
        f"no term reads the input{'s' if len(unread) > 1 else ''} {names}",
        hint=(close + " " if close else "") + f"this loss reads {read}; check the spelling, or compile with strict=False",
    )


def missing_input(absent: Any, param: str, term: str | None, path: tuple[str, ...] | None = None) -> LossInputError:
    """The error for a required input the call did not give (to ``term``'s ``param``, or to
    an expression when ``term`` is None); a nested path (``out.seg``) says where it broke
    off, what is there, and the nearest name."""
    path = absent.path if isinstance(absent, Absent) else path or (param,)
    head = absent.head if isinstance(absent, Absent) else None
    why, cause = "but the call did not give it", None
    if path == (param,) and param in ("pred", "target"):
        how = f"call the loss as crit({'pred, target' if param == 'target' else 'pred'}, ...)"
    elif len(path) == 1 or head is None:
        how = f"pass {path[0]}=... to the loss call"
    else:
        try:
            why, how, cause = _broken_path(head, path)
        except Exception as err:  # the objects read differently this time: say what raised
            why, cause = f"but reading it raised {type(err).__name__}: {err}", err
            how = f"check the object passed as {path[0]}=..."
    who = f"term '{term}' needs" if term is not None else "the program reads"
    whose = f" for its '{param}'" if term is not None else ""
    error = LossInputError(f"{who} input '{'.'.join(path)}'{whose}, {why}", hint=how, term=term)
    error.__cause__ = cause
    return error


def _broken_path(value: Any, path: tuple[str, ...]) -> tuple[str, str, Exception | None]:
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


def _names(value: Any, mapping: bool) -> list[str]:
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
