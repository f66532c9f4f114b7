"""A loss converted to reduced precision with ``.half()`` / ``.bfloat16()``, whose balancer
keeps statistics across calls (DESIGN.md §4, §6, §9).

The reference is written here: the ``ema`` balancer's weight for a term that keeps one value
``L`` on every call is ``1 / (L + eps)`` (its bias-corrected EMA of a constant is the constant).
"""

import pytest
import torch

import lossdsl


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
