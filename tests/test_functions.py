"""Every row of the function table (DESIGN.md §3.1), applied in a program to tensors: the
value against the same formula written in PyTorch (float64, 1e-10), the gradient by
``torch.autograd.gradcheck`` (or, for the rows that pass none, that none reaches ``pred``),
finite values and gradients at extremes where torch's function is finite, and for each row
with a derivative rule the effective weight of a term under it in the scalar top against
``torch.autograd.grad`` of the total. The cases are keyed by row: a new row without a case
fails ``test_every_row_has_a_case``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.language.functions import FUNCTIONS, OPERATORS

D = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)


@dataclass(frozen=True)
class Case:
    text: str
    ref: Callable  # (pred, target) -> the total, in torch
    grad: bool = True  # whether a gradient reaches pred
    positive: bool = False  # pred drawn from [0.5, 2] (log, sqrt)
    numeric: bool = True  # False: finite differences also move what detach holds still


def _c(text, ref, **kw):
    return Case(text, ref, **kw)


def _sign_agree(p, t):
    return torch.sign(p) == torch.sign(t)


# One or more programs per row; each is the row applied to tensors, next to its formula.
ROW_CASES: dict[str, list[Case]] = {
    "abs": [_c("mean(abs(pred - target))", lambda p, t: (p - t).abs().mean())],
    "sign": [_c("mean(sign(pred) * target)", lambda p, t: (torch.sign(p) * t).mean(), grad=False)],
    "relu": [_c("mean(relu(pred - target))", lambda p, t: F.relu(p - t).mean())],
    "sigmoid": [_c("sum(sigmoid(pred) * target)", lambda p, t: (torch.sigmoid(p) * t).sum())],
    "softplus": [
        _c("sum(softplus(pred, beta=2))", lambda p, t: F.softplus(p, beta=2).sum()),
        _c("mean(softplus(pred - target))", lambda p, t: F.softplus(p - t).mean()),
    ],
    "tanh": [_c("mean(tanh(pred) * target)", lambda p, t: (torch.tanh(p) * t).mean())],
    "exp": [_c("mean(exp(pred) * target)", lambda p, t: (torch.exp(p) * t).mean())],
    "log": [_c("mean(log(pred))", lambda p, t: torch.log(p).mean(), positive=True)],
    "log1p": [_c("sum(log1p(pred) * target)", lambda p, t: (torch.log1p(p) * t).sum(), positive=True)],
    "sqrt": [_c("sum(sqrt(pred))", lambda p, t: torch.sqrt(p).sum(), positive=True)],
    "square": [_c("mean(square(pred - target))", lambda p, t: torch.square(p - t).mean())],
    "clamp": [
        _c("mean(clamp(pred, min=-0.5, max=0.5) * target)", lambda p, t: (p.clamp(-0.5, 0.5) * t).mean()),
        _c("sum(clamp(pred, min=0))", lambda p, t: p.clamp(min=0).sum()),
        _c("sum(clamp(pred - target, max=0.3))", lambda p, t: (p - t).clamp(max=0.3).sum()),
    ],
    "min": [
        _c("mean(min(pred, target))", lambda p, t: torch.minimum(p, t).mean()),
        _c("sum(min(pred, target, 0.2))", lambda p, t: torch.minimum(torch.minimum(p, t), torch.tensor(0.2, dtype=D)).sum()),
    ],
    "max": [
        _c("mean(max(pred, target))", lambda p, t: torch.maximum(p, t).mean()),
        _c("sum(max(pred, 0) * target)", lambda p, t: (F.relu(p) * t).sum()),
    ],
    "where": [
        _c("mean(where(pred > target, pred^2, 3*pred))", lambda p, t: torch.where(p > t, p**2, 3 * p).mean()),
        _c("sum(where(pred > 0, pred, 0))", lambda p, t: torch.where(p > 0, p, 0.0).sum()),
    ],
    "mean": [
        _c("mean(pred)", lambda p, t: p.mean()),
        _c("sum(mean(pred, dim=0)^2)", lambda p, t: (p.mean(dim=0) ** 2).sum()),
        _c("sum(mean(pred, dim=[0, 1], keepdim=true) * target)", lambda p, t: (p.mean(dim=(0, 1), keepdim=True) * t).sum()),
        # keepdim=true keeps (4, 1), which broadcasts against target's (4, 3)
        _c("sum(mean(pred, dim=1, keepdim=true) * target)", lambda p, t: (p.mean(dim=1, keepdim=True) * t).sum()),
    ],
    "sum": [
        _c("sum(pred^2)", lambda p, t: (p**2).sum()),
        _c("mean(sum(pred, dim=-1)^2)", lambda p, t: (p.sum(dim=-1) ** 2).mean()),
        _c("sum(sum(pred, dim=0, keepdim=true) * target)", lambda p, t: (p.sum(dim=0, keepdim=True) * t).sum()),
    ],
    "var": [
        _c("var(pred)", lambda p, t: p.var()),
        _c("mean(var(pred, dim=0, correction=0))", lambda p, t: p.var(dim=0, correction=0).mean()),
        _c("sum(var(pred, dim=1, keepdim=true) * target)", lambda p, t: (p.var(dim=1, keepdim=True) * t).sum()),
    ],
    "std": [
        _c("std(pred)", lambda p, t: p.std()),
        _c("sum(std(pred, dim=1, correction=0))", lambda p, t: p.std(dim=1, correction=0).sum()),
        _c("sum(std(pred, dim=1, keepdim=true) * target)", lambda p, t: (p.std(dim=1, keepdim=True) * t).sum()),
        _c("sum(std(pred, dim=[0, 1], correction=2))", lambda p, t: p.std(dim=(0, 1), correction=2)),
    ],
    "amax": [
        _c("amax(pred)", lambda p, t: p.amax()),
        _c("mean(amax(pred, dim=1))", lambda p, t: p.amax(dim=1).mean()),
        _c("sum(amax(pred, dim=1, keepdim=true) * target)", lambda p, t: (p.amax(dim=1, keepdim=True) * t).sum()),
    ],
    "amin": [
        _c("amin(pred)", lambda p, t: p.amin()),
        _c("sum(amin(pred, dim=0, keepdim=true) * target)", lambda p, t: (p.amin(dim=0, keepdim=True) * t).sum()),
    ],
    "logsumexp": [
        _c("logsumexp(pred)", lambda p, t: torch.logsumexp(p.flatten(), dim=0)),
        _c("mean(logsumexp(pred, dim=-1))", lambda p, t: torch.logsumexp(p, dim=-1).mean()),
        _c("sum(logsumexp(pred, dim=[1], keepdim=true) * target)",
           lambda p, t: (torch.logsumexp(p, dim=1, keepdim=True) * t).sum()),
    ],
    "norm": [
        _c("norm(pred)", lambda p, t: torch.linalg.vector_norm(p)),
        _c("norm(pred, p=3)", lambda p, t: torch.linalg.vector_norm(p, ord=3)),
        _c("mean(norm(pred - target, dim=1, p=1))", lambda p, t: torch.linalg.vector_norm(p - t, ord=1, dim=1).mean()),
        _c("sum(norm(pred, dim=0, keepdim=true) * target)",
           lambda p, t: (torch.linalg.vector_norm(p, dim=0, keepdim=True) * t).sum()),
    ],
    "diff": [
        _c("sum(diff(pred, n=2, dim=0)^2)", lambda p, t: (torch.diff(p, n=2, dim=0) ** 2).sum()),
        _c("mean(abs(diff(pred)))", lambda p, t: torch.diff(p).abs().mean()),
    ],
    "softmax": [
        _c("mean(softmax(pred, dim=-1) * target)", lambda p, t: (torch.softmax(p, dim=-1) * t).mean()),
        _c("sum(softmax(pred, dim=0)^2)", lambda p, t: (torch.softmax(p, dim=0) ** 2).sum()),
    ],
    "log_softmax": [
        _c("mean(log_softmax(pred, dim=1) * target)", lambda p, t: (torch.log_softmax(p, dim=1) * t).mean()),
    ],
    "size": [
        _c("size(pred, 1) * mean(target)", lambda p, t: p.shape[1] * t.mean(), grad=False),
        _c("sum(pred) / size(pred, 0)", lambda p, t: p.sum() / p.shape[0]),
        _c("mean(pred) * size(pred, -1)", lambda p, t: p.mean() * p.shape[-1]),
    ],
    "detach": [
        _c("mean(detach(pred) * target)", lambda p, t: (p.detach() * t).mean(), grad=False),
        _c("mean(detach(pred) * pred)", lambda p, t: (p.detach() * p).mean(), numeric=False),
    ],
    "watch": [_c("mean(pred^2) + watch(mean(abs(pred)))", lambda p, t: (p**2).mean())],
    "add": [_c("mean((pred + 2*target - 1)^2)", lambda p, t: ((p + 2 * t - 1) ** 2).mean())],
    "multiply": [_c("mean(pred * target / (1 + pred^2))", lambda p, t: (p * t / (1 + p**2)).mean())],
    "pow": [
        _c("mean(pred ^ 2)", lambda p, t: (p**2).mean()),
        _c("mean(abs(pred) ** 1.5)", lambda p, t: (p.abs() ** 1.5).mean()),
        _c("mean(2 ^ pred)", lambda p, t: (2**p).mean()),
        _c("mean((1 + pred^2) ^ target)", lambda p, t: ((1 + p**2) ** t).mean()),
    ],
    "neg": [_c("mean(-pred * target)", lambda p, t: (-p * t).mean())],
    "<": [_c("mean(pred < target)", lambda p, t: (p < t).to(D).mean(), grad=False)],
    "<=": [_c("sum(pred <= 0.1)", lambda p, t: (p <= 0.1).to(D).sum(), grad=False)],
    ">": [
        _c("mean(pred > target)", lambda p, t: (p > t).to(D).mean(), grad=False),
        _c("mean(where(pred > target, pred, 0))", lambda p, t: torch.where(p > t, p, 0.0).mean()),
    ],
    ">=": [_c("mean((pred >= target) * target)", lambda p, t: ((p >= t).to(D) * t).mean(), grad=False)],
    "==": [_c("mean(sign(pred) == sign(target))", lambda p, t: _sign_agree(p, t).to(D).mean(), grad=False)],
    "!=": [_c("mean(sign(pred) != sign(target))", lambda p, t: (~_sign_agree(p, t)).to(D).mean(), grad=False)],
    "index": [
        _c("mean(pred[..., 0])", lambda p, t: p[..., 0].mean()),
        _c("sum(pred[1:3, ::2] * target[-1, ::2])", lambda p, t: (p[1:3, ::2] * t[-1, ::2]).sum()),
        _c("sum(relu(pred[:, none] - pred[none, :]))", lambda p, t: F.relu(p[:, None] - p[None, :]).sum()),
        _c("mean(pred[-1][1:] * target[0, none, 1:])", lambda p, t: (p[-1][1:] * t[0, None, 1:]).mean()),
    ],
    "and": [
        _c("mean(pred > 0 and target > 0)", lambda p, t: ((p > 0) & (t > 0)).to(D).mean(), grad=False),
        _c("mean(where(pred > 0 and target < 0, pred, 0))", lambda p, t: torch.where((p > 0) & (t < 0), p, 0.0).mean()),
    ],
    "or": [
        _c("mean(pred > 1 or target > 1)", lambda p, t: ((p > 1) | (t > 1)).to(D).mean(), grad=False),
        _c("mean(where(pred > 1 or pred < -1, pred^2, 0))", lambda p, t: torch.where((p > 1) | (p < -1), p**2, 0.0).mean()),
    ],
    "not": [_c("mean(not (pred > 0))", lambda p, t: (~(p > 0)).to(D).mean(), grad=False)],
}

CASES = [case for cases in ROW_CASES.values() for case in cases]
ROWS = sorted(set(FUNCTIONS) | set(OPERATORS))


def _inputs(case: Case, seed: int = 0, shape=(4, 3)):
    g = torch.Generator().manual_seed(seed)
    if case.positive:
        pred = 0.5 + 1.5 * torch.rand(*shape, dtype=D, generator=g)
    else:
        pred = torch.randn(*shape, dtype=D, generator=g)
    return pred, torch.randn(*shape, dtype=D, generator=g)


def _ids(cases):
    return [c.text for c in cases]


@pytest.mark.parametrize("row", ROWS)
def test_every_row_has_a_case(row):
    assert ROW_CASES.get(row), f"the function table's row {row!r} has no case in ROW_CASES"


def test_cases_name_only_rows_of_the_table():
    assert set(ROW_CASES) <= set(ROWS)


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_value_equals_the_torch_formula(case):
    for seed in (0, 1):
        pred, target = _inputs(case, seed)
        got = lossdsl.compile(case.text)(pred, target)
        assert got.dtype == D and got.dim() == 0
        torch.testing.assert_close(got, case.ref(pred, target).to(D), **TOL)


@pytest.mark.parametrize("case", [c for c in CASES if c.grad], ids=_ids([c for c in CASES if c.grad]))
def test_gradcheck(case):
    pred, target = _inputs(case)
    crit = lossdsl.compile(case.text)
    pred.requires_grad_(True)
    if case.numeric:
        assert torch.autograd.gradcheck(lambda p: crit(p, target), (pred,), eps=1e-6, atol=1e-7)
    # and it is the formula's gradient
    got = torch.autograd.grad(crit(pred, target), pred)[0]
    want = torch.autograd.grad(case.ref(pred, target), pred)[0]
    torch.testing.assert_close(got, want, **TOL)


def _gradient_or_zero(out, pred):
    if not out.requires_grad:
        return torch.zeros_like(pred)
    g = torch.autograd.grad(out, pred, allow_unused=True)[0]
    return torch.zeros_like(pred) if g is None else g


@pytest.mark.parametrize("case", [c for c in CASES if not c.grad], ids=_ids([c for c in CASES if not c.grad]))
def test_rows_that_pass_no_gradient(case):
    pred, target = _inputs(case)
    pred.requires_grad_(True)
    out = lossdsl.compile(case.text)(pred, target)
    assert torch.equal(_gradient_or_zero(out, pred), torch.zeros_like(pred))


# DESIGN §3.1: gradients flow through everything except comparisons, sign, detach and size
# (and the logical operators on conditions)
NO_GRADIENT = {"<", "<=", ">", ">=", "==", "!=", "and", "or", "not", "sign", "detach", "size"}


def test_the_rows_shown_to_pass_no_gradient_are_the_documented_ones():
    shown = {row for row, cases in ROW_CASES.items() if any(not c.grad for c in cases)}
    assert shown == NO_GRADIENT


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_canonical_text_compiles_to_the_same_value(case):
    pred, target = _inputs(case)
    canonical = lossdsl.unparse(lossdsl.parse(case.text))
    assert torch.equal(lossdsl.compile(canonical)(pred, target), lossdsl.compile(case.text)(pred, target))


# --- extremes: finite where torch's function is finite -----------------------------------

def _extreme_pred(dtype):
    return torch.tensor([[-100.0, 100.0, 0.5], [100.0, 99.0, -100.0]], dtype=dtype)


def _extreme_error(dtype):  # errors of 1e4 against a zero target
    return torch.tensor([[1e4, -1e4], [2.0, -1e4]], dtype=dtype)


EXTREMES = [
    # (program, reference, pred from a dtype, target from pred)
    ("mean(abs(pred - target))", lambda p, t: (p - t).abs().mean(), _extreme_error, torch.zeros_like),
    ("mean(square(pred - target))", lambda p, t: ((p - t) ** 2).mean(), _extreme_error, torch.zeros_like),
    ("sum(sigmoid(pred) * target)", lambda p, t: (torch.sigmoid(p) * t).sum(), _extreme_pred, torch.ones_like),
    ("sum(softplus(pred) * target)", lambda p, t: (F.softplus(p) * t).sum(), _extreme_pred, torch.ones_like),
    ("sum(softplus(pred, beta=2))", lambda p, t: F.softplus(p, beta=2).sum(), _extreme_pred, torch.ones_like),
    ("sum(tanh(pred) * target)", lambda p, t: (torch.tanh(p) * t).sum(), _extreme_pred, torch.ones_like),
    ("sum(log_softmax(pred, dim=-1) * target)", lambda p, t: (torch.log_softmax(p, -1) * t).sum(),
     _extreme_pred, torch.ones_like),
    ("sum(softmax(pred, dim=-1) * target)", lambda p, t: (torch.softmax(p, -1) * t).sum(), _extreme_pred, torch.ones_like),
    ("logsumexp(pred)", lambda p, t: torch.logsumexp(p.flatten(), 0), _extreme_pred, torch.ones_like),
    ("sum(logsumexp(pred, dim=1) * target[:, 0])", lambda p, t: (torch.logsumexp(p, 1) * t[:, 0]).sum(),
     _extreme_pred, torch.ones_like),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("text, ref, make_pred, make_target", EXTREMES, ids=[e[0] for e in EXTREMES])
def test_extremes_stay_finite(text, ref, make_pred, make_target, dtype):
    pred = make_pred(dtype)
    target = make_target(pred)
    mine, theirs = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    want = ref(theirs, target)
    want.backward()
    assert torch.isfinite(want) and torch.isfinite(theirs.grad).all()  # torch's function is finite here
    got = lossdsl.compile(text)(mine, target)
    got.backward()
    assert torch.isfinite(got) and torch.isfinite(mine.grad).all()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else TOL
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(mine.grad, theirs.grad, **tol)


# --- derivative rules: the weight of a term under a function in the scalar top ----------

# (program, names of its terms in order, total over those terms in torch)
SCALAR_CASES: dict[str, list[tuple[str, list[str], Callable]]] = {
    "abs": [("abs(mse - 1) + mae", ["mse", "mae"], lambda v: (v["mse"] - 1).abs() + v["mae"])],
    "relu": [("relu(mse - 1) + 0.5*mae", ["mse", "mae"], lambda v: F.relu(v["mse"] - 1) + 0.5 * v["mae"])],
    "sigmoid": [("sigmoid(mse) * mae", ["mse", "mae"], lambda v: torch.sigmoid(v["mse"]) * v["mae"])],
    "softplus": [
        ("softplus(mse)", ["mse"], lambda v: F.softplus(v["mse"])),
        ("softplus(mse - 2*mae, beta=3)", ["mse", "mae"], lambda v: F.softplus(v["mse"] - 2 * v["mae"], beta=3)),
    ],
    "tanh": [("tanh(mse) + tanh(2*mae)", ["mse", "mae"], lambda v: torch.tanh(v["mse"]) + torch.tanh(2 * v["mae"]))],
    "exp": [("exp(mse)", ["mse"], lambda v: torch.exp(v["mse"])),
            ("exp(-mae) * mse", ["mae", "mse"], lambda v: torch.exp(-v["mae"]) * v["mse"])],
    "log": [("log(mse) + 0.5*mae", ["mse", "mae"], lambda v: torch.log(v["mse"]) + 0.5 * v["mae"])],
    "log1p": [("log1p(mse * mae)", ["mse", "mae"], lambda v: torch.log1p(v["mse"] * v["mae"]))],
    "sqrt": [("sqrt(mse) + sqrt(mae + 1)", ["mse", "mae"], lambda v: v["mse"].sqrt() + (v["mae"] + 1).sqrt())],
    "square": [("square(mse - mae)", ["mse", "mae"], lambda v: (v["mse"] - v["mae"]) ** 2)],
    "clamp": [
        ("clamp(mse, max=1)", ["mse"], lambda v: v["mse"].clamp(max=1)),
        ("clamp(mse, min=0.5) + clamp(mae, min=0.1, max=1)", ["mse", "mae"],
         lambda v: v["mse"].clamp(min=0.5) + v["mae"].clamp(0.1, 1)),
    ],
    "min": [("min(mse, mae)", ["mse", "mae"], lambda v: torch.minimum(v["mse"], v["mae"])),
            ("min(mse, 2*mae, 1)", ["mse", "mae"], lambda v: torch.clamp(torch.minimum(v["mse"], 2 * v["mae"]), max=1))],
    "max": [("max(mse, mae) + max(mse, 1)", ["mse", "mae", "mse_2"],
             lambda v: torch.maximum(v["mse"], v["mae"]) + v["mse_2"].clamp(min=1))],
    "where": [
        ("where(mse > 1, mse, 2*mae)", ["mse", "mse_2", "mae"],
         lambda v: torch.where(v["mse"] > 1, v["mse_2"], 2 * v["mae"])),
        ("m = mse\nwhere(m > 1, m, 2*mae)", ["m", "mae"], lambda v: torch.where(v["m"] > 1, v["m"], 2 * v["mae"])),
    ],
    "watch": [("mse + watch(mae)", ["mse", "mae"], lambda v: v["mse"] + 0 * v["mae"])],
    "add": [("mse - 0.5*mae + 3", ["mse", "mae"], lambda v: v["mse"] - 0.5 * v["mae"] + 3)],
    "multiply": [("mse * mae / (1 + mse)", ["mse", "mae", "mse_2"], lambda v: v["mse"] * v["mae"] / (1 + v["mse_2"]))],
    "pow": [("mse ^ 1.5 + 2 ^ mae", ["mse", "mae"], lambda v: v["mse"] ** 1.5 + 2 ** v["mae"]),
            ("mse ^ mae", ["mse", "mae"], lambda v: v["mse"] ** v["mae"])],
    "neg": [("-mse + 2*mae", ["mse", "mae"], lambda v: -v["mse"] + 2 * v["mae"])],
    # rows without a rule pass no gradient to the weights
    "sign": [("mse + sign(mae)", ["mse", "mae"], lambda v: v["mse"] + torch.sign(v["mae"]).detach())],
    "detach": [("detach(mse) * mae", ["mse", "mae"], lambda v: v["mse"].detach() * v["mae"])],
}

SCALAR = [(row, *case) for row, cases in SCALAR_CASES.items() for case in cases]
RULE_ROWS = sorted(name for name, fn in {**FUNCTIONS, **OPERATORS}.items() if fn.grad is not None)


@pytest.mark.parametrize("row", RULE_ROWS)
def test_every_row_with_a_derivative_rule_has_a_scalar_case(row):
    assert SCALAR_CASES.get(row), f"row {row!r} has a derivative rule but no case in SCALAR_CASES"


def _term_values(names, pred, target):
    base = {"mse": F.mse_loss(pred, target), "mae": F.l1_loss(pred, target)}
    base["m"] = base["mse"]
    return {name: base[name.split("_")[0]] for name in names}


@pytest.mark.parametrize("scale", [0.3, 3.0])  # mse below and above 1: both sides of every kink
@pytest.mark.parametrize("row, text, names, total", SCALAR, ids=[f"{s[0]}: {s[1]}" for s in SCALAR])
def test_weight_under_a_function_is_the_derivative_of_the_total(row, text, names, total, scale):
    g = torch.Generator().manual_seed(3)
    pred = scale * torch.randn(5, 4, dtype=D, generator=g)
    target = 0.1 * torch.randn(5, 4, dtype=D, generator=g)
    crit = lossdsl.compile(text)
    got = crit(pred, target)
    values = _term_values(names, pred, target)
    assert list(crit.terms) == names
    for name in names:
        torch.testing.assert_close(crit.terms[name], values[name], **TOL)
    leaves = {k: v.clone().requires_grad_(True) for k, v in values.items()}
    want = total(leaves)
    torch.testing.assert_close(got, want.detach(), **TOL)
    grads = torch.autograd.grad(want, list(leaves.values()), allow_unused=True)
    for name, grad in zip(leaves, grads):
        expected = torch.zeros((), dtype=D) if grad is None else grad
        assert crit.weights[name].dtype == D
        torch.testing.assert_close(crit.weights[name], expected, **TOL, msg=lambda m: f"{name}: {m}")
