"""Random tensor programs against an independent evaluator (DESIGN.md §3.1).

``tensor_programs_strategy`` generates well-kinded programs over ``pred``, ``target`` and a
declared input ``w``. Each is parsed with ``lossdsl.parse`` and walked here, node by node,
into plain torch calls in float64 (:class:`Walk`); the compiled loss must give the same
value and the same gradients with respect to every input, its terms must be 0-dim, and
where the scalar top is a weighted sum, the sum of ``weights[k] * terms[k]`` is the total.
The walk shares nothing with the library but the parser.
"""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensor_programs_strategy import tensor_programs

import lossdsl
from lossdsl.syntax import ast

D = torch.float64
EXAMPLES = 600
VALUE_TOL = dict(rtol=1e-10, atol=1e-12)
GRAD_TOL = dict(rtol=1e-8, atol=1e-10, equal_nan=True)

COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
           "==": operator.eq, "!=": operator.ne}
ELEMENTWISE = {"abs": torch.abs, "sign": torch.sign, "relu": torch.relu, "sigmoid": torch.sigmoid,
               "tanh": torch.tanh, "exp": torch.exp, "log": torch.log, "log1p": torch.log1p,
               "sqrt": torch.sqrt, "square": torch.square, "detach": torch.Tensor.detach}
REDUCTIONS = {
    "mean": lambda x, dims, keep, kw: torch.mean(x, dim=dims, keepdim=keep),
    "sum": lambda x, dims, keep, kw: torch.sum(x, dim=dims, keepdim=keep),
    "var": lambda x, dims, keep, kw: torch.var(x, dim=dims, keepdim=keep, correction=kw.get("correction", 1)),
    "std": lambda x, dims, keep, kw: torch.std(x, dim=dims, keepdim=keep, correction=kw.get("correction", 1)),
    "amax": lambda x, dims, keep, kw: torch.amax(x, dim=dims, keepdim=keep),
    "amin": lambda x, dims, keep, kw: torch.amin(x, dim=dims, keepdim=keep),
    "logsumexp": lambda x, dims, keep, kw: torch.logsumexp(x, dim=dims, keepdim=keep),
    "norm": lambda x, dims, keep, kw: torch.linalg.vector_norm(x, ord=kw.get("p", 2), dim=dims, keepdim=keep),
}
# parameters that the documented forms write by position after the operand(s)
POSITIONAL = {"softmax": ["dim"], "log_softmax": ["dim"], "size": ["dim"], "diff": ["n", "dim"],
              "linear": ["start", "end", "steps", "delay"]}


def _num(x):
    """A condition in arithmetic counts as 0/1; numbers stay numbers."""
    return x.to(D) if isinstance(x, torch.Tensor) and x.dtype == torch.bool else x


def _tensor(x):
    return x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=D)


class Walk:
    """The value of a parsed program, read straight off its syntax tree with torch."""

    def __init__(self, program: ast.Program, inputs: dict, step: int) -> None:
        self.inputs, self.step = inputs, step
        self.declared = {name for decl in program.declarations for name in decl.names}
        self.bindings: dict = {}
        for binding in program.bindings:
            self.bindings[binding.name] = self.value(binding.value)
        self.total = self.value(program.expr)

    def literal(self, node):
        if isinstance(node, ast.ListValue):
            return [self.literal(item) for item in node.items]
        if isinstance(node, ast.InputRef):
            return self.inputs[".".join(node.path)]
        return None if isinstance(node, ast.NoneValue) else node.value

    def value(self, node):
        if isinstance(node, (ast.Number, ast.Bool)):
            return node.value
        if isinstance(node, ast.ListValue):
            return torch.tensor([item.value for item in node.items], dtype=D)
        if isinstance(node, ast.Neg):
            return -_num(self.value(node.operand))
        if isinstance(node, (ast.Sum, ast.Product)):
            out = _num(self.value(node.operands[0]))
            ops = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
            for op, operand in zip(node.ops, node.operands[1:]):
                out = ops[op](out, _num(self.value(operand)))
            return out
        if isinstance(node, ast.Power):
            return _num(self.value(node.base)) ** _num(self.value(node.exponent))
        if isinstance(node, ast.Compare):
            return COMPARE[node.op](self.value(node.left), self.value(node.right))
        if isinstance(node, ast.BoolOp):
            join = torch.logical_and if node.op == "and" else torch.logical_or
            out = torch.as_tensor(self.value(node.operands[0]))  # a comparison of numbers is a bool
            for operand in node.operands[1:]:
                out = join(out, torch.as_tensor(self.value(operand)))
            return out
        if isinstance(node, ast.Not):
            return torch.logical_not(torch.as_tensor(self.value(node.operand)))
        if isinstance(node, ast.Index):
            return self.value(node.base)[tuple(self.index_item(item) for item in node.items)]
        if isinstance(node, ast.Call):
            return self.call(node)
        raise AssertionError(f"the walk has no rule for {type(node).__name__}")

    def index_item(self, item):
        if isinstance(item, ast.EllipsisItem):
            return Ellipsis
        if isinstance(item, ast.NewAxis):
            return None
        if isinstance(item, ast.Slice):
            parts = (item.start, item.stop, item.step)
            return slice(*(None if p is None else int(self.value(p)) for p in parts))
        return int(self.value(item))

    def call(self, node: ast.Call):
        name = node.name
        if name in self.bindings and not node.args:
            return self.bindings[name]
        kw = {k.name: self.literal(k.value) for k in node.kwargs}
        args = [self.value(arg) for arg in node.args]
        if name in ("mse", "huber"):
            return self.term(name, kw)
        if name in ("pred", "target") or name in self.declared:
            return self.inputs[name]
        operands = {"where": 3, "min": len(args), "max": len(args), "linear": 0}.get(name, 1)
        kw.update(zip(POSITIONAL.get(name, []), args[operands:]))
        args = [_num(a) for a in args[:operands]] if name != "where" else args
        if name in ELEMENTWISE:
            return ELEMENTWISE[name](_tensor(args[0]))
        if name in REDUCTIONS:
            x, dim = args[0], kw.get("dim")
            dims = tuple(range(x.dim())) if dim is None else tuple(dim) if isinstance(dim, list) else (dim,)
            return REDUCTIONS[name](x, dims, kw.get("keepdim", False), kw)
        if name == "where":
            return torch.where(args[0], _tensor(_num(args[1])), _tensor(_num(args[2])))
        if name in ("min", "max"):
            out = _tensor(args[0])
            for other in args[1:]:
                out = (torch.minimum if name == "min" else torch.maximum)(out, _tensor(other))
            return out
        simple = {
            "softplus": lambda x: F.softplus(x, beta=kw.get("beta", 1)),
            "clamp": lambda x: torch.clamp(x, min=kw.get("min"), max=kw.get("max")),
            "diff": lambda x: torch.diff(x, n=kw.get("n", 1), dim=kw.get("dim", -1)),
            "softmax": lambda x: torch.softmax(x, dim=kw["dim"]),
            "log_softmax": lambda x: torch.log_softmax(x, dim=kw["dim"]),
            "size": lambda x: x.shape[kw["dim"]],
            "watch": lambda x: 0.0,  # logged, adds nothing
        }
        if name in simple:
            return simple[name](args[0])
        if name == "linear":
            tau = min(max((self.step - kw.get("delay", 0)) / kw["steps"], 0.0), 1.0)
            return kw["start"] + (kw["end"] - kw["start"]) * tau
        raise AssertionError(f"the walk does not know {name!r}")

    def term(self, name: str, kw: dict):
        pred, target = self.inputs["pred"], self.inputs["target"]
        if name == "mse":
            values = (pred - target) ** 2
        else:
            values = F.huber_loss(pred, target, reduction="none", delta=kw.get("delta", 1.0))
        if kw.get("weight") is not None:
            values = kw["weight"] * values
        return values if kw.get("reduction", "mean") == "none" else values.mean()


def _inputs(shape, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"pred": torch.randn(shape, dtype=D, generator=gen),
            "target": torch.randn(shape, dtype=D, generator=gen),
            "w": torch.rand(shape, dtype=D, generator=gen) + 0.5}


def _value_and_grads(run, inputs: dict):
    """``run(leaves)`` on fresh leaves, and its gradient with respect to each (None -> 0)."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    total = run(leaves)
    # a program may not depend on its inputs at all (where(pred < 0.5, 0.5, 0.5))
    grads = torch.autograd.grad(total, list(leaves.values()), allow_unused=True) if total.requires_grad \
        else [None] * len(leaves)
    return total.detach(), {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(leaves.items(), grads)}


def test_random_tensor_programs_equal_a_walk_of_their_syntax_tree():
    counts = {"programs": 0, "nonlinear tops": 0, "nonfinite": 0}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=tensor_programs(), seed=st.integers(0, 2**16))
    def one(case, seed):
        counts["programs"] += 1
        crit = lossdsl.compile(case.text)
        inputs = _inputs(case.shape, seed)
        if not case.uses_w:
            del inputs["w"]
        program = lossdsl.parse(case.text)
        want, want_grads = _value_and_grads(lambda x: _tensor(Walk(program, x, case.step).total), inputs)
        if not torch.isfinite(want):
            counts["nonfinite"] += 1
            with pytest.raises(lossdsl.NonFiniteLossError):
                crit(**inputs, step=case.step)
            return
        got, got_grads = _value_and_grads(lambda x: crit(**x, step=case.step), inputs)
        assert got.shape == () and got.dtype == D
        torch.testing.assert_close(got, want.to(D), **VALUE_TOL)
        for name in inputs:
            torch.testing.assert_close(got_grads[name], want_grads[name], **GRAD_TOL,
                                       msg=lambda m: f"d total / d {name}: {m}")
        assert crit.terms and all(v.dim() == 0 for v in crit.terms.values())
        if case.linear:
            weighted = sum(crit.weights[k] * crit.terms[k] for k in crit.terms)
            torch.testing.assert_close(_tensor(weighted).to(D), got, **VALUE_TOL)
        else:
            counts["nonlinear tops"] += 1

    one()
    print(f"tensor programs against the walk: {counts}")
    assert counts["programs"] >= EXAMPLES and counts["nonlinear tops"] >= EXAMPLES // 20
