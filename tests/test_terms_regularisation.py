"""Terms on pred alone or on the model (tv, out_of_bounds, l2_reg) against their
DESIGN.md §5 formula written out, in float64 through lossdsl.compile. CASES is shared with
test_terms_common.py (see test_terms_regression.py).
"""

import pytest
import torch
from torch import nn

import lossdsl


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _signal(seed=0):
    g = _gen(seed)
    return {"pred": torch.randn(3, 6, 2, generator=g, dtype=torch.float64) * 2}


def _extreme_signal(dtype):
    return {"pred": torch.tensor([[1e4, -1e4, -1e4, 0.0, 1e4]], dtype=dtype)}


def _tv_reference(dim, p):
    def reference(pred):
        n = pred.shape[dim]
        total, count = 0.0, 0
        for k in range(n - 1):
            d = pred.select(dim, k + 1) - pred.select(dim, k)
            total = total + (d.abs() ** p).sum()
            count += d.numel()
        return total / count

    return reference


def _bounds_reference(lower, upper, power):
    def reference(pred):
        flat = pred.reshape(-1)
        total = 0.0
        for x in flat:
            if lower is not None and x < lower:
                total = total + (lower - x) ** power
            if upper is not None and x > upper:
                total = total + (x - upper) ** power
        return total / flat.numel()

    return reference


def _parameters(seed=0):
    g = _gen(seed)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(3, generator=g, dtype=torch.float64).requires_grad_()
    return {"model": [w, b]}


def _extreme_parameters(dtype):
    return {"model": [torch.full((2, 2), 1e4, dtype=dtype, requires_grad=True), torch.zeros(2, 3, dtype=dtype, requires_grad=True)]}


CASES = {
    "tv": (_signal, _tv_reference(1, 1.0), _extreme_signal),
    "tv(dim=-1, p=2)": (_signal, _tv_reference(-1, 2.0), _extreme_signal),
    "tv(dim=1, p=0.5)": (_signal, _tv_reference(1, 0.5), _extreme_signal),
    "out_of_bounds(lower=-1, upper=1)": (_signal, _bounds_reference(-1, 1, 1), _extreme_signal),
    "out_of_bounds(lower=-0.5, upper=2, power=2)": (_signal, _bounds_reference(-0.5, 2, 2), _extreme_signal),
    "out_of_bounds(lower=none, upper=0.5, power=1.5)": (_signal, _bounds_reference(None, 0.5, 1.5), _extreme_signal),
    "l2_reg": (_parameters, lambda model: 0.5 * (model[0] ** 2).sum(), _extreme_parameters),
    "l2_reg(biases=true)": (
        _parameters, lambda model: 0.5 * ((model[0] ** 2).sum() + (model[1] ** 2).sum()), _extreme_parameters,
    ),
}


def test_tv_below_one_power_has_finite_gradient_where_neighbours_are_equal():
    pred = torch.tensor([[1.0, 1.0, 1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    out = lossdsl.compile("tv(p=0.5)")(pred)
    out.backward()
    assert out.item() == pytest.approx(1.0 / 3.0, rel=1e-12)
    assert torch.isfinite(pred.grad).all()


def test_out_of_bounds_is_zero_inside_and_reads_pred_only():
    crit = lossdsl.compile("out_of_bounds(lower=0, upper=1, power=2)")
    inside = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
    out = crit(inside, torch.full((3,), 7.0))  # the target is not read
    out.backward()
    assert out.item() == 0.0 and torch.equal(inside.grad, torch.zeros(3))
    assert crit(torch.tensor([-1.0, 3.0])).item() == pytest.approx((1.0 + 4.0) / 2)


def test_out_of_bounds_needs_both_bounds_written():
    with pytest.raises(lossdsl.LossArgumentError, match="needs 'upper'") as info:
        lossdsl.compile("out_of_bounds(lower=0)")
    assert "none" in info.value.hint


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.fc2 = nn.Linear(3, 2, bias=False)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_l2_reg_reads_a_module():
    net = _Net().double()
    weights = [net.fc1.weight, net.fc2.weight]  # 2-d and trainable
    small = [net.fc1.bias, net.norm.weight, net.norm.bias]
    expected = 0.5 * sum((w**2).sum() for w in weights)
    crit = lossdsl.compile("l2_reg")
    torch.testing.assert_close(crit(model=net), expected, rtol=1e-12, atol=0)
    with_biases = expected + 0.5 * sum((w**2).sum() for w in small)
    torch.testing.assert_close(lossdsl.compile("l2_reg(biases=true)")(model=net), with_biases, rtol=1e-12, atol=0)
    # and an iterable of tensors, e.g. the generator net.parameters()
    torch.testing.assert_close(crit(model=net.parameters()), expected, rtol=1e-12, atol=0)
    # the gradient is the weight itself (weight decay)
    crit(model=net).backward()
    torch.testing.assert_close(net.fc1.weight.grad, net.fc1.weight.detach())
    assert net.fc1.bias.grad is None and net.frozen.weight.grad is None


def test_l2_reg_next_to_a_data_term():
    net = nn.Linear(3, 2).double()
    pred, target = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    got = lossdsl.compile("mse + 1e-2*l2_reg")(pred, target, model=net)
    torch.testing.assert_close(got, 1.0 + 1e-2 * 0.5 * (net.weight**2).sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("model, what", [(3, "int"), ("weights", "str"), ([torch.ones(2), 5], "item 1")])
def test_l2_reg_refuses_what_is_not_a_model(model, what):
    with pytest.raises(lossdsl.LossInputError, match="model") as info:
        lossdsl.compile("l2_reg")(model=model)
    assert what in str(info.value) and info.value.term == "l2_reg"


def test_l2_reg_of_a_model_with_nothing_to_count_is_zero():
    net = nn.Sequential(nn.LayerNorm(3))  # only 1-d parameters
    assert lossdsl.compile("l2_reg")(model=net).item() == 0.0
    expected = 0.5 * sum((p.detach() ** 2).sum() for p in net.parameters())
    assert lossdsl.compile("l2_reg(biases=true)")(model=net).item() == pytest.approx(expected.item())


def test_l2_reg_of_a_half_precision_layer_does_not_overflow_before_its_weight():
    # 0.5 * 3000 * 3000 = 4.5e6 is far beyond float16's 65504; weighted by 1e-4 it is 450
    layer = nn.Linear(3000, 3000, bias=False).half()
    with torch.no_grad():
        layer.weight.fill_(1.0)
    pred = torch.zeros(4, dtype=torch.float16)
    crit = lossdsl.compile("mse + 1e-4*l2_reg")
    total = crit(pred, torch.zeros(4, dtype=torch.float16), model=layer)
    assert torch.isfinite(total) and total.item() == pytest.approx(450.0, rel=1e-6)
    assert crit.terms["l2_reg"].dtype == torch.float32
    assert crit.terms["l2_reg"].item() == 0.5 * 3000 * 3000
    total.backward()
    # d/dw of 1e-4 * 0.5 * w^2 = 1e-4 * w, back in the parameter's dtype
    assert layer.weight.grad.dtype == torch.float16
    torch.testing.assert_close(layer.weight.grad.float(), torch.full((3000, 3000), 1e-4), rtol=1e-3, atol=0)
