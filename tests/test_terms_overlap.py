"""Overlap terms (tversky, focal_tversky, jaccard) against their DESIGN.md §5 formulas
written out in float64 (Salehi et al. 2017; Abraham & Khan 2019; the soft IoU), their
relations to dice, and their float32 accuracy on large masks. CASES is shared with
test_terms_common.py (see test_terms_regression.py).
"""

import pytest
import test_terms_classification
import torch

import lossdsl

_logits = test_terms_classification._logits
_probabilities = test_terms_classification._probabilities
_extreme_logits = test_terms_classification._extreme_logits
_extreme_probabilities = test_terms_classification._extreme_probabilities


def _sums(pred, target, from_logits):
    p = torch.sigmoid(pred) if from_logits else pred
    return (p * target).sum(), p.sum(), target.sum()


def _tversky_reference(alpha, beta, smooth, from_logits, gamma=None):
    # the table's formula with S_p(1-t) = S_p - S_pt and S_(1-p)t = S_t - S_pt
    def reference(pred, target):
        s_pt, s_p, s_t = _sums(pred, target, from_logits)
        loss = 1 - (s_pt + smooth) / (s_pt + alpha * (s_p - s_pt) + beta * (s_t - s_pt) + smooth)
        return loss if gamma is None else loss**gamma

    return reference


def _jaccard_reference(smooth, from_logits):
    def reference(pred, target):
        s_pt, s_p, s_t = _sums(pred, target, from_logits)
        return 1 - (s_pt + smooth) / (s_p + s_t - s_pt + smooth)

    return reference


CASES = {
    "tversky": (_logits, _tversky_reference(0.5, 0.5, 1.0, True), _extreme_logits),
    "tversky(alpha=0.3, beta=0.7, smooth=0.5, from_logits=false)": (
        _probabilities, _tversky_reference(0.3, 0.7, 0.5, False), _extreme_probabilities,
    ),
    "focal_tversky": (_logits, _tversky_reference(0.5, 0.5, 1.0, True, 0.75), _extreme_logits),
    "focal_tversky(alpha=0.7, beta=0.3, gamma=2, smooth=0.1, from_logits=false)": (
        _probabilities, _tversky_reference(0.7, 0.3, 0.1, False, 2.0), _extreme_probabilities,
    ),
    "jaccard": (_logits, _jaccard_reference(1.0, True), _extreme_logits),
    "jaccard(smooth=0.1, from_logits=false)": (_probabilities, _jaccard_reference(0.1, False), _extreme_probabilities),
}


def test_tversky_at_one_half_is_dice_and_at_one_is_jaccard():
    inputs = _logits(2)
    dice = 1 - (2 * (torch.sigmoid(inputs["pred"]) * inputs["target"]).sum() + 1) / (
        torch.sigmoid(inputs["pred"]).sum() + inputs["target"].sum() + 1
    )
    # (S_pt + s) / (S_pt + (FP + FN) / 2 + s) = (2 S_pt + 2 s) / (S_p + S_t + 2 s): dice's smooth is 2 s
    got = lossdsl.compile("tversky(alpha=0.5, beta=0.5, smooth=0.5)")(**inputs)
    torch.testing.assert_close(got, dice, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        lossdsl.compile("tversky(alpha=1, beta=1)")(**inputs),
        _jaccard_reference(1.0, True)(**inputs), rtol=1e-12, atol=1e-12,
    )


def test_alpha_weighs_false_positives_and_beta_false_negatives():
    # pred covers everything: only false positives
    target = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    pred = torch.ones(4, dtype=torch.float64)
    fp_only = {a: lossdsl.compile(f"tversky(alpha={a}, beta=0.5, smooth=1, from_logits=false)")(pred, target).item()
               for a in (0.1, 0.9)}
    assert fp_only[0.1] == pytest.approx(1 - 2 / (2 + 0.1 * 3), rel=1e-12)
    assert fp_only[0.9] == pytest.approx(1 - 2 / (2 + 0.9 * 3), rel=1e-12)


@pytest.mark.parametrize("src", ["tversky", "focal_tversky", "jaccard"])
def test_perfect_and_empty_masks(src):
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    probs = f"{src}(from_logits=false)"
    pred = target.clone().requires_grad_()
    out = lossdsl.compile(probs)(pred, target)
    out.backward()
    assert out.item() == pytest.approx(0.0, abs=1e-15)
    assert torch.isfinite(pred.grad).all()
    empty = torch.zeros(2, 2, dtype=torch.float64)
    assert lossdsl.compile(probs)(empty, empty).item() == 0.0


def test_focal_tversky_gradient_at_a_perfect_mask_is_zero_not_infinite():
    target = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    pred = target.clone().requires_grad_()
    lossdsl.compile("focal_tversky(gamma=0.5, from_logits=false)")(pred, target).backward()
    assert torch.equal(pred.grad, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize(
    "src, reference",
    [("tversky(alpha=0.3, beta=0.7)", _tversky_reference(0.3, 0.7, 1.0, True)),
     ("jaccard", _jaccard_reference(1.0, True))],
)
def test_float32_keeps_small_errors_on_large_masks(src, reference):
    # 2^20 pixels with a handful of errors: the false sums are tiny next to the overlap, so
    # S_p - S_pt in float32 would lose them
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(1024, 1024, generator=g) > 0.5).to(torch.float64)
    pred = (2 * target - 1) * 30.0
    pred[:3, :3] = -pred[:3, :3]  # nine wrong pixels
    expected = reference(pred, target).item()
    got = lossdsl.compile(src)(pred.float(), target.float()).item()
    assert got == pytest.approx(expected, rel=1e-3)
