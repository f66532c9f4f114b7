"""Hostile and careless uses of tensor expressions that hold (DESIGN.md §3.1, §8), each against
an independent torch reference: conditions in arithmetic, odd input tensors, one loss called in
several dtypes and devices, hostile texts that must give a LossDSLError, empty slices, and
canonical text. The others, and the helpers both use, are in ``test_tensor_attacks.py``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from test_tensor_attacks import TOL, D, _dsl_error_or_value, _randn

import lossdsl


def test_conditions_in_arithmetic_count_as_zero_or_one_in_the_inputs_dtype():
    pred, target = _randn(4, 3), _randn(4, 3, seed=1)
    mse = F.mse_loss(pred, target)
    cases = {
        "mse * (mse > 1)": mse * (mse > 1).to(D),
        "mse + linear(0, 1, steps=10) * (mse > 1)": mse + 0.3 * (mse > 1).to(D),
        "mean(pred * (mse > 1))": (pred * (mse > 1).to(D)).mean(),
        "mean((pred > 0) / size(pred, 0))": ((pred > 0).to(D) / 4).mean(),
        "mean(where(pred > 0, 0.1, 0.2) * pred)": (torch.where(pred > 0, torch.tensor(0.1, dtype=D),
                                                               torch.tensor(0.2, dtype=D)) * pred).mean(),
        "mean(min(pred > 0, linear(0, 1, steps=10)))": (pred > 0).to(D).clamp(max=0.3).mean(),
    }
    for text, want in cases.items():
        got = lossdsl.compile(text)(pred, target, step=3)
        assert got.dtype == D, text
        torch.testing.assert_close(got, want, **TOL, msg=lambda m: f"{text}: {m}")


@pytest.mark.parametrize("make", [lambda: torch.ones(3, dtype=D).expand(4, 3),
                                  lambda: torch.ones(3, 4, dtype=D).t(),
                                  lambda: torch.ones(4, 3, dtype=torch.int64),
                                  lambda: torch.ones(4, 3, dtype=torch.bool)])
def test_odd_tensors_as_inputs_give_the_torch_value(make):
    pred, target, w = _randn(4, 3), _randn(4, 3, seed=1), make()
    got = lossdsl.compile("input w\nmean(w * (pred - target)^2)")(pred, target, w=w)
    torch.testing.assert_close(got, (w * (pred - target) ** 2).mean(), **TOL)


def test_a_target_that_requires_grad_gets_its_gradient():
    pred, target = _randn(4, 3).requires_grad_(True), _randn(4, 3, seed=1).requires_grad_(True)
    text = "mean(where(pred > target, pred - target, 0)^2) + mean([1, 2, 3] * target)"
    lossdsl.compile(text)(pred, target).backward()
    p2, t2 = pred.detach().clone().requires_grad_(True), target.detach().clone().requires_grad_(True)
    w = torch.tensor([1.0, 2.0, 3.0], dtype=D)
    (torch.where(p2 > t2, p2 - t2, 0.0) ** 2).mean().add((w * t2).mean()).backward()
    torch.testing.assert_close(pred.grad, p2.grad, **TOL)
    torch.testing.assert_close(target.grad, t2.grad, **TOL)


def test_the_strict_check_runs_again_when_a_declared_input_changes_shape():
    crit = lossdsl.compile("input w\nmean(w * (pred - target))")
    crit(_randn(4, 1), _randn(4, 1, seed=1), w=_randn(4, 1, seed=2))
    with pytest.raises(lossdsl.LossInputError) as info:
        crit(_randn(4, 1), _randn(4, 1, seed=1), w=_randn(4, seed=2))
    assert "(4, 4)" in str(info.value)


# --- dtypes and devices ----------------------------------------------------------------------

def test_one_loss_follows_each_call_s_dtype_and_device():
    # lists and numbers beside conditions are made per call, never cached in the first dtype
    text = "mean([1, 2, 0.5] * abs(pred - target)) + mean(where(pred > 0, [0.1, 0.2, 0.3], 0.7) * pred)"
    crit = lossdsl.compile(text)
    for dtype, device in [(torch.float32, "cpu"), (D, "cpu"), (torch.float32, "meta"), (torch.float16, "cpu"),
                          (D, "meta"), (D, "cpu"), (torch.bfloat16, "cpu")]:
        pred = _randn(4, 3).to(dtype=dtype, device=device)
        target = _randn(4, 3, seed=1).to(dtype=dtype, device=device)
        got = crit(pred, target)
        assert got.dtype == dtype and got.device.type == device and got.shape == ()
        if device == "cpu":
            w = torch.tensor([1, 2, 0.5], dtype=dtype)
            v = torch.tensor([0.1, 0.2, 0.3], dtype=dtype)
            want = (w * (pred - target).abs()).mean() + (torch.where(pred > 0, v, torch.tensor(0.7, dtype=dtype))
                                                         * pred).mean()
            tol = TOL if dtype == D else dict(rtol=2e-2, atol=2e-2)
            torch.testing.assert_close(got, want, **tol)


# --- hostile texts: a LossDSLError or the torch value, nothing else ----------------------------

HOSTILE = [
    "mean(pred[0][0][0])", "mean(pred[9])", "mean(pred[:, :, :])", "mean(mean(pred, dim=5))",
    "mean(mean(pred, dim=[0, 0]))", "mean(sum(pred, dim=[0, -2]))", "size(pred, 5)*mse", "amax(pred[0:0])",
    "mean(softmax(pred, dim=5))", "mean(diff(pred, dim=7))", "mean([1, 2] * pred)", "mean(pred[::0])",
    "mean(pred[::-1])", "mean(diff(pred, n=0))", "mean(softmax(pred))", "norm(pred, p=0)",
    "mean(clamp(pred, min=1, max=0))", "size(pred, 99) + mse", "mean(pred, keepdim=true)", "mean([])",
    "mean([[1, 2]])", "mean(pred" + "[:]" * 300 + ")", "mean(" + "not " * 300 + "(pred > 0))",
    "mean(pred[" + ", ".join(["0"] * 500) + "])", "input pred\nmean(pred)", "input w, w\nmean(w*pred)",
    "mean(pred[99999999999999999999])", "var(pred, correction=99999999999999999999)", "pred > 0", "mse > 0",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_texts_give_a_dsl_error_with_caret_and_hint(text):
    result = _dsl_error_or_value(text, _randn(4, 3), _randn(4, 3, seed=1))
    assert isinstance(result, lossdsl.LossDSLError), text


def test_empty_slices_follow_torch():
    pred, target = _randn(4, 3), _randn(4, 3, seed=1)
    torch.testing.assert_close(lossdsl.compile("sum(pred[0:0]) + mse")(pred, target), F.mse_loss(pred, target))
    with pytest.raises(lossdsl.NonFiniteLossError):  # torch's mean of nothing is NaN
        lossdsl.compile("mean(pred[3:1])")(pred, target)


# --- canonical text --------------------------------------------------------------------------

ROUND_TRIPS = [
    "mean(pred[:, none] - pred[none, :])", "mean(pred[1:-1:3, ...])", "mean(-pred[-1])", "mean((-pred)[0])",
    "mean([1, -2, 0.5, 1e-3, -1e10] * pred)", "mean(pred < 0 or pred > 1 and not pred == 0)",
    "mean(not (pred < 0) or pred > 1)", "mean((not pred) < 0)", "mean((pred < 0) < 1)",
    "input w, v\nmean(w*v*pred)", "mean(cross_entropy(reduction='none'))", "mean(pred^(-1)^2)",
    "mean((pred^2)^3)", "mean(-(-pred))", "mean(pred[::])", "mean(pred, dim=[0, 1], keepdim=true)[0, 0] + mse",
    "n = 2\nmean(pred[n - 1])", "where(mse > 1 and mae < 2, mse, mae)", "mean(pred * -0.0)",
]


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_canonical_text_parses_back_to_the_same_program(text):
    program = lossdsl.parse(text)
    canonical = lossdsl.unparse(program)
    assert lossdsl.parse(canonical) == program
    assert lossdsl.unparse(lossdsl.parse(canonical)) == canonical
