"""A hypothesis strategy for random well-kinded tensor programs (DESIGN.md §3.1), as text.

The generator works top-down: it is asked for an expression of a given shape and picks a
construct that yields that shape from operands whose shapes it then asks for in turn. A
shape is a tuple of axes, each either ``("b", i, m)`` (axis ``i`` of the inputs' shape,
``m`` long, possibly shortened by a slice, a ``diff`` or a ``keepdim`` reduction) or
``("n",)`` (a new axis of length 1). Axes of the inputs keep their order (there is no
transpose), and an axis may appear twice next to itself (an outer operation,
``x[:, none] - x[none, :]``). Every step back towards the inputs' shape lowers
``_distance``, so a walk from any shape reaches ``pred`` whatever the depth budget.

Broadcasts are of equal rank (an operand has some axes at length 1) or against a number, a
loss or a list as long as the last axis, so programs compile with ``strict=True``. Domains
are kept safe: ``log``/``sqrt`` of ``abs(...) + 1``, ``exp`` of ``tanh``, divisions by
``b * b + 1``, ``var``/``std`` with ``correction=0`` where one element is reduced.

>>> from hypothesis import find
>>> find(tensor_programs(), lambda case: "input w" in case.text).text.startswith("input w")
True
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from hypothesis import strategies as st

BASE_SHAPES = [(4, 3), (2, 5, 3), (6,), (3, 1, 4)]
NUMBERS = ["0.5", "2", "1.5", "0.25", "3", "0.1", "(-1.5)", "-0.5"]
REDUCTIONS = ["mean", "sum", "var", "std", "amax", "amin", "logsumexp", "norm"]
COMPARISONS = ["<", "<=", ">", ">=", "==", "!="]
MAX_RANK = 4


@dataclass
class Case:
    """One generated program: its text, the inputs' shape, the step it is called at,
    whether ``w`` is read, and whether the scalar top is a weighted sum of its terms."""

    text: str
    shape: tuple[int, ...]
    step: int
    uses_w: bool
    linear: bool


def _full(shape):
    return tuple(("b", i, n) for i, n in enumerate(shape))


def _sizes(desc):
    return tuple(1 if axis[0] == "n" else axis[2] for axis in desc)


class _Builder:
    def __init__(self, draw, shape):
        self.draw, self.shape = draw, shape
        self.tensor_names: list[str] = []  # tensor bindings of the inputs' shape
        self.loss_names: list[str] = []

    def pick(self, options):
        return self.draw(st.sampled_from(options))

    def chance(self, p=0.5):
        # a small range: hypothesis draws floats, and integers from a wide range, near 0
        # far more often than uniformly
        return self.draw(st.integers(0, 19)) < 20 * p

    def _distance(self, desc):
        base = [a for a in desc if a[0] == "b"]
        present = {a[1] for a in base}
        short = sum(self.shape[a[1]] - a[2] for a in base)
        return (len(desc) - len(base)) + (len(self.shape) - len(present)) + short + 2 * (len(base) - len(present))

    # --- shapes ---------------------------------------------------------------------

    def random_desc(self):
        desc = list(_full(self.shape))
        for _ in range(self.draw(st.integers(0, 2))):
            move = self.pick(["drop", "short", "new", "twice"])
            k = self.draw(st.integers(0, len(desc) - 1))
            if move == "drop" and len(desc) > 1:
                del desc[k]
            elif move == "short" and desc[k][0] == "b" and desc[k][2] > 1:
                desc[k] = ("b", desc[k][1], self.draw(st.integers(1, desc[k][2] - 1)))
            elif move == "new" and len(desc) < MAX_RANK:
                desc.insert(k, ("n",))
            elif move == "twice" and len(desc) < MAX_RANK and desc[k][0] == "b" \
                    and sum(a == desc[k] for a in desc) == 1:
                desc.insert(k + self.draw(st.integers(0, 1)), desc[k])
        return tuple(desc)

    def ones(self, desc, keep=()):
        """``desc`` with some axes (never those in ``keep``) at length 1."""
        out = list(desc)
        for k, axis in enumerate(desc):
            if k not in keep and axis[0] == "b" and self.chance(0.3):
                out[k] = ("b", axis[1], 1)
        return tuple(out)

    def reduce_text(self, child_text, child, dims, keepdim):
        name = self.pick(REDUCTIONS)
        rank = len(child)
        written = [self.pick([d, d - rank]) for d in dims]
        args = [child_text, f"dim={written[0]}" if len(dims) == 1 and self.chance() else f"dim={written}"]
        if keepdim:
            args.append("keepdim=true")
        if name in ("var", "std"):
            count = math.prod(_sizes(child)[d] for d in dims)
            args.append(f"correction={0 if count <= 1 else self.pick([0, 1])}")
        if name == "norm":
            args.append(f"p={self.pick([1, 2, 3])}")
        return f"{name}({', '.join(args)})"

    @staticmethod
    def index_text(base, rank, k, item):
        if k == rank - 1 and k > 0:
            return f"{base}[..., {item}]"
        return f"{base}[{', '.join([':'] * k + [item])}]"

    def toward_inputs(self, desc, depth):
        """An expression of shape ``desc`` one step nearer the inputs' shape."""
        moves = []
        present = {a[1] for a in desc if a[0] == "b"}
        for k, axis in enumerate(desc):
            if axis[0] == "n":
                moves.append(("new", k))
            elif axis[2] < self.shape[axis[1]]:
                moves.append(("short", k))
            if k + 1 < len(desc) and axis[0] == "b" and desc[k + 1][1:2] == axis[1:2]:
                moves.append(("twice", k))
        moves += [("gone", i) for i in range(len(self.shape)) if i not in present]
        move, k = self.pick(moves)
        if move == "new":
            child = desc[:k] + desc[k + 1:]
            return self.index_text(self.tensor(child, depth), len(desc), k, "none")
        if move == "gone":
            # after every axis of the inputs that comes before axis k
            pos = max([j + 1 for j, a in enumerate(desc) if a[0] == "b" and a[1] < k], default=0)
            child = desc[:pos] + (("b", k, self.shape[k]),) + desc[pos:]
            text = self.tensor(child, depth)
            if self.chance():
                return self.reduce_text(text, child, [pos], keepdim=False)
            j = self.draw(st.integers(-self.shape[k], self.shape[k] - 1))
            return self.index_text(text, len(child), pos, str(j))
        if move == "twice":
            left = desc[:k + 1] + (("n",),) + desc[k + 2:]
            right = desc[:k] + (("n",),) + desc[k + 1:]
            return f"({self.tensor(left, depth)} {self.pick(['-', '+', '*'])} {self.tensor(right, depth)})"
        _, i, m = desc[k]
        how = self.pick(["slice", "diff"] + (["keep"] if m == 1 else []))
        if how == "diff":
            n = self.draw(st.integers(1, min(2, self.shape[i] - m)))
            child = desc[:k] + (("b", i, m + n),) + desc[k + 1:]
            return f"diff({self.tensor(child, depth)}, n={n}, dim={self.pick([k, k - len(desc)])})"
        child = desc[:k] + (("b", i, self.shape[i]),) + desc[k + 1:]
        text = self.tensor(child, depth)
        if how == "keep":
            return self.reduce_text(text, child, [k], keepdim=True)
        start = self.draw(st.integers(0, self.shape[i] - m))
        return self.index_text(text, len(desc), k, f"{start}:{start + m}")

    # --- expressions ------------------------------------------------------------------

    def leaf(self):
        options = ["pred", "target", "w", 'mse(reduction="none")', "huber(delta={d}, reduction=\"none\")",
                   'mse(weight=w, reduction="none")'] + self.tensor_names * 2
        return self.pick(options).replace("{d}", self.pick(["0.5", "1", "2"]))

    def tensor(self, desc, depth):
        """An expression whose value has exactly the shape ``desc``."""
        at_inputs = self._distance(desc) == 0
        if depth <= 0 or self.chance(0.15):
            return self.leaf() if at_inputs else self.toward_inputs(desc, depth - 1)
        d = depth - 1
        form = self.pick(["unary", "unary", "binary", "binary", "where", "where", "extreme", "power", "softmax", "path"])
        if form == "unary":
            x = self.tensor(desc, d)
            return self.pick([
                f"abs({x})", f"sign({x})", f"relu({x})", f"sigmoid({x})", f"tanh({x})",
                f"softplus({x}, beta={self.pick(['0.5', '1', '2'])})", f"exp(tanh({x}))",
                f"log(abs({x}) + 1)", f"log1p(abs({x}))", f"sqrt(abs({x}) + 1)", f"square({x})",
                f"clamp({x}, min=-0.5, max=1)", f"clamp({x}, min=0.25)", f"clamp({x}, max=0)",
                f"detach({x})", f"(-{x})",
            ])
        if form == "binary":
            a, b = self.pair(desc, d, arithmetic=True)
            op = self.pick(["+", "-", "*", "/"])
            return f"({a} / ({b} * {b} + 1))" if op == "/" else f"({a} {op} {b})"
        if form == "where":
            if self.chance(0.7):
                a, b = self.pair(desc, d)
            else:  # the condition alone gives the shape
                a, b = self.like(desc, d), self.like(desc, d)
            return f"where({self.condition(desc, d)}, {a}, {b})"
        if form == "extreme":
            a, b = self.pair(desc, d)
            return f"{self.pick(['min', 'max'])}({a}, {b})"
        if form == "power":
            x = self.tensor(desc, d)
            return self.pick([f"({x} ^ 2)", f"({x} ^ 3)", f"((abs({x}) + 1) ^ 0.5)",
                              f"(2 ^ tanh({x}))", f"((abs({x}) + 1) ^ tanh({self.tensor(self.ones(desc), d)}))"])
        if form == "softmax" and desc:
            k = self.draw(st.integers(0, len(desc) - 1))
            fn = self.pick(["softmax", "log_softmax"])
            return f"{fn}({self.tensor(desc, d)}, {self.pick([f'dim={k}', str(k - len(desc))])})"
        if not at_inputs:
            return self.toward_inputs(desc, d)
        if len(desc) < MAX_RANK:  # a new axis reduced away again
            k = self.draw(st.integers(0, len(desc)))
            child = desc[:k] + (("n",),) + desc[k:]
            return self.reduce_text(self.tensor(child, d), child, [k], keepdim=False)
        return self.leaf()

    def pair(self, desc, depth, arithmetic=False):
        """Two operands that broadcast to exactly ``desc`` (at most one of them a number,
        a loss or a list; a condition only in ``arithmetic``, where it counts as 0/1)."""
        if self.chance(0.4):
            keep = {k for k in range(len(desc)) if self.chance()}
            a = self.tensor(self.ones(desc, keep), depth)
            b = self.tensor(self.ones(desc, set(range(len(desc))) - keep), depth)
        else:
            a, b = self.tensor(desc, depth), self.like(desc, depth, arithmetic)
        return (a, b) if self.chance() else (b, a)

    def like(self, desc, depth, boolean=False):
        """An operand that broadcasts against a tensor of shape ``desc`` without enlarging it;
        a condition only where ``boolean`` (the language takes conditions in arithmetic,
        ``where`` and ``and``/``or``/``not``, not in other functions)."""
        form = self.pick(["number", "tensor", "ones", "loss", "size", "schedule", "list"] + ["condition"] * boolean)
        if form == "number":
            return self.pick(NUMBERS)
        if form == "tensor":
            return self.tensor(desc, depth)
        if form == "ones":
            return self.tensor(self.ones(desc), depth)
        if form == "loss":
            return self.loss(depth)
        if form == "size":
            return f"size(pred, {self.draw(st.integers(-len(self.shape), len(self.shape) - 1))})"
        if form == "schedule":
            return self.pick(["linear(0, 1, steps=10)", "linear(2, -1, steps=5, delay=2)"])
        if form == "list":
            n = _sizes(desc)[-1]
            return "[" + ", ".join(self.pick(["1", "2", "0.5", "-1", "0.25"]) for _ in range(n)) + "]"
        return f"({self.condition(desc, depth)})"

    def condition(self, desc, depth):
        """A boolean tensor of exactly the shape ``desc``."""
        form = self.pick(["compare", "compare", "and", "or", "not", "scheduled"]) if depth > 0 else "compare"
        if form == "compare":
            return f"({self.tensor(desc, depth - 1)} {self.pick(COMPARISONS)} {self.like(desc, depth - 1)})"
        if form == "scheduled":  # a comparison of schedules (a condition without a shape) joined to one
            schedule = self.pick(["linear(0, 1, steps=10)", f"size(pred, {self.draw(st.integers(0, len(self.shape) - 1))})"])
            join = self.pick(["and", "or"])
            return f"(({schedule} {self.pick(COMPARISONS)} 0.5) {join} {self.condition(desc, depth - 1)})"
        if form == "not":
            return f"(not {self.condition(desc, depth - 1)})"
        return f"({self.condition(desc, depth - 1)} {form} {self.condition(desc, depth - 1)})"

    def loss(self, depth):
        """A 0-dim loss: a full reduction, a catalogue term or a loss binding."""
        form = self.pick(["reduce", "reduce", "reduce", "term", "binding"])
        if form == "term":
            return self.pick(["mse", "huber(delta=0.5)", "huber"])
        if form == "binding" and self.loss_names:
            return self.pick(self.loss_names)
        desc = self.random_desc()
        name = self.pick(REDUCTIONS)  # keepdim=true without dim is a tensor, not a loss
        args = [self.tensor(desc, depth)]
        if name in ("var", "std"):
            args.append(f"correction={0 if math.prod(_sizes(desc)) <= 1 else self.pick([0, 1])}")
        if name == "norm":
            args.append(f"p={self.pick([1, 2, 3])}")
        return f"{name}({', '.join(args)})"

    def top(self, depth):
        """The scalar top: a weighted sum of losses, or (``linear`` false) a nonlinear one."""
        terms = [self.loss(depth) for _ in range(self.draw(st.integers(1, 3)))]
        weights = [self.pick(["1", "0.5", "2", "0.1", "linear(0, 1, steps=10)"]) for _ in terms]
        linear = " + ".join(f"{w}*{t}" for w, t in zip(weights, terms))
        if self.chance(0.1):  # a watched loss stands on its own in the sum
            linear += f" + watch({self.loss(depth)})"
        if len(terms) < 2 or self.chance(0.75):
            return linear, True
        a, b = terms[:2]
        return self.pick([f"{a} * {b}", f"log(abs({a}) + 1) + {b}", f"max({a}, {b})", f"min({a}, linear(0, 1, steps=10))*{b}",
                          f"where({a} > {b}, {a}, 2*{b})", f"sqrt(abs({a}) + 1)*{b}"]), False


@st.composite
def tensor_programs(draw, max_depth: int = 4) -> Case:
    """A random well-kinded tensor program over ``pred``, ``target`` and ``input w``."""
    shape = draw(st.sampled_from(BASE_SHAPES))
    g = _Builder(draw, shape)
    lines = []
    if g.chance(0.6):
        lines.append("e = pred - target")
        g.tensor_names.append("e")
    if g.chance(0.4):
        lines.append(f"u = {g.tensor(_full(shape), max_depth - 1)}")
        g.tensor_names.append("u")
    if g.chance(0.4):
        lines.append(f"s = {g.loss(max_depth - 1)}")
        g.loss_names.append("s")
    top, linear = g.top(draw(st.integers(1, max_depth)))
    lines.append(top)
    # a binding that nothing reads is refused ("binding 'e' is never used"): leave it out
    for k in range(len(lines) - 2, -1, -1):
        name = lines[k].split(" = ")[0]
        if not any(re.search(rf"\b{name}\b", line) for line in lines[k + 1:]):
            del lines[k]
    uses_w = any(re.search(r"\bw\b", line) for line in lines)
    if uses_w:
        lines.insert(0, "input w")
    return Case("\n".join(lines), shape, draw(st.integers(0, 12)), uses_w, linear)
