"""What tensor programs mean (DESIGN.md §3.1), through the public API: which calls are terms
and how they are named, their weights over the scalar top against ``torch.autograd``, scalar
conditions, list literals, conditions as 0/1, unreduced terms, gradients, ``torch.compile``,
half precision and the canonical text. Every value is checked against the same formula
written here in PyTorch; the errors are in ``test_tensor_errors.py``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lossdsl

D = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)


def _randn(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(seed))


def _leaf_grads(total_fn, values: dict) -> dict:
    """``d total / d value`` for each named value, by autograd over leaves (None -> 0)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in values.items()}
    grads = torch.autograd.grad(total_fn(leaves), list(leaves.values()), allow_unused=True)
    return {k: torch.zeros((), dtype=D) if g is None else g for k, g in zip(leaves, grads)}


def _assert_terms(crit, expected: dict):
    assert set(crit.terms) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(crit.terms[name], value.to(D), **TOL, msg=lambda m: f"{name}: {m}")


# --- names and kinds -----------------------------------------------------------------------

def test_inline_terms_are_named_after_their_function_in_source_order():
    p, t = _randn(5, 3), _randn(5, 3, seed=1)
    crit = lossdsl.compile("mean(pred) + mean(target) + var(pred)")
    torch.testing.assert_close(crit(p, t), p.mean() + t.mean() + p.var(), **TOL)
    assert list(crit.terms) == ["mean", "mean_2", "var"]
    _assert_terms(crit, {"mean": p.mean(), "mean_2": t.mean(), "var": p.var()})


def test_inline_names_skip_a_name_that_a_binding_has():
    p, t = _randn(5, 3), _randn(5, 3, seed=1)
    crit = lossdsl.compile("mean_2 = mse\nmean(pred) + mean(target) + mean_2")
    crit(p, t)
    _assert_terms(crit, {"mean_2": F.mse_loss(p, t), "mean": p.mean(), "mean_3": t.mean()})


def test_a_loss_binding_is_a_term_and_a_tensor_binding_is_not():
    p, t = _randn(5, 3), _randn(5, 3, seed=1)
    crit = lossdsl.compile("e = pred - target\nr = mse\nr + 0.5*mean(abs(e))")
    torch.testing.assert_close(crit(p, t), F.mse_loss(p, t) + 0.5 * (p - t).abs().mean(), **TOL)
    assert list(crit.terms) == ["r", "mean"]
    _assert_terms(crit, {"r": F.mse_loss(p, t), "mean": (p - t).abs().mean()})
    assert {k: float(v) for k, v in crit.weights.items()} == {"r": 1.0, "mean": 0.5}


@pytest.mark.parametrize("text, terms, weights", [
    ("e = pred - target\ns = mean(e^2)\ns + 0.5*mean(abs(e))",
     {"s": lambda p: ((p - 1) ** 2).mean(), "mean": lambda p: (p - 1).abs().mean()}, {"s": 1.0, "mean": 0.5}),
    ("s = mean(pred)\nmean(relu(pred - s)) + s",  # s also inside a tensor operation
     {"s": lambda p: p.mean(), "mean": lambda p: F.relu(p - p.mean()).mean()}, {"s": 1.0, "mean": 1.0}),
])
def test_a_binding_of_one_inline_call_is_one_term_named_by_the_binding(text, terms, weights):
    p = _randn(6, 3)
    crit = lossdsl.compile(text)
    total = crit(p, torch.ones(6, 3, dtype=D))
    _assert_terms(crit, {name: f(p) for name, f in terms.items()})
    assert list(crit.terms) == list(terms)
    assert {k: float(v) for k, v in crit.weights.items()} == weights
    # a linear program: its total is the weighted sum of its terms
    torch.testing.assert_close(sum(crit.weights[k] * crit.terms[k] for k in crit.terms), total, **TOL)


WEIGHTED_TOPS = [
    ("log(mean(pred^2)) + mean(abs(pred)) * var(pred) - sqrt(sum(target^2))/2",
     {"mean": lambda p, t: (p**2).mean(), "mean_2": lambda p, t: p.abs().mean(), "var": lambda p, t: p.var(),
      "sum": lambda p, t: (t**2).sum()},
     lambda v: torch.log(v["mean"]) + v["mean_2"] * v["var"] - torch.sqrt(v["sum"]) / 2),
    ("exp(-mean(pred^2)) * mae + max(amax(pred), 0.5)",
     {"mean": lambda p, t: (p**2).mean(), "mae": lambda p, t: (p - t).abs().mean(), "amax": lambda p, t: p.amax()},
     lambda v: torch.exp(-v["mean"]) * v["mae"] + torch.clamp(v["amax"], min=0.5)),
]


@pytest.mark.parametrize("text, formulas, total", WEIGHTED_TOPS, ids=[w[0] for w in WEIGHTED_TOPS])
def test_weights_of_inline_terms_are_derived_over_the_scalar_top(text, formulas, total):
    p, t = _randn(5, 3), _randn(5, 3, seed=1)
    values = {name: f(p, t) for name, f in formulas.items()}
    crit = lossdsl.compile(text)
    torch.testing.assert_close(crit(p, t), total(values), **TOL)
    assert list(crit.terms) == list(formulas)
    _assert_terms(crit, values)
    for name, want in _leaf_grads(total, values).items():
        torch.testing.assert_close(crit.weights[name], want, **TOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("scale, weights", [(0.3, {"mse": 0.0, "mse_2": 0.0, "mae": 2.0}),
                                            (3.0, {"mse": 0.0, "mse_2": 1.0, "mae": 0.0})])
def test_a_scalar_condition_picks_a_branch_and_the_weights_follow_it(scale, weights):
    p, t = _randn(6, 3, scale=scale), _randn(6, 3, seed=1, scale=0.1)
    mse, mae = F.mse_loss(p, t), F.l1_loss(p, t)
    assert (mse > 1) == (scale > 1)
    crit = lossdsl.compile("where(mse > 1, mse, 2*mae)")
    got = crit(p, t)
    assert got.dim() == 0
    torch.testing.assert_close(got, mse if mse > 1 else 2 * mae, **TOL)
    assert {k: float(v) for k, v in crit.weights.items()} == weights


# --- lists and conditions ------------------------------------------------------------------

def test_a_list_weights_the_last_axis_in_the_inputs_dtype():
    # 0.1 is not exact in float32: a list made in float32 would be off by some 1e-10 relative
    p, t = _randn(2, 4, 3), _randn(2, 4, 3, seed=1)
    got = lossdsl.compile("mean([0.1, 0.2, 0.7] * abs(pred - target))")(p, t)
    want = (torch.tensor([0.1, 0.2, 0.7], dtype=D) * (p - t).abs()).mean()
    assert got.dtype == D
    torch.testing.assert_close(got, want, rtol=1e-13, atol=0)


def test_a_list_that_meets_no_tensor_takes_preds_dtype():
    p = _randn(4, 3)
    crit = lossdsl.compile("sum([0.1, 0.2]) + mean(pred)")
    torch.testing.assert_close(crit(p), torch.tensor(0.1, dtype=D) + 0.2 + p.mean(), **TOL)
    assert crit.terms["sum"].dtype == D and crit.terms["sum"].item() == 0.1 + 0.2


def test_a_list_in_half_precision_stays_half():
    p = _randn(4, 3).half()
    got = lossdsl.compile("sum([0.1, 0.2, 0.7] * pred)")(p)
    assert got.dtype == torch.float16  # a float32 list would have promoted the product
    want = (torch.tensor([0.1, 0.2, 0.7], dtype=torch.float16) * p).float().sum()
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2)


def test_a_list_on_the_meta_device():
    p = torch.empty(4, 3, dtype=D, device="meta")
    got = lossdsl.compile("mean([1, 2, 0.5] * abs(pred - target))")(p, p)
    assert got.device.type == "meta" and got.dtype == D and got.shape == ()


def test_a_loss_runs_on_the_cpu_after_a_meta_call():
    crit = lossdsl.compile("mean([1, 2, 0.5] * pred)")
    crit(torch.empty(4, 3, dtype=D, device="meta"))
    p = _randn(4, 3)
    torch.testing.assert_close(crit(p), (torch.tensor([1, 2, 0.5], dtype=D) * p).mean(), **TOL)


CONDITIONS = [
    ("sum(pred > 0) / size(pred, 0)", lambda p, t: (p > 0).to(D).sum() / p.shape[0]),
    ("sum(mean(pred > target, dim=0) * [1, 2, 3])",
     lambda p, t: ((p > t).to(D).mean(0) * torch.tensor([1.0, 2, 3], dtype=D)).sum()),
    ("mean((pred > 0) * pred - (target < 0))", lambda p, t: ((p > 0).to(D) * p - (t < 0).to(D)).mean()),
    ("mean(not (pred > 0) and target > 0) + mse", lambda p, t: (~(p > 0) & (t > 0)).to(D).mean() + F.mse_loss(p, t)),
]


@pytest.mark.parametrize("text, ref", CONDITIONS, ids=[c[0] for c in CONDITIONS])
def test_conditions_count_as_zero_or_one(text, ref):
    p, t = _randn(6, 3), _randn(6, 3, seed=1)
    torch.testing.assert_close(lossdsl.compile(text)(p, t), ref(p, t), **TOL)


# --- unreduced terms -----------------------------------------------------------------------

def test_an_unreduced_term_times_an_input():
    p, t, w = _randn(5, 3), _randn(5, 3, seed=1), _randn(5, 3, seed=2).abs()
    crit = lossdsl.compile('input w\nmean(mse(reduction="none") * w)')
    torch.testing.assert_close(crit(p, t, w=w), (w * (p - t) ** 2).mean(), **TOL)
    assert list(crit.terms) == ["mean"]


def test_an_unreduced_term_multiplies_its_weight_and_zeroes_masked_positions():
    p, t, w, v = _randn(5, 3), _randn(5, 3, seed=1), _randn(5, 3, seed=2).abs(), _randn(5, 3, seed=3)
    mask = _randn(5, 3, seed=4) > 0
    p = torch.where(mask, p, torch.nan).requires_grad_(True)  # garbage where masked
    text = 'input v\nsum(mse(reduction="none", weight=weight, mask=mask) * v)'
    got = lossdsl.compile(text)(p, t, weight=w, mask=mask, v=v)
    e = torch.where(mask, p.detach() - t, 0.0)
    torch.testing.assert_close(got, (w * e**2 * v).sum(), **TOL)
    got.backward()
    torch.testing.assert_close(p.grad, 2 * w * e * v, **TOL)  # 0 where masked, not NaN


@pytest.mark.parametrize("text", ['mean(mse(reduction="none"))', 'sum(2 * huber(reduction="none"))',
                                  'sum(mse(reduction="none", weight=weight))'])
def test_an_unreduced_term_reduced_directly(text):
    p, t, w = _randn(4, 3), _randn(4, 3, seed=1), _randn(4, 3, seed=2).abs()
    inputs = {"weight": w} if "weight" in text else {}
    e = p - t
    elementwise = w * e**2 if inputs else (F.huber_loss(p, t, reduction="none") if "huber" in text else e**2)
    want = 2 * elementwise.sum() if "2 *" in text else (elementwise.sum() if "sum" in text else elementwise.mean())
    torch.testing.assert_close(lossdsl.compile(text)(p, t, **inputs), want, **TOL)


def test_unreduced_cross_entropy_per_sample_inside_a_mean_over_the_batch():
    g = torch.Generator().manual_seed(0)
    logits, classes = torch.randn(5, 4, 3, dtype=D, generator=g), torch.randint(0, 4, (5, 3), generator=g)
    got = lossdsl.compile('sum([1, 2, 3] * mean(cross_entropy(reduction="none"), dim=0))')(logits, classes)
    per_step = F.cross_entropy(logits, classes, reduction="none").mean(dim=0)  # (N, T) -> (T,)
    torch.testing.assert_close(got, (torch.tensor([1.0, 2, 3], dtype=D) * per_step).sum(), **TOL)


# --- gradients, torch.compile, half precision ----------------------------------------------

GRADIENT_TEXT = ("mean(where(pred > target, pred^2, 3*target*pred)) + sum(max(pred[:, 0], pred[:, 1]))"
                 " + amax(pred[1:, :]) - min(amin(pred), mean(target)) + sum(var(pred, dim=0)[1:])")


def _gradient_ref(p, t):
    return (torch.where(p > t, p**2, 3 * t * p).mean() + torch.maximum(p[:, 0], p[:, 1]).sum()
            + p[1:, :].amax() - torch.minimum(p.amin(), t.mean()) + p.var(dim=0)[1:].sum())


def test_gradients_flow_through_indexing_where_min_max_and_reductions():
    p, t = _randn(6, 3), _randn(6, 3, seed=1)
    assert (p > t).any() and (p <= t).any()  # both branches of where are taken
    crit = lossdsl.compile(GRADIENT_TEXT)
    mine, theirs = p.clone().requires_grad_(True), p.clone().requires_grad_(True)
    got, want = crit(mine, t), _gradient_ref(theirs, t)
    torch.testing.assert_close(got, want, **TOL)
    got.backward()
    want.backward()
    torch.testing.assert_close(mine.grad, theirs.grad, **TOL)
    assert torch.autograd.gradcheck(lambda x: crit(x, t), (p.clone().requires_grad_(True),))


COMPILED_TEXT = "input w\nmean(w * (pred - target)^2) + 0.1*mean([1, 2, 0.5] * abs(pred - target)) + var(pred)"


def _compiled_inputs():
    return _randn(6, 3), _randn(6, 3, seed=1), _randn(6, 3, seed=2).abs()


def _compare_compiled(crit, compiled):
    p, t, w = _compiled_inputs()
    mine, theirs = p.clone().requires_grad_(True), p.clone().requires_grad_(True)
    got = compiled(mine, t, w=w)
    got.backward()
    terms = dict(crit.terms)
    eager = lossdsl.compile(COMPILED_TEXT)
    want = eager(theirs, t, w=w)
    want.backward()
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(mine.grad, theirs.grad, **TOL)
    assert list(terms) == list(eager.terms)
    for name in terms:
        torch.testing.assert_close(terms[name], eager.terms[name], **TOL)


def test_torch_compile_of_a_tensor_program_equals_eager():
    crit = lossdsl.compile(COMPILED_TEXT)
    p, t, w = _compiled_inputs()
    crit(p, t, w=w)  # shapes seen eagerly first
    _compare_compiled(crit, torch.compile(crit, fullgraph=True, backend="aot_eager"))


def test_torch_compile_of_a_tensor_program_on_its_first_call():
    crit = lossdsl.compile(COMPILED_TEXT)
    _compare_compiled(crit, torch.compile(crit, fullgraph=True, backend="aot_eager"))


def test_under_torch_compile_the_graph_runs_as_it_is_and_eager_calls_still_check():
    # documented: the node-by-node checks (strict broadcasting, named shape errors) are eager
    crit = lossdsl.compile("mean(pred - target)", strict=True)
    p, t = _randn(4, 1), _randn(4, seed=1)
    compiled = torch.compile(crit, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(p, t), (p - t).mean(), **TOL)  # (4, 4), as torch broadcasts
    with pytest.raises(lossdsl.LossInputError, match="enlarging both"):
        crit(p, t)


def test_half_precision_inputs_run_with_terms_in_float32():
    p32, t32 = _randn(8, 3).float(), _randn(8, 3, seed=1).float()
    p = p32.half().requires_grad_(True)
    t = t32.half()
    crit = lossdsl.compile("mse + 0.5*mean(abs(pred - target)) + 0.1*var(pred)")
    got = crit(p, t)
    assert got.dtype == torch.float16 and torch.isfinite(got)
    assert crit.terms["mse"].dtype == torch.float32
    # computed in float32, returned in half (README, Reliability): within half's rounding
    torch.testing.assert_close(crit.terms["mse"], F.mse_loss(p.detach().float(), t.float()), rtol=1e-3, atol=0)
    want = F.mse_loss(p32, t32) + 0.5 * (p32 - t32).abs().mean() + 0.1 * p32.var()
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2)
    got.backward()
    assert p.grad.dtype == torch.float16 and torch.isfinite(p.grad).all()


# --- canonical text ------------------------------------------------------------------------

def _programs():
    texts = ["mean(pred) + mean(target) + var(pred)", "mean_2 = mse\nmean(pred) + mean(target) + mean_2",
             "e = pred - target\nr = mse\nr + 0.5*mean(abs(e))", "where(mse > 1, mse, 2*mae)",
             "mean([0.1, 0.2, 0.7] * abs(pred - target))", "sum([0.1, 0.2]) + mean(pred)",
             GRADIENT_TEXT, 'mean(mse(reduction="none") * target)']
    texts += [w[0] for w in WEIGHTED_TOPS] + [c[0] for c in CONDITIONS]
    return texts + ["mean(abs(pred[:, none] - pred[none, :]))", "mean(mse * abs(pred - target))"]


@pytest.mark.parametrize("text", _programs())
def test_the_canonical_text_compiles_to_the_same_values(text):
    p, t = _randn(6, 3), _randn(6, 3, seed=1)
    canonical = lossdsl.unparse(lossdsl.parse(text))
    a, b = lossdsl.compile(text), lossdsl.compile(canonical)
    assert torch.equal(a(p, t), b(p, t))
    assert list(a.terms) == list(b.terms)
    for name in a.terms:
        assert torch.equal(a.terms[name], b.terms[name]) and torch.equal(a.weights[name], b.weights[name])


# --- found by the random programs of test_tensor_evaluator.py ------------------------------

def test_min_and_max_take_a_schedule_beside_a_loss_or_a_tensor():
    p, t = _randn(4, 3), _randn(4, 3, seed=1)
    for step, floor in ((5, 0.5), (10, 1.0)):
        crit = lossdsl.compile("max(mse, linear(0, 4, steps=10))")
        leaf = p.clone().requires_grad_(True)
        got = crit(leaf, t, step=step)
        want = max(F.mse_loss(p, t).item(), 4 * floor)
        torch.testing.assert_close(got, torch.tensor(want, dtype=D), **TOL)
        got.backward()
        expected = 2 * (p - t) / p.numel() if F.mse_loss(p, t).item() > 4 * floor else torch.zeros_like(p)
        torch.testing.assert_close(leaf.grad, expected, **TOL)
    crit = lossdsl.compile("mean(min(linear(0, 1, steps=10), pred))")
    torch.testing.assert_close(crit(p, t, step=3), torch.clamp(p, max=0.3).mean(), **TOL)


def test_a_full_reduction_that_keeps_its_axes_is_a_tensor_not_a_loss():
    with pytest.raises(lossdsl.LossTypeError, match="is a tensor, not a loss"):
        lossdsl.compile("mean(pred, keepdim=true)")
    p = _randn(4, 3)
    crit = lossdsl.compile("sum(pred - mean(pred, keepdim=true))^2")
    torch.testing.assert_close(crit(p, p), ((p - p.mean(dim=(0, 1), keepdim=True)).sum()) ** 2, **TOL)


def test_numbers_and_lists_beside_a_condition_take_the_inputs_dtype():
    p = _randn(4, 3)
    crit = lossdsl.compile("mean(where(pred < 0, [1, 2, 3], 0.5)) + mean(where(pred < 0, 2, 0.5))")
    got = crit(p, p)
    assert got.dtype == D and all(v.dtype == D for v in crit.terms.values())
    row = torch.tensor([1.0, 2.0, 3.0], dtype=D)
    want = torch.where(p < 0, row, 0.5).mean() + torch.where(p < 0, 2.0, 0.5).to(D).mean()
    torch.testing.assert_close(got, want, **TOL)


def test_a_condition_of_another_rank_counts_as_numbers_under_strict():
    p = _randn(2, 5, 3)
    crit = lossdsl.compile("mean((pred[:, 0:1, 0] > 0) * 2) + mean(pred[0] * (pred[0, 0] > 0))", strict=True)
    want = ((p[:, 0:1, 0] > 0) * 2.0).mean() + (p[0] * (p[0, 0] > 0)).mean()
    torch.testing.assert_close(crit(p, p), want, **TOL)


def test_clamp_of_a_schedule_is_a_number_that_weights_a_term():
    p, t = _randn(4, 3), _randn(4, 3, seed=1)
    crit = lossdsl.compile("clamp(linear(0, 1, steps=10), min=0.2)*mse")
    for step, factor in ((1, 0.2), (5, 0.5)):
        torch.testing.assert_close(crit(p, t, step=step), factor * F.mse_loss(p, t), **TOL)
        torch.testing.assert_close(crit.weights["mse"], torch.tensor(factor, dtype=D), **TOL)
