"""Image terms: ssim against pytorch-msssim's ``ssim`` (1e-10 with the same float64
gaussian window passed in, 1e-6 with its own float32-made window), value and gradient;
feature_distance against its formula written out, with networks returning one tensor, a list
or a dict. CASES (ssim) is shared with test_terms_common.py; feature_distance reads a network
whose dtype and device are the caller's, so its half-precision and meta-device checks are here.
"""

import math
import re

import pytest
import pytorch_msssim
import torch
import torch.nn.functional as F
from torch import nn

import lossdsl


def _window(size=11, sigma=1.5, channels=3):
    """The gaussian window in float64, shaped as pytorch-msssim takes it for (N, C, H, W)."""
    g = torch.tensor([math.exp(-(x**2) / (2 * sigma**2)) for x in range(-(size // 2), size // 2 + 1)],
                     dtype=torch.float64)
    return (g / g.sum()).view(1, 1, 1, -1).repeat(channels, 1, 1, 1)


def _images(seed=0, shape=(2, 3, 14, 13)):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g, dtype=torch.float64)
    pred = (target + 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return {"pred": pred, "target": target}


def _extreme_images(dtype):
    # constant images (equal and not), black against white, 1e4-valued images
    shape = (4, 1, 11, 12)
    pred = torch.empty(shape, dtype=dtype)
    target = torch.empty(shape, dtype=dtype)
    pred[0], target[0] = 0.5, 0.5
    pred[1], target[1] = 0.0, 1.0
    pred[2] = 1e4
    target[2] = torch.linspace(0, 1e4, 11 * 12, dtype=dtype).view(1, 11, 12)
    pred[3] = torch.arange(11 * 12, dtype=dtype).view(1, 11, 12) % 2
    target[3] = 0.0
    return {"pred": pred, "target": target}


def _msssim_reference(window=11, sigma=1.5, data_range=1.0, k=(0.01, 0.03)):
    def reference(pred, target):
        win = _window(window, sigma, pred.shape[1]).to(pred.dtype)
        return 1 - pytorch_msssim.ssim(pred, target, data_range=data_range, win=win, K=k)

    return reference


CASES = {
    "ssim": (_images, _msssim_reference(), _extreme_images),
    "ssim(window=7, sigma=1.0, data_range=2.0, k1=0.02, k2=0.05)": (
        _images, _msssim_reference(7, 1.0, 2.0, (0.02, 0.05)), _extreme_images,
    ),
    "ssim(window=3, sigma=0.5)": (
        lambda seed=0: _images(seed, (1, 2, 5, 6)), _msssim_reference(3, 0.5), _extreme_images,
    ),
}


def test_ssim_equals_pytorch_msssim_with_its_own_float32_window():
    inputs = _images(1)
    ours = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    got = lossdsl.compile("ssim")(**ours)
    got.backward()
    ref = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    expected = 1 - pytorch_msssim.ssim(ref["pred"], ref["target"], data_range=1.0, win_size=11, win_sigma=1.5)
    expected.backward()
    assert abs(got.item() - expected.item()) < 1e-6
    for k in inputs:
        torch.testing.assert_close(ours[k].grad, ref[k].grad, rtol=1e-5, atol=1e-8)


def test_ssim_gradient_equals_pytorch_msssims_with_the_same_window():
    inputs = _images(2)
    ours = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    lossdsl.compile("ssim")(**ours).backward()
    ref = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    _msssim_reference()(**ref).backward()
    for k in inputs:
        torch.testing.assert_close(ours[k].grad, ref[k].grad, rtol=1e-10, atol=1e-12)


def test_ssim_in_float32_stays_accurate_far_from_zero():
    # 8-bit-like images around 5000: E[x^2] - E[x]^2 in float32 loses most digits unless
    # the statistics are taken about a shift
    inputs = {k: v * 255 + 5000 for k, v in _images(3).items()}
    expected = _msssim_reference(data_range=255.0)(**inputs).item()
    got = lossdsl.compile("ssim(data_range=255)")(*(v.float() for v in inputs.values())).item()
    assert abs(got - expected) < 1e-5


def test_ssim_of_identical_images_is_zero():
    image = _images(4)["target"]
    assert lossdsl.compile("ssim")(image, image.clone()).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("src, key, words", [
    ("ssim(window=12)", "window=12", "odd"),
    ("ssim(window=257)", "window=257", "less than or equal to 255"),
    ("ssim(window=0)", "window=0", "greater than or equal to 1"),
    ("ssim(sigma=0)", "sigma=0", "greater than 0"),
    ("ssim(data_range=-1)", "data_range=-1", "greater than 0"),
])
def test_ssim_hyperparameters_are_bounded(src, key, words):
    with pytest.raises(lossdsl.LossArgumentError) as info:
        lossdsl.compile(src)
    assert info.value.column == src.index(key) + 1 and words in info.value.hint


def test_ssim_needs_images_at_least_as_large_as_the_window():
    with pytest.raises(lossdsl.LossInputError, match="window") as info:
        lossdsl.compile("ssim")(torch.rand(1, 1, 10, 30), torch.rand(1, 1, 10, 30))
    assert info.value.term == "ssim"
    with pytest.raises(lossdsl.LossInputError, match=r"\(N, C, H, W\)"):
        lossdsl.compile("ssim")(torch.rand(30, 30), torch.rand(30, 30))


# --- feature_distance ----------------------------------------------------------------------


class TwoLayers(nn.Module):
    """A small feature network returning the outputs of two layers."""

    def __init__(self, kind="list"):
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Conv2d(3, 4, 3)
        self.second = nn.Conv2d(4, 2, 3, stride=2)
        self.kind = kind
        self.grad_enabled = []

    def forward(self, x):
        self.grad_enabled.append(torch.is_grad_enabled())
        a = torch.tanh(self.first(x))
        b = self.second(a)
        return {"list": [a, b], "dict": {"a": a, "b": b}, "tensor": b}[self.kind]


def _feature_reference(net, pred, target, p):
    with torch.no_grad():
        fixed = net(target)
    fixed = fixed if isinstance(fixed, list) else list(fixed.values()) if isinstance(fixed, dict) else [fixed]
    moving = net(pred)
    moving = moving if isinstance(moving, list) else list(moving.values()) if isinstance(moving, dict) else [moving]
    return sum(((m - f).abs() ** p).mean() for m, f in zip(moving, fixed)) / len(moving)


@pytest.mark.parametrize("kind", ["list", "dict", "tensor"])
@pytest.mark.parametrize("p", [1.0, 2.0, 0.5])
def test_feature_distance_equals_its_formula_value_and_gradient(kind, p):
    net = TwoLayers(kind).double().requires_grad_(False)
    inputs = _images(5, (2, 3, 9, 9))
    pred = inputs["pred"].clone().requires_grad_()
    target = inputs["target"].clone().requires_grad_()
    got = lossdsl.compile(f"feature_distance(p={p})")(pred, target, net=net)
    got.backward()
    ref_pred = inputs["pred"].clone().requires_grad_()
    expected = _feature_reference(net, ref_pred, inputs["target"], p)
    expected.backward()
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pred.grad, ref_pred.grad, rtol=1e-10, atol=1e-12)
    assert target.grad is None  # net(target) ran without gradient
    assert net.grad_enabled[:2] == [True, False]


def test_feature_distance_gradcheck_and_identical_inputs():
    net = TwoLayers().double().requires_grad_(False)
    crit = lossdsl.compile("feature_distance(p=1.5)")
    target = _images(6, (1, 3, 7, 7))["target"]
    pred = _images(6, (1, 3, 7, 7))["pred"].requires_grad_()
    assert torch.autograd.gradcheck(lambda x: crit(x, target, net=net), (pred,))
    same = target.clone().requires_grad_()
    out = lossdsl.compile("feature_distance(p=0.5)")(same, target, net=net)
    out.backward()
    assert out.item() == 0.0 and torch.isfinite(same.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_feature_distance_in_half_precision(dtype):
    net = TwoLayers().to(dtype).requires_grad_(False)
    inputs = {k: v.to(dtype) for k, v in _images(7, (2, 3, 9, 9)).items()}
    out = lossdsl.compile("feature_distance")(**inputs, net=net)
    assert out.dtype == dtype
    expected = _feature_reference(net.double(), *(v.double() for v in inputs.values()), 1.0)
    # the network itself runs in half precision: its features carry that rounding
    assert out.double().item() == pytest.approx(expected.item(), rel=2e-2)


def test_feature_distance_on_the_meta_device():
    net = TwoLayers().to("meta")
    pred = torch.empty(2, 3, 9, 9, device="meta", requires_grad=True)
    out = lossdsl.compile("feature_distance")(pred, torch.empty(2, 3, 9, 9, device="meta"), net=net)
    assert out.device.type == "meta" and out.shape == () and out.dtype == torch.float32


def test_feature_distance_refuses_what_is_not_a_network():
    x = torch.rand(1, 3, 9, 9)
    with pytest.raises(lossdsl.LossInputError, match="module or a function") as info:
        lossdsl.compile("feature_distance")(x, x, net=3)
    assert info.value.term == "feature_distance"
    with pytest.raises(lossdsl.LossInputError, match="not a tensor or a list of tensors"):
        lossdsl.compile("feature_distance")(x, x, net=lambda v: "features")
    with pytest.raises(lossdsl.LossInputError, match="net"):
        lossdsl.compile("feature_distance")(x, x)


def test_feature_distance_is_listed_with_its_inputs():
    spec = lossdsl.registry["feature_distance"]
    assert spec.input_names == ("pred", "target", "net")
    assert [h.describe() for h in spec.hyper] == ["p: float > 0 = 1.0"]
    assert spec.summary == spec.func.__doc__.strip().splitlines()[0]
    with pytest.raises(lossdsl.LossArgumentError) as info:
        lossdsl.compile("l1 + feature_distance(p=0)")
    assert info.value.column == len("l1 + feature_distance(") + 1 and "greater than 0" in info.value.hint
    example = re.search(r"Example:\s*``([^`]+)``", spec.func.__doc__)
    lossdsl.compile(example.group(1))


def test_feature_distance_trains_a_tiny_restoration():
    net = TwoLayers().requires_grad_(False)
    target = torch.rand(4, 3, 9, 9, generator=torch.Generator().manual_seed(8))
    pred = torch.zeros_like(target, requires_grad=True)
    crit = lossdsl.compile("l1 + 0.5*feature_distance")
    opt = torch.optim.Adam([pred], lr=0.05)
    first = None
    for _ in range(30):
        loss = crit(pred, target, net=net)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first
    assert F.l1_loss(pred, target).item() < 0.25


def test_ssim_under_autocast_stays_in_float32():
    # autocast would run the window convolutions in bfloat16, whose rounding of E[x^2]
    # dwarfs C2 = 9e-4
    inputs = {k: v.float() for k, v in _images(9).items()}
    expected = lossdsl.compile("ssim")(**inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = lossdsl.compile("ssim")(**inputs)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
