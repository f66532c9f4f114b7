"""Torch for the function tables, without importing it when the tables are imported.

The language layer (``syntax``, ``language``, ``resolve``) must import without torch, so that
``lossdsl.parse`` and ``lossdsl check`` start fast; yet each row of a function table names the
torch function it runs (DESIGN.md §2: one row per function). A row therefore refers to torch
through :data:`T`, a stand-in that imports torch on first use: ``T.log`` in a row is
resolved to ``torch.log`` when a program is built, and a derivative rule called on graph
proxies records ``torch.sign`` into the graph. Nothing the language defines calls ``T`` while
a loss runs: code that runs per call (balancer methods, schedules on tensors) is given torch
by the runtime. This is the only place the language reaches torch (and :data:`TORCHJD`, the
optional library whose aggregators the gradient balancers name).

>>> from lossdsl.language.lazy import T
>>> T.nn.functional.softplus            # doctest: +ELLIPSIS
LazyAttribute('torch.nn.functional.softplus')
>>> T.nn.functional.softplus.resolve().__name__
'softplus'
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["LazyAttribute", "T", "TORCHJD", "resolve"]


class LazyAttribute:
    """A dotted name under a module, resolved (and imported) the first time it is called.

    Calling it calls the object it names; :meth:`resolve` returns that object. Attribute
    access builds longer names without importing anything.
    """

    __slots__ = ("_path", "_target", "_children")

    def __init__(self, path: str) -> None:
        self._path = path
        self._target = None
        self._children: dict[str, LazyAttribute] = {}

    def __getattr__(self, name: str) -> "LazyAttribute":
        if name.startswith("__"):
            raise AttributeError(name)
        child = self._children.get(name)
        if child is None:
            child = self._children[name] = LazyAttribute(f"{self._path}.{name}")
        return child

    def resolve(self) -> Any:
        """The object this name stands for (its module is imported once, here)."""
        target = self._target
        if target is None:
            parts = self._path.split(".")
            # the longest importable prefix is the module; the rest are attributes
            for cut in range(len(parts), 0, -1):
                try:
                    target = importlib.import_module(".".join(parts[:cut]))
                except ImportError:
                    continue
                for part in parts[cut:]:
                    target = getattr(target, part)
                break
            else:
                raise ImportError(f"cannot import {self._path}")
            self._target = target
        return target

    @property
    def path(self) -> str:
        return self._path

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"LazyAttribute({self._path!r})"

    def __reduce__(self):
        return (LazyAttribute, (self._path,))


T = LazyAttribute("torch")
# the optional TorchJD (``lossdsl[mtl]``): the gradient aggregators of ``balance`` are its classes
TORCHJD = LazyAttribute("torchjd")


def resolve(value: Any) -> Any:
    """``value`` itself, or what it names when it is a :class:`LazyAttribute`."""
    return value.resolve() if isinstance(value, LazyAttribute) else value
