"""The resolved program (IR): immutable plain data, and the one walk over it.

Every name is bound, every hyperparameter validated, every node has a kind. A binding used
many times is one node, so the IR is a DAG; :func:`walk` visits each node once, children
before parents, without recursion. Every later phase (the program, the weights, explain,
suggest) iterates over ``walk`` instead of writing its own traversal.

Kinds: ``const`` (a number known when compiling), ``schedule`` (a number known at call
time, without gradient), ``loss`` (a 0-dim differentiable tensor) and ``tensor`` (any shape).

>>> import lossdsl
>>> ir = lossdsl.check("r = huber(delta=2); 0.7*r + 0.3*mae")
>>> [type(n).__name__ for n in walk(ir.root)]
['Const', 'Term', 'Call', 'Const', 'Term', 'Call', 'Call']
>>> [item.name for item in ir.logged]
['r', 'mae']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

__all__ = [
    "KINDS",
    "join_kinds",
    "Node",
    "Const",
    "ListConst",
    "Input",
    "Route",
    "Term",
    "Call",
    "Balance",
    "Named",
    "Logged",
    "IR",
    "walk",
]

from ..language.functions import KINDS, join_kinds


@dataclass(frozen=True, eq=False)
class Node:
    """Base of the IR nodes. ``depth``: operations on the longest path below, bindings
    inside bindings included (checked against the limit as nodes are made)."""

    kind: str = field(init=False, default="loss")
    span: Any = field(default=None, kw_only=True)
    depth: int = field(default=1, kw_only=True)

    @property
    def children(self) -> tuple["Node", ...]:
        return ()


@dataclass(frozen=True, eq=False)
class Const(Node):
    """A number known when compiling."""

    value: float | int | bool
    kind: str = field(init=False, default="const")


@dataclass(frozen=True, eq=False)
class ListConst(Node):
    """A list literal in an expression: a constant 1-d tensor, made on the inputs' device."""

    values: tuple[float, ...]
    kind: str = field(init=False, default="tensor")


@dataclass(frozen=True, eq=False)
class Input(Node):
    """A call input read by an expression: ``pred``, ``target``, a declared name, ``out.depth``."""

    path: tuple[str, ...]
    kind: str = field(init=False, default="tensor")


@dataclass(frozen=True)
class Route:
    """Where a term's tensor parameter comes from: ``path`` into the call's inputs."""

    param: str
    path: tuple[str, ...]
    required: bool


@dataclass(frozen=True, eq=False)
class Term(Node):
    """One call of a registered term. ``label``: the binding or function name it is logged
    under before repeats are numbered (the final names are in :attr:`IR.logged`)."""

    label: str
    spec: Any  # language.registry.TermSpec
    hyper: tuple[tuple[str, Any], ...]
    routes: tuple[Route, ...]
    kind: str = field(default="loss", kw_only=True)

    def hyperparameter(self, name: str, default: Any = None) -> Any:
        return dict(self.hyper).get(name, default)


@dataclass(frozen=True, eq=False)
class Call(Node):
    """An application of a row of the function table (``language.functions``): operators,
    math, reductions, schedules, ``detach``/``watch``. ``params``: validated parameters."""

    fn: Any  # language.functions.Function or language.schedules.Schedule
    args: tuple[Node, ...]
    params: tuple[tuple[str, Any], ...]
    kind: str = field(default="loss", kw_only=True)

    @property
    def children(self) -> tuple[Node, ...]:
        return self.args

    @property
    def name(self) -> str:
        return self.fn.name

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)


@dataclass(frozen=True, eq=False)
class Balance(Node):
    """``balance(a, b, ..., method=...)``: terms combined by weights a balancer computes."""

    method: Any  # language.balancers.Method
    args: tuple[Node, ...]
    params: tuple[tuple[str, Any], ...]

    @property
    def children(self) -> tuple[Node, ...]:
        return self.args


@dataclass(frozen=True, eq=False)
class Named(Node):
    """A binding whose value is not exactly one call, of kind loss: logged under its name."""

    label: str
    value: Node

    @property
    def children(self) -> tuple[Node, ...]:
        return (self.value,)


@dataclass(frozen=True)
class Logged:
    """A logged item: a term or a named composite, under its unique ``name``."""

    name: str
    node: Node

    @property
    def is_term(self) -> bool:
        """Terms make up the total; named composites are logged beside them."""
        return not isinstance(self.node, Named)


@dataclass(frozen=True, eq=False)
class IR:
    """The whole resolved program.

    ``logged``: terms and named composites in source order, with their unique names (the
    keys of ``crit.terms``); ``inputs_read``: the top-level input names the program reads
    (for ``strict``); ``declared``: the names of ``input`` statements.
    """

    source: str
    canonical: str
    root: Node
    logged: tuple[Logged, ...]
    inputs_read: frozenset[str]
    declared: tuple[str, ...] = ()

    def names(self) -> list[str]:
        return [item.name for item in self.logged]

    def nodes(self) -> list[Node]:
        """Every node reachable from the root or logged, children first, each once."""
        return walk(self.root, *(item.node for item in self.logged))

    def reader_of(self, path: tuple[str, ...]) -> tuple[Node, str | None] | None:
        """What reads the call input ``path`` first: ``(term, parameter)`` for a term, ``(input
        node, None)`` for an expression; None when nothing does."""
        for node in self.nodes():
            if isinstance(node, Input) and node.path == path:
                return node, None
            for route in getattr(node, "routes", ()):
                if route.path == path:
                    return node, route.param
        return None


def walk(*roots: Node, descend: Callable[[Node], bool] | None = None) -> list[Node]:
    """The nodes under ``roots`` in topological order (children before parents), each once.

    Iterative, so a program whose bindings nest thousands deep cannot overflow the stack;
    a node shared by many parents is visited once, so the walk is linear in the DAG.
    ``descend(node)``: whether to go below ``node`` (default: always); a node it stops at is
    still in the walk, its children only if reached another way.

    >>> from lossdsl.resolve.ir import Const, Call, walk
    >>> one = Const(1.0)
    >>> [type(n).__name__ for n in walk(one, one)]
    ['Const']
    """
    order: list[Node] = []
    done: set[int] = set()
    stack: list[tuple[Node, Iterator[Node]]] = []
    for root in roots:
        if id(root) in done:
            continue
        done.add(id(root))
        stack.append((root, iter(root.children if descend is None or descend(root) else ())))
        while stack:
            node, pending = stack[-1]
            for child in pending:
                if id(child) not in done:
                    done.add(id(child))
                    below = child.children if descend is None or descend(child) else ()
                    stack.append((child, iter(below)))
                    break
            else:
                stack.pop()
                order.append(node)
    return order
