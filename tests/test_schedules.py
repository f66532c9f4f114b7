"""Schedules (DESIGN.md §6): each one against its formula, written out here, at the first step,
in the middle, at the end and beyond; the step buffer; no recompilation under torch.compile;
and the errors for bad arguments."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import lossdsl


def tau(s, steps, delay=0.0):
    return min(max((s - delay) / steps, 0.0), 1.0)


def linear_ref(s, start, end, steps, delay=0.0):
    return start + (end - start) * tau(s, steps, delay)


def cosine_ref(s, start, end, steps, delay=0.0):
    return start + (end - start) * (1 - math.cos(math.pi * tau(s, steps, delay))) / 2


def piecewise_ref(s, boundaries, values):
    k = sum(1 for b in boundaries if b <= s)
    return values[k]


def cyclic_ref(s, period, ratio=0.5, low=0.0, high=1.0):
    return low + (high - low) * min(1.0, ((s % period) / period) / ratio)


def after_ref(s, steps):
    return 0.0 if s < steps else 1.0


CASES = [
    ("linear(0, 1, steps=100)", lambda s: linear_ref(s, 0, 1, 100), [0, 1, 50, 99, 100, 101, 250]),
    ("linear(2, -1, steps=40, delay=10)", lambda s: linear_ref(s, 2, -1, 40, 10), [0, 5, 10, 30, 50, 60, 10**6]),
    ("cosine(1, 0.1, steps=100)", lambda s: cosine_ref(s, 1, 0.1, 100), [0, 25, 50, 75, 100, 150]),
    ("cosine(start=0, end=3, steps=7, delay=3)", lambda s: cosine_ref(s, 0, 3, 7, 3), [0, 3, 4, 6, 10, 11, 99]),
    (
        "piecewise(boundaries=[10, 20], values=[1, 0.5, 0.1])",
        lambda s: piecewise_ref(s, [10, 20], [1, 0.5, 0.1]),
        [0, 9, 10, 15, 19, 20, 21, 1000],
    ),
    (
        "cyclic(period=10, ratio=0.5, low=0.1, high=0.9)",
        lambda s: cyclic_ref(s, 10, 0.5, 0.1, 0.9),
        [0, 2, 5, 7, 10, 13, 1003],
    ),
    ("cyclic(period=7)", lambda s: cyclic_ref(s, 7), [0, 1, 3, 4, 6, 7, 8, 700, 701]),
    ("after(50)", lambda s: after_ref(s, 50), [0, 49, 50, 51, 1000]),
    ("after(steps=1)", lambda s: after_ref(s, 1), [0, 1, 2]),
    # steps beyond float32's exact integers (2^24) still switch and cycle at the right step
    ("after(16777219)", lambda s: after_ref(s, 16777219), [16777218, 16777219]),
    (
        "piecewise(boundaries=[16777217], values=[3, 4])",
        lambda s: piecewise_ref(s, [16777217], [3, 4]),
        [16777216, 16777217],
    ),
    ("cyclic(period=10, ratio=1)", lambda s: cyclic_ref(s, 10, 1.0), [2**24 + 3, 2**30 + 7]),
]


@pytest.mark.parametrize("schedule,formula,steps", CASES, ids=[c[0] for c in CASES])
def test_schedule_times_mse_follows_the_formula(schedule, formula, steps):
    torch.manual_seed(0)
    pred, target = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    mse = float(F.mse_loss(pred, target))
    crit = lossdsl.compile(f"{schedule}*mse")
    for s in steps:
        value = crit(pred, target, step=s)
        want = formula(s)
        assert float(value) == pytest.approx(want * mse, rel=1e-6, abs=1e-7), f"step {s}"
        assert float(crit.weights["mse"]) == pytest.approx(want, rel=1e-6, abs=1e-7)


def test_stored_step_is_used_when_omitted_and_is_saved():
    pred, target = torch.randn(8), torch.randn(8)
    mse = float(F.mse_loss(pred, target))
    crit = lossdsl.compile("mae + linear(0, 2, steps=10)*mse")
    crit(pred, target, step=3)
    value = crit(pred, target)  # the step stays 3
    assert float(value) == pytest.approx(float(F.l1_loss(pred, target)) + 0.6 * mse, rel=1e-6)
    crit.set_step(5)
    assert float(crit.weights["mse"]) == pytest.approx(0.6, rel=1e-6)  # last call's weight
    crit(pred, target)
    assert float(crit.weights["mse"]) == pytest.approx(1.0, rel=1e-6)
    state = copy.deepcopy(crit.state_dict())
    assert int(state["step"]) == 5
    other = lossdsl.compile("mae + linear(0, 2, steps=10)*mse")
    other.load_state_dict(state)
    other(pred, target)
    assert float(other.weights["mse"]) == pytest.approx(1.0, rel=1e-6)


def test_schedule_follows_input_device_and_dtype():
    crit = lossdsl.compile("cosine(1, 0, steps=4)*mse")
    pred = torch.randn(3, dtype=torch.float64)
    out = crit(pred, torch.zeros(3, dtype=torch.float64), step=2)
    assert out.dtype == torch.float64
    assert float(out) == pytest.approx(0.5 * float((pred**2).mean()), rel=1e-6)


def test_changing_step_does_not_recompile():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    source = "cosine(1, 0, steps=100)*mse + linear(0, 1, steps=50, delay=5)*mae + after(30)*mse"
    crit = lossdsl.compile(source)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(crit, backend=counter, fullgraph=True)
    pred, target = torch.randn(5, 3), torch.randn(5, 3)
    mse, mae = float(F.mse_loss(pred, target)), float(F.l1_loss(pred, target))

    def want(s):
        return (cosine_ref(s, 1, 0, 100) + after_ref(s, 30)) * mse + linear_ref(s, 0, 1, 50, 5) * mae

    for s in [0, 10, 29, 30, 55, 80, 200]:  # the step passed as a tensor
        assert float(compiled(pred, target, step=torch.tensor(s))) == pytest.approx(want(s), rel=1e-5)
    assert counter.frame_count == 1
    for s in [7, 33, 61]:  # the step left stored in the module: one more graph (no step
        crit.set_step(s)  # argument is another call signature), then none per step
        assert float(compiled(pred, target)) == pytest.approx(want(s), rel=1e-5)
    assert counter.frame_count == 2


@pytest.mark.parametrize(
    "source,at",
    [
        ("linear(0, 1, steps=0)*mse", "steps=0"),
        ("cosine(0, 1, steps=-5)*mse", "steps=-5"),
        ("linear(0, 1, steps=10, delay=-1)*mse", "delay=-1"),
        ("after(0)*mse", "0)"),
        ("after(steps=-3)*mse", "steps=-3"),
        ("cyclic(period=0)*mse", "period=0"),
        ("cyclic(period=10, ratio=0)*mse", "ratio=0"),
        ("piecewise(boundaries=[20, 10], values=[1, 2, 3])*mse", "boundaries=[20, 10]"),
        ("piecewise(boundaries=[10, 10], values=[1, 2, 3])*mse", "boundaries=[10, 10]"),
        ("piecewise(boundaries=[10, 20], values=[1, 2])*mse", "values=[1, 2]"),
        ("piecewise(boundaries=[10], values=[1, 2, 3])*mse", "values=[1, 2, 3]"),
        ("mse + linear(0, 1, stpes=10)*mae", "stpes=10"),
    ],
)
def test_bad_schedule_arguments_point_at_the_key(source, at):
    with pytest.raises(lossdsl.LossArgumentError) as info:
        lossdsl.compile(source)
    lines = str(info.value).splitlines()
    caret = next(line for line in lines if line.strip() and set(line.strip()) == {"^"})
    assert caret.index("^") - 2 == source.index(at)  # the source is shown indented by two spaces
    assert info.value.hint


def test_a_schedule_alone_is_not_a_loss():
    with pytest.raises(lossdsl.LossTypeError):
        lossdsl.compile("linear(0, 1, steps=10)")


# --- a schedule that is never given a step --------------------------------------------------


def _training_calls(crit, n, **kwargs):
    pred, target = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(n):
            crit(pred, target, **kwargs)
    return [w for w in seen if "no step was given" in str(w.message)]


def test_a_schedule_never_given_a_step_warns_once():
    crit = lossdsl.compile("mse + linear(0, 1, steps=100)*mae")
    assert not _training_calls(crit, 1)  # the first call is at step 0 anyway
    seen = _training_calls(crit, 10)
    assert len(seen) == 1 and issubclass(seen[0].category, UserWarning)
    message = str(seen[0].message)
    assert "step=" in message and "set_step" in message and "linear" in message
    assert seen[0].filename == __file__  # points at the call, not inside lossdsl
    assert not _training_calls(crit, 10)  # once per loss


@pytest.mark.parametrize("how", ["step=", "set_step", "load_state_dict", "eval", "no_grad", "no schedule"])
def test_no_step_warning_when_the_step_is_given_or_not_needed(how):
    source = "mse + cosine(1, 0, steps=50)*mae" if how != "no schedule" else 'balance(mse, mae, method="ema")'
    crit = lossdsl.compile(source)
    if how == "step=":
        assert not _training_calls(crit, 5, step=3)
        assert not _training_calls(crit, 5)  # the step was given once: stored from then on
        return
    if how == "set_step":
        crit.set_step(0)
    elif how == "load_state_dict":
        crit.load_state_dict(lossdsl.compile(source).state_dict())
    elif how == "eval":
        crit.eval()
    if how == "no_grad":
        with torch.no_grad():
            assert not _training_calls(crit, 5)
    else:
        assert not _training_calls(crit, 5)
