"""Contrastive terms: info_nce against F.cross_entropy on the cosine logits (CLIP's symmetric
form written out as in Radford et al. 2021), nt_xent against pytorch-metric-learning's
NTXentLoss and against SimCLR's formula written as a loop; identical embeddings and the
smallest temperature stay finite. CASES is shared with test_terms_common.py.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import NTXentLoss

import lossdsl


def _views(seed=0, n=6, d=5):
    g = torch.Generator().manual_seed(seed)
    anchor = torch.randn(n, d, generator=g, dtype=torch.float64)
    positive = anchor + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return {"anchor": anchor, "positive": positive}


def _extreme_views(dtype):
    # identical views, views of 1e4 and 1e-4 magnitudes, two identical items
    anchor = torch.tensor([[1e4, 0.0, 0.0], [0.0, 1e-4, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], dtype=dtype)
    positive = torch.tensor([[1e4, 0.0, 0.0], [0.0, -1e4, 1.0], [1.0, 1.0, 1.0], [-1.0, 2.0, 0.5]], dtype=dtype)
    return {"anchor": anchor, "positive": positive}


def _clip_reference(temperature, symmetric):
    def reference(anchor, positive):
        logits = F.normalize(anchor, dim=1) @ F.normalize(positive, dim=1).T / temperature
        labels = torch.arange(len(anchor))
        if not symmetric:
            return F.cross_entropy(logits, labels)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    return reference


def _pml_reference(temperature):
    def reference(anchor, positive):
        labels = torch.arange(len(anchor)).repeat(2)  # the two views of item i share label i
        return NTXentLoss(temperature=temperature)(torch.cat([anchor, positive]), labels)

    return reference


def _simclr_loop(anchor, positive, temperature):
    """SimCLR's loss, one view at a time."""
    z = [F.normalize(v, dim=0) for v in torch.cat([anchor, positive])]
    n = len(anchor)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        s = [torch.dot(z[i], z[k]) / temperature for k in range(2 * n)]
        denominator = sum(torch.exp(s[k]) for k in range(2 * n) if k != i)
        total = total - torch.log(torch.exp(s[j]) / denominator)
    return total / (2 * n)


CASES = {
    "info_nce": (_views, _clip_reference(0.07, False), _extreme_views),
    "info_nce(temperature=0.5, symmetric=true)": (_views, _clip_reference(0.5, True), _extreme_views),
    "info_nce(temperature=0.01)": (_views, _clip_reference(0.01, False), _extreme_views),
    "nt_xent": (_views, _pml_reference(0.5), _extreme_views),
    "nt_xent(temperature=0.1)": (_views, _pml_reference(0.1), _extreme_views),
}


def test_nt_xent_equals_simclrs_formula():
    inputs = _views(3, n=4)
    for t in (0.5, 0.1):
        got = lossdsl.compile(f"nt_xent(temperature={t})")(**inputs)
        torch.testing.assert_close(got, _simclr_loop(*inputs.values(), t), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("src, reference", [
    ("info_nce(symmetric=true)", _clip_reference(0.07, True)),
    ("nt_xent(temperature=0.2)", _pml_reference(0.2)),
])
def test_gradient_equals_the_references(src, reference):
    inputs = _views(4)
    ours = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    lossdsl.compile(src)(**ours).backward()
    ref = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    reference(**ref).backward()
    for k in inputs:
        torch.testing.assert_close(ours[k].grad, ref[k].grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reduction_over_anchors(reduction):
    inputs = _views(5, n=3)
    logits = F.normalize(inputs["anchor"], dim=1) @ F.normalize(inputs["positive"], dim=1).T / 0.07
    expected = F.cross_entropy(logits, torch.arange(3), reduction=reduction)
    got = lossdsl.compile(f'info_nce(reduction="{reduction}")')(**inputs)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    got = lossdsl.compile(f'nt_xent(reduction="{reduction}")')(**inputs)
    mean = _simclr_loop(*inputs.values(), 0.5)
    torch.testing.assert_close(got, mean if reduction == "mean" else 6 * mean, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("src", ["info_nce(temperature=0.0001, symmetric=true)", "nt_xent(temperature=0.0001)"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_smallest_temperature_is_finite(src, dtype):
    inputs = {k: v.to(dtype).requires_grad_() for k, v in _extreme_views(torch.float32).items()}
    out = lossdsl.compile(src)(**inputs)
    out.backward()
    assert torch.isfinite(out) and all(torch.isfinite(v.grad).all() for v in inputs.values())
    # a wrong pair one cosine unit above the right one costs about 1 / temperature
    assert out.float().item() > 1e3


def test_one_item_has_no_negatives():
    # nt_xent of one pair: the partner is the whole denominator, -log 1 = 0
    one = _views(6, n=1)
    assert lossdsl.compile("nt_xent")(**one).item() == pytest.approx(0.0, abs=1e-15)
    assert lossdsl.compile("info_nce")(**one).item() == pytest.approx(0.0, abs=1e-15)


def test_temperature_range_is_checked():
    for src in ("info_nce(temperature=0)", "nt_xent(temperature=1e-5)", "info_nce(temperature=1e5)"):
        with pytest.raises(lossdsl.LossArgumentError) as info:
            lossdsl.compile(src)
        assert "temperature" in info.value.hint and "[0.0001, 10000.0]" in info.value.hint


def test_views_must_be_matrices_of_one_shape():
    a = torch.randn(4, 3)
    for positive in (torch.randn(5, 3), torch.randn(4, 3, 1)):
        with pytest.raises(lossdsl.LossInputError, match=r"\(N, D\)") as info:
            lossdsl.compile("info_nce")(anchor=a, positive=positive)
        assert info.value.term == "info_nce"
    assert math.isfinite(lossdsl.compile("nt_xent")(anchor=a, positive=a).item())


@pytest.mark.parametrize("src", ["info_nce(symmetric=true)", "nt_xent"])
def test_autocast_does_not_lower_the_similarities(src):
    # autocast would run the cosine matrix product in bfloat16 (2^-9 relative rounding)
    inputs = {k: v.float() for k, v in _views(7, n=16, d=32).items()}
    expected = lossdsl.compile(src)(**inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = lossdsl.compile(src)(**inputs)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
