"""The term registry: Python functions that the language can call by name.

A term is a function whose positional parameters are tensor inputs (``pred``, ``target``,
``weight=None``, ...) and whose keyword-only parameters are hyperparameters, validated by
pydantic from their annotations. Register one with :func:`term`::

    >>> import torch, lossdsl
    >>> from typing import Annotated
    >>> from annotated_types import Gt
    >>> @lossdsl.term(name="scaled_l1_doc", replace=True)
    ... def scaled_l1(pred, target, *, scale: Annotated[float, Gt(0)] = 1.0):
    ...     '''Absolute error times a scale.'''
    ...     return scale * (pred - target).abs().mean()
    >>> crit = lossdsl.compile("scaled_l1_doc(scale=2)")
    >>> float(crit(torch.zeros(3), torch.ones(3)))
    2.0

Third-party packages register through the entry-point group ``lossdsl.terms``: each entry
point names a term function; its entry-point name is the term's name.
"""

from __future__ import annotations

import inspect
import threading
import types
import typing
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterator, Mapping

import pydantic
from pydantic import ConfigDict, create_model, model_validator

from .functions import FUNCTIONS
from .schedules import SCHEDULES

__all__ = [
    "InputParam", "HyperParam", "TermSpec", "Registry", "registry", "term", "spec_from_function", "type_words", "BALANCE", "BUILTIN_NAMES", "RESERVED_WORDS", "FIXED_NAMES",
]

# The names the language keeps for itself: no term, binding or declared input may take them.
BALANCE = "balance"
BUILTIN_NAMES = frozenset(FUNCTIONS) | frozenset(SCHEDULES) | {BALANCE}
RESERVED_WORDS = frozenset({"true", "false", "none", "and", "or", "not", "input"})
# names the language gives a meaning of its own: the call's inputs and the monitor's column
# of the whole loss; a term under one of them would shadow the input or hide the total
FIXED_NAMES = frozenset({"pred", "target", "total"})

ENTRY_POINT_GROUP = "lossdsl.terms"
_REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class InputParam:
    """A tensor input of a term, filled from ``forward``'s inputs of the same name."""

    name: str
    required: bool


@dataclass(frozen=True)
class HyperParam:
    """A hyperparameter of a term: a literal in the program, validated when compiling."""

    name: str
    annotation: Any
    default: Any
    required: bool

    def describe(self) -> str:
        """``name: type = default`` in words, for listings and hints."""
        text = f"{self.name}: {type_words(self.annotation)}"
        return text if self.required else f"{text} = {self.default!r}"


@dataclass(frozen=True, eq=False)
class TermSpec:
    """Everything the resolver needs to know about a term, taken from its signature."""

    name: str
    func: Callable[..., Any]
    inputs: tuple[InputParam, ...]
    hyper: tuple[HyperParam, ...]
    model: type[pydantic.BaseModel] = field(repr=False)
    summary: str = ""

    def __reduce__(self):
        # pickled by its function (by reference): the pydantic model is rebuilt from it
        return (spec_from_function, (self.func, self.name))

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.inputs)

    @property
    def hyper_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.hyper)

    def validate(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Validated hyperparameters with defaults filled in; raises ``pydantic.ValidationError``."""
        model = self.model.model_validate(dict(values))
        return {name: getattr(model, name) for name in self.hyper_names}

    def signature(self) -> str:
        """A one-line description: ``huber(delta: float > 0 = 1.0) inputs: pred, target``."""
        hyper = ", ".join(p.describe() for p in self.hyper)
        inputs = ", ".join(p.name + ("" if p.required else "?") for p in self.inputs)
        return f"{self.name}({hyper})  inputs: {inputs}"


def type_words(annotation: Any) -> str:
    """A type in words: ``float > 0``, ``float in (0, 1)``, ``'mean' | 'sum'``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(annotation)
        lower = upper = None
        for m in meta:
            for attr, kind in (("gt", "lower"), ("ge", "lower"), ("lt", "upper"), ("le", "upper")):
                value = getattr(m, attr, None)
                if value is not None:
                    if kind == "lower":
                        lower = (attr, value)
                    else:
                        upper = (attr, value)
        words = type_words(base)
        if lower and upper:
            left = "(" if lower[0] == "gt" else "["
            right = ")" if upper[0] == "lt" else "]"
            return f"{words} in {left}{lower[1]}, {upper[1]}{right}"
        symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        for bound in (lower, upper):
            if bound:
                words += f" {symbols[bound[0]]} {bound[1]}"
        return words
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_words(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "none"
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return f"list of {type_words(args[0])}" if args else "list"
    return getattr(annotation, "__name__", str(annotation))


def spec_from_function(func: Callable[..., Any], name: str | None = None) -> TermSpec:
    """Build a :class:`TermSpec` from a function's signature and docstring.

    Positional parameters are tensor inputs; keyword-only parameters are hyperparameters.

    >>> def l1(pred, target, *, scale: float = 1.0):
    ...     '''Mean absolute error.'''
    ...     return scale * (pred - target).abs().mean()
    >>> spec_from_function(l1).signature()
    'l1(scale: float = 1.0)  inputs: pred, target'
    """
    if not callable(func):
        raise TypeError(f"a term must be a function, got {type(func).__name__}")
    term_name = name or getattr(func, "__name__", None)
    if not term_name or not term_name.isidentifier():
        raise ValueError(f"a term needs a name that is an identifier, got {term_name!r}")
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:  # unresolvable string annotations: fall back to Any
        hints = {}
    inputs: list[InputParam] = []
    hyper: list[HyperParam] = []
    for p in inspect.signature(func).parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            inputs.append(InputParam(p.name, required=p.default is _REQUIRED))
        elif p.kind is p.KEYWORD_ONLY:
            annotation = hints.get(p.name, Any)
            default = None if p.default is _REQUIRED else p.default
            hyper.append(HyperParam(p.name, annotation, default, p.default is _REQUIRED))
        else:
            raise TypeError(f"term '{term_name}' cannot take *{p.name}; name its parameters")
    fields = {
        h.name: (h.annotation, ... if h.required else h.default) for h in hyper
    }
    model = create_model(
        f"{term_name}_hyperparameters",
        __config__=ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True),
        __validators__=_relation_validator(getattr(func, "check_hyperparameters", None)),
        **fields,
    )
    doc = inspect.getdoc(func) or ""
    summary = doc.strip().splitlines()[0].strip() if doc.strip() else ""
    return TermSpec(term_name, func, tuple(inputs), tuple(hyper), model, summary)


def _relation_validator(check: Callable[[dict], None] | None) -> dict:
    """A term function's ``check_hyperparameters(values)`` (raising ``ValueError``) as a
    validator of its model: a relation between hyperparameters (``lower <= upper``) is then
    refused when compiling, with a caret, as a value out of its range is."""
    if check is None:
        return {}

    def related(model):
        check(dict(model))
        return model

    return {"related": model_validator(mode="after")(related)}


class Registry(Mapping[str, TermSpec]):
    """Name -> :class:`TermSpec`. ``version`` changes whenever the registry changes.

    >>> import lossdsl
    >>> "huber" in lossdsl.registry
    True
    >>> lossdsl.registry["huber"].summary.startswith("Huber")
    True
    """

    def __init__(self) -> None:
        self._specs: dict[str, TermSpec] = {}
        self._lock = threading.RLock()
        self._entry_points_loaded = False
        self.version = 0

    def register(
        self, func: Callable[..., Any], *, name: str | None = None, replace: bool = False
    ) -> TermSpec:
        """Add a term; refuses a name already taken (a term or a built-in) unless ``replace``."""
        spec = spec_from_function(func, name)
        with self._lock:
            if spec.name in BUILTIN_NAMES or spec.name in RESERVED_WORDS:
                raise ValueError(f"'{spec.name}' is a built-in function of lossdsl; pick another name")
            if spec.name in FIXED_NAMES:
                raise ValueError(f"'{spec.name}' has a fixed meaning in lossdsl programs; pick another name")
            if spec.name in self._specs and not replace:
                raise ValueError(
                    f"a term named '{spec.name}' is already registered; pass replace=True to override"
                )
            self._specs[spec.name] = spec
            self.version += 1
        return spec

    def include(self, catalogue: Mapping[str, Callable[..., Any]]) -> None:
        """Add the built-in catalogue (``{name: function}``); names already there stay."""
        with self._lock:
            for name, func in catalogue.items():
                if name not in self._specs:
                    self._specs[name] = spec_from_function(func, name)
            self.version += 1

    def unregister(self, name: str) -> None:
        with self._lock:
            del self._specs[name]
            self.version += 1

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        with self._lock:
            if self._entry_points_loaded:
                return
            self._entry_points_loaded = True
            for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
                if ep.name in self._specs:
                    continue
                try:
                    self.register(ep.load(), name=ep.name)
                except Exception as exc:  # a broken plugin must not break every loss
                    warnings.warn(
                        f"lossdsl: could not load term '{ep.name}' from entry point "
                        f"'{ep.value}': {exc}",
                        RuntimeWarning,
                        stacklevel=2,
                    )

    def reload_entry_points(self) -> None:
        """Look at the ``lossdsl.terms`` entry points again (after installing a plugin)."""
        self._entry_points_loaded = False
        self._load_entry_points()

    def __getitem__(self, name: str) -> TermSpec:
        self._load_entry_points()
        return self._specs[name]

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        self._load_entry_points()
        return iter(sorted(self._specs))

    def __len__(self) -> int:
        self._load_entry_points()
        return len(self._specs)

    def names(self) -> list[str]:
        """Sorted names of every registered term."""
        return list(self)

    def specs(self) -> list[TermSpec]:
        return [self[n] for n in self]

    def summaries(self) -> dict[str, str]:
        """``{name: first line of the docstring}`` for every term."""
        return {n: self[n].summary for n in self}


registry = Registry()


def term(func: Callable[..., Any] | None = None, *, name: str | None = None, replace: bool = False):
    """Register a function as a loss term; usable bare (``@term``) or with arguments.

    Positional parameters are tensor inputs (defaults allowed, e.g. ``weight=None``);
    keyword-only parameters are hyperparameters validated from their annotations. The
    function is returned unchanged.

    >>> import lossdsl, torch
    >>> @lossdsl.term(name="mean_pred_doc", replace=True)
    ... def mean_pred(pred):
    ...     '''The mean of the prediction.'''
    ...     return pred.mean()
    >>> float(lossdsl.compile("mean_pred_doc")(torch.ones(4)))
    1.0
    """

    def decorate(f: Callable[..., Any]):
        registry.register(f, name=name, replace=replace)
        return f

    return decorate(func) if func is not None else decorate
