"""Errors of tensor programs (DESIGN.md §3.1, §8), through the public API: each is the
documented ``LossDSLError`` subclass with the source, a caret under the span and a hint: a
tensor or a condition at the top, undeclared and clashing names, paths into tensors, tensor
functions of numbers or losses, and at call time shapes that do not fit (broadcasting that
enlarges both operands under ``strict=True``, mismatches), also after a good first call."""

from __future__ import annotations

import pytest
import torch

import lossdsl

D = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)


def _randn(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(seed))


def _error(cls, text, *args, strict=True, **inputs):
    with pytest.raises(cls) as info:
        crit = lossdsl.compile(text, strict=strict)
        crit(*args, **inputs)
    return info.value


def _at(err, text, part, nth=0):
    """The error points at the ``nth`` occurrence of ``part`` in ``text``, with a caret."""
    start = -1
    for _ in range(nth + 1):
        start = text.index(part, start + 1)
    assert err.span == (start, start + len(part)), (err.span, part)
    assert err.source == text
    assert "^" * len(part.splitlines()[0]) in str(err)


# --- kinds, names and paths ------------------------------------------------------------------

@pytest.mark.parametrize("text, part", [
    ("pred - target", "pred - target"),
    ("e = pred - target\n0.5 * mean(e, dim=0)", "0.5 * mean(e, dim=0)"),
    ("mse * pred", "mse * pred"),
])
def test_a_tensor_at_the_top_says_to_reduce_it(text, part):
    err = _error(lossdsl.LossTypeError, text)
    _at(err, text, part)
    assert "tensor" in err.message and "mean(" in err.hint


def test_a_condition_at_the_top_is_refused():
    text = "mean(pred) > 1"
    err = _error(lossdsl.LossTypeError, text)
    _at(err, text, text)
    assert "condition" in err.message and "where(" in err.hint


def test_an_undeclared_name_suggests_the_declared_one_and_the_input_line():
    text = "input weights\nmean(weigths * pred)"
    err = _error(lossdsl.LossNameError, text)
    _at(err, text, "weigths")
    assert "did you mean 'weights'?" in err.hint and "input weigths" in err.hint
    err = _error(lossdsl.LossNameError, "mean(w * pred)")
    assert "input w" in err.hint


@pytest.mark.parametrize("text, name, nth, what", [
    ("input var\nmean(pred)", "var", 0, "built-in function"),
    ("input mse\nmean(pred)", "mse", 0, "term"),
    ("x = mse\ninput x\nx", "x", 1, "binding"),  # the caret under the declaration
])
def test_a_declared_input_may_not_take_a_name_in_use(text, name, nth, what):
    err = _error(lossdsl.LossNameError, text)
    _at(err, text, name, nth=nth)
    assert f"'{name}'" in err.message and what in err.message


@pytest.mark.parametrize("text, part", [("mean(pred.grad)", "pred.grad"), ("mean(abs(target.data - pred))", "target.data")])
def test_a_path_into_a_tensor_is_refused_when_compiling(text, part):
    # DESIGN §3.1: a path never reads an attribute of a tensor; refused before any call
    with pytest.raises(lossdsl.LossInputError) as info:
        lossdsl.compile(text)
    _at(info.value, text, part)
    assert info.value.hint


def test_a_keyword_routed_path_into_a_tensor_is_refused_when_compiling():
    text = "mse(pred=pred.grad)"
    with pytest.raises(lossdsl.LossInputError) as info:
        lossdsl.compile(text)
    assert "pred.grad" in info.value.message
    _at(info.value, text, "pred.grad")


def test_a_path_into_a_tensor_is_refused_at_call_time_with_a_caret():
    text = "mean(out.grad)"
    err = _error(lossdsl.LossInputError, text, out=_randn(3))
    assert "grad" in err.message
    _at(err, text, "out.grad")


@pytest.mark.parametrize("text, part, word", [
    ("mean(2)", "2", "number"),
    ("mse + mean(size(pred, 0))", "size(pred, 0)", "schedule"),
    ("diff(mse)", "mse", "loss"),
    ("mean(softmax(mae, dim=0))", "mae", "loss"),
])
def test_a_tensor_function_of_a_number_or_a_loss_is_refused(text, part, word):
    err = _error(lossdsl.LossTypeError, text)
    _at(err, text, part)
    assert word in err.message and err.hint


def test_a_declared_input_missing_from_the_call_is_named():
    err = _error(lossdsl.LossInputError, "input w\nmean(w * pred)", _randn(3))
    assert "'w'" in err.message


# --- shapes --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, part, what", [
    ("e = pred - target\nmean(e^2)", "pred - target", "'-'"),
    ("mean(where(pred > target, pred, 0))", "pred > target", "'>'"),
    ("mean(min(pred, target))", "min(pred, target)", "min"),
])
def test_strict_refuses_broadcasting_that_enlarges_both_operands(text, part, what):
    p, t = _randn(4, 1), _randn(4, seed=1)
    err = _error(lossdsl.LossInputError, text, p, t)
    _at(err, text, part)
    assert what in err.message and "(4, 1)" in err.message and "(4,)" in err.message
    assert "none" in err.hint and "strict=False" in err.hint
    # the same program with equal shapes first, then the bad ones: still refused
    crit = lossdsl.compile(text)
    crit(_randn(4), t)
    with pytest.raises(lossdsl.LossInputError) as info:
        crit(p, t)
    _at(info.value, text, part)


def test_strict_false_broadcasts_as_torch_does():
    p, t = _randn(4, 1), _randn(4, seed=1)
    got = lossdsl.compile("e = pred - target\nmean(e^2)", strict=False)(p, t)
    torch.testing.assert_close(got, ((p - t) ** 2).mean(), **TOL)  # (4, 4) as in torch


def test_explicit_outer_operations_are_fine_under_strict():
    p = _randn(5)
    got = lossdsl.compile("mean(abs(pred[:, none] - pred[none, :]))")(p)
    torch.testing.assert_close(got, (p[:, None] - p[None, :]).abs().mean(), **TOL)


SHAPES_TEXT = "input w\nmean(w * (pred - target)^2)"


def test_a_shape_mismatch_names_the_operator_its_place_and_both_shapes():
    p, t = _randn(4, 3), _randn(4, 3, seed=1)
    err = _error(lossdsl.LossInputError, SHAPES_TEXT, p, t, w=_randn(5, seed=2))
    _at(err, SHAPES_TEXT, "w * (pred - target)^2")
    assert "'*'" in err.message and "(5,)" in err.message and "(4, 3)" in err.message
    assert err.line == 2 and err.column == 6


def test_a_shape_mismatch_after_a_good_call_with_other_shapes_is_named_too():
    crit = lossdsl.compile(SHAPES_TEXT)
    p, t, w = _randn(4, 3), _randn(4, 3, seed=1), _randn(3, seed=2).abs()
    torch.testing.assert_close(crit(p, t, w=w), (w * (p - t) ** 2).mean(), **TOL)
    for bad in (_randn(5, seed=3), _randn(4, 2, seed=3)):
        with pytest.raises(lossdsl.LossInputError) as info:
            crit(p, t, w=bad)
        _at(info.value, SHAPES_TEXT, "w * (pred - target)^2")
        assert str(tuple(bad.shape)) in info.value.message and "(4, 3)" in info.value.message
    torch.testing.assert_close(crit(p, t, w=w), (w * (p - t) ** 2).mean(), **TOL)  # still fine after


@pytest.mark.parametrize("text, part, what", [
    ("mean(softmax(pred, dim=2))", "softmax(pred, dim=2)", "softmax"),
    ("mean(pred[5])", "pred[5]", "[...]"),
    ("size(pred, 3) * mse", "size(pred, 3)", "size"),
])
def test_a_call_that_does_not_fit_the_shape_is_named(text, part, what):
    err = _error(lossdsl.LossInputError, text, _randn(4, 3), _randn(4, 3, seed=1))
    _at(err, text, part)
    assert what in err.message and "(4, 3)" in err.message
