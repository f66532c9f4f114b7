"""The loss under ``torch.compile`` and in reduced precision, used carelessly (DESIGN.md §4, §6,
§9): steps given in every form the README accepts, and a loss
converted with ``.half()`` / ``.bfloat16()`` whose balancer keeps statistics across calls.

References are written here: the schedule ``linear(0, 1, steps=n)`` at step ``s`` is
``s / n``; the ``ema`` balancer's weight for a term that keeps one value ``L`` on every call
is ``1 / (L + eps)`` (its bias-corrected EMA of a constant is the constant).
"""

import pytest
import torch
import torch.nn.functional as F

import lossdsl


# --- steps under torch.compile ---------------------------------------------------------------


@pytest.mark.xfail(strict=True, raises=torch._dynamo.exc.FailOnRecompileLimitHit,
                   reason="a limit the README states: dynamo specialises a Python float argument and "
                          "guards on its value, so every float step compiles a new graph; under "
                          "fullgraph=True the ninth is its FailOnRecompileLimitHit (pass an int or a tensor)")
def test_integer_valued_float_steps_under_fullgraph_compile_keep_working():
    """README: a step is "an int, an integer-valued float, or a one-element tensor", and a
    non-tensor step under torch.compile costs one recompilation, not one per step."""
    torch._dynamo.reset()
    crit = lossdsl.compile("mse + linear(0, 1, steps=100)*mae")
    compiled = torch.compile(crit, fullgraph=True, backend="eager")
    gen = torch.Generator().manual_seed(0)
    for step in range(12):
        pred, target = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
        got = compiled(pred, target, step=float(step))  # e.g. a step kept as a float by a trainer
        expected = F.mse_loss(pred, target) + step / 100 * F.l1_loss(pred, target)
        torch.testing.assert_close(got, expected)


# --- a loss converted to half precision ------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["half", "bfloat16"])
def test_ema_weights_of_a_loss_converted_to_half_precision_stay_near_one_over_the_term(dtype):
    """mse = 9 and mae = 3 on every call (pred = 3, target = 0, exact in both dtypes): the
    bias-corrected EMA of a constant is the constant, so the weights are 1/9 and 1/3. A
    weight rounded to the dtype is within 2^-8 of that; 1 % allows for the float32 sums."""
    crit = lossdsl.compile('balance(mse, mae, method="ema")')
    crit = crit.half() if dtype == torch.float16 else crit.bfloat16()
    pred, target = torch.full((4,), 3.0, dtype=dtype), torch.zeros(4, dtype=dtype)
    for _ in range(400):
        crit(pred, target)
    eps = 1e-8
    assert float(crit.weights["mse"]) == pytest.approx(1 / (9 + eps), rel=1e-2)
    assert float(crit.weights["mae"]) == pytest.approx(1 / (3 + eps), rel=1e-2)
