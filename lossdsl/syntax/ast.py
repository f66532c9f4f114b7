"""The abstract syntax tree of a loss program: frozen pydantic models with source spans.

Nodes compare equal when they mean the same program: spans are ignored by ``==`` and
``hash`` so that ``parse(unparse(p)) == p``.

>>> from lossdsl.syntax.ast import Call, Keyword, Number
>>> Call(name="huber", kwargs=(Keyword(name="delta", value=Number(value=1)),))
Call(name='huber', args=(), kwargs=(Keyword(name='delta', value=Number(value=1)),))
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

__all__ = [
    "Span",
    "Node",
    "Number",
    "String",
    "Bool",
    "NoneValue",
    "ListValue",
    "InputRef",
    "Keyword",
    "Call",
    "Sum",
    "Product",
    "Power",
    "Neg",
    "Compare",
    "BoolOp",
    "Not",
    "Slice",
    "EllipsisItem",
    "NewAxis",
    "Index",
    "Declaration",
    "Binding",
    "Program",
    "Expr",
    "Value",
]


class Span(BaseModel):
    """Where a node stands in the source: character offsets ``[start, end)``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    start: int = Field(ge=0)
    end: int = Field(ge=0)


class Node(BaseModel):
    """Base of every AST node: frozen, no extra fields, equality without spans."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    span: Span | None = Field(default=None, repr=False)

    def _key(self) -> tuple:
        return (type(self),) + tuple(
            getattr(self, name) for name in type(self).model_fields if name != "span"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Node):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def offsets(self) -> tuple[int, int] | None:
        """``(start, end)`` of the node in the source, or ``None`` for a built node."""
        return None if self.span is None else (self.span.start, self.span.end)


class Number(Node):
    """A numeric literal. Integers stay ``int`` so ``order=1`` keeps its type."""

    kind: Literal["number"] = Field(default="number", repr=False)
    value: int | float

    @field_validator("value", mode="before")
    @classmethod
    def _not_bool(cls, v):
        # checked before pydantic turns True into 1
        if isinstance(v, bool):
            raise ValueError("a number, not a boolean")
        return v

    @field_validator("value")
    @classmethod
    def _finite(cls, v: int | float) -> int | float:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("numbers must be finite")
        return v


class String(Node):
    kind: Literal["string"] = Field(default="string", repr=False)
    value: str


class Bool(Node):
    kind: Literal["bool"] = Field(default="bool", repr=False)
    value: bool


class NoneValue(Node):
    kind: Literal["none"] = Field(default="none", repr=False)


class InputRef(Node):
    """A dotted reference to a forward input, e.g. ``out.depth`` -> ``("out", "depth")``."""

    kind: Literal["ref"] = Field(default="ref", repr=False)
    path: tuple[str, ...] = Field(min_length=1)


class ListValue(Node):
    kind: Literal["list"] = Field(default="list", repr=False)
    items: tuple["Value", ...] = ()


Value = Union[Number, String, Bool, NoneValue, ListValue, InputRef]


class Keyword(Node):
    """``name=value`` inside a call."""

    kind: Literal["keyword"] = Field(default="keyword", repr=False)
    name: str
    value: Value = Field(discriminator="kind")

    @property
    def name_span(self) -> tuple[int, int] | None:
        if self.span is None:
            return None
        return (self.span.start, self.span.start + len(self.name))


class Call(Node):
    """``name``, ``name()`` or ``name(arg, ..., key=value)``; a bare name is a call with defaults."""

    kind: Literal["call"] = Field(default="call", repr=False)
    name: str
    args: tuple["Expr", ...] = ()
    kwargs: tuple[Keyword, ...] = ()

    @property
    def name_span(self) -> tuple[int, int] | None:
        if self.span is None:
            return None
        return (self.span.start, self.span.start + len(self.name))


class Sum(Node):
    """A flat chain ``a + b - c``: ``ops[i]`` joins ``operands[i]`` and ``operands[i + 1]``.

    Chains are n-ary so that a long flat sum is one level deep, not hundreds.
    """

    kind: Literal["sum"] = Field(default="sum", repr=False)
    operands: tuple["Expr", ...] = Field(min_length=2)
    ops: tuple[Literal["+", "-"], ...]

    @model_validator(mode="after")
    def _arity(self):
        if len(self.ops) != len(self.operands) - 1:
            raise ValueError("a chain needs exactly one operator between operands")
        return self


class Product(Node):
    """A flat chain ``a * b / c``."""

    kind: Literal["product"] = Field(default="product", repr=False)
    operands: tuple["Expr", ...] = Field(min_length=2)
    ops: tuple[Literal["*", "/"], ...]

    @model_validator(mode="after")
    def _arity(self):
        if len(self.ops) != len(self.operands) - 1:
            raise ValueError("a chain needs exactly one operator between operands")
        return self


class Power(Node):
    """``base ^ exponent`` (right-associative)."""

    kind: Literal["power"] = Field(default="power", repr=False)
    base: "Expr" = Field(discriminator="kind")
    exponent: "Expr" = Field(discriminator="kind")


class Neg(Node):
    kind: Literal["neg"] = Field(default="neg", repr=False)
    operand: "Expr" = Field(discriminator="kind")


class Compare(Node):
    """``left op right``: one comparison (not chained: ``a < b < c`` is a syntax error)."""

    kind: Literal["compare"] = Field(default="compare", repr=False)
    op: Literal["<", "<=", ">", ">=", "==", "!="]
    left: "Expr" = Field(discriminator="kind")
    right: "Expr" = Field(discriminator="kind")


class BoolOp(Node):
    """A flat chain ``a and b and c`` (or ``or``) of conditions."""

    kind: Literal["boolop"] = Field(default="boolop", repr=False)
    op: Literal["and", "or"]
    operands: tuple["Expr", ...] = Field(min_length=2)


class Not(Node):
    kind: Literal["not"] = Field(default="not", repr=False)
    operand: "Expr" = Field(discriminator="kind")


class Slice(Node):
    """``start:stop:step`` inside an index; any part may be left out."""

    kind: Literal["slice"] = Field(default="slice", repr=False)
    start: Optional["Expr"] = Field(default=None, discriminator="kind")
    stop: Optional["Expr"] = Field(default=None, discriminator="kind")
    step: Optional["Expr"] = Field(default=None, discriminator="kind")


class EllipsisItem(Node):
    """``...`` inside an index: every axis not named."""

    kind: Literal["ellipsis"] = Field(default="ellipsis", repr=False)


class NewAxis(Node):
    """``none`` inside an index: a new axis of length 1."""

    kind: Literal["newaxis"] = Field(default="newaxis", repr=False)


class Index(Node):
    """``base[item, ...]``: integers, slices, ``...`` and ``none``, as in PyTorch."""

    kind: Literal["index"] = Field(default="index", repr=False)
    base: "Expr" = Field(discriminator="kind")
    items: tuple[Annotated[Union["Expr", Slice, EllipsisItem, NewAxis], Field(discriminator="kind")], ...] = Field(
        min_length=1
    )


Expr = Union[Number, Call, Sum, Product, Power, Neg, Compare, BoolOp, Not, Index, ListValue, InputRef, Bool]


class Binding(Node):
    """``name = expr``: names a term or a composite for reuse and logging."""

    kind: Literal["binding"] = Field(default="binding", repr=False)
    name: str
    value: Expr = Field(discriminator="kind")

    @property
    def name_span(self) -> tuple[int, int] | None:
        if self.span is None:
            return None
        return (self.span.start, self.span.start + len(self.name))


class Declaration(Node):
    """``input a, b``: names of call inputs that expressions read (DESIGN.md §3.1).

    ``name_spans``: where each name stands (not part of the node's meaning)."""

    kind: Literal["declaration"] = Field(default="declaration", repr=False)
    names: tuple[str, ...] = Field(min_length=1)
    _name_spans: tuple = PrivateAttr(default=())

    def name_span(self, i: int) -> tuple[int, int] | None:
        spans = self._name_spans
        return spans[i] if i < len(spans) else self.offsets


class Program(Node):
    """A whole program: ``input`` declarations and bindings in source order, then the
    expression whose value is the loss.

    >>> import lossdsl
    >>> program = lossdsl.parse("input w\\nrecon = mse\\nrecon + mean(w * pred)")
    >>> program.declarations[0].names, [b.name for b in program.bindings]
    (('w',), ['recon'])
    """

    kind: Literal["program"] = Field(default="program", repr=False)
    declarations: tuple[Declaration, ...] = ()
    bindings: tuple[Binding, ...] = ()
    expr: Expr = Field(discriminator="kind")


for _model in (ListValue, Keyword, Call, Sum, Product, Power, Neg, Compare, BoolOp, Not, Slice, Index, Binding, Program):
    _model.model_rebuild()
