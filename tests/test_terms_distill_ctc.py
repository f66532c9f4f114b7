"""distill_kl against Hinton et al.'s formula written out (and F.kl_div), and ctc against
F.ctc_loss, value and gradient, in float64. CASES is shared with test_terms_common.py.
"""

import pytest
import torch
import torch.nn.functional as F

import lossdsl


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _logit_pair(seed=0, shape=(5, 4)):
    g = _gen(seed)
    return {
        "pred": torch.randn(shape, generator=g, dtype=torch.float64) * 2,
        "target": torch.randn(shape, generator=g, dtype=torch.float64) * 3,
    }


def _extreme_logit_pair(dtype):
    pred = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, 100.0], [0.0, 0.0, 0.0]], dtype=dtype)
    target = torch.tensor([[-100.0, 100.0, 0.0], [-100.0, 100.0, 100.0], [100.0, -100.0, 50.0]], dtype=dtype)
    return {"pred": pred, "target": target}


def _hinton_reference(temperature, class_dim=1):
    # one sample at a time: T^2 sum_c q_c log(q_c / p_c), q the teacher's softened softmax
    def reference(pred, target):
        s = pred.movedim(class_dim, -1).reshape(-1, pred.shape[class_dim])
        t = target.movedim(class_dim, -1).reshape(-1, pred.shape[class_dim])
        total = 0.0
        for si, ti in zip(s, t):
            q = torch.exp(ti / temperature) / torch.exp(ti / temperature).sum()
            p = torch.exp(si / temperature) / torch.exp(si / temperature).sum()
            total = total + temperature**2 * (q * torch.log(q / p)).sum()
        return total / len(s)

    return reference


def _sequences(seed=0, t=12, n=3, c=5):
    g = _gen(seed)
    logits = torch.randn(t, n, c, generator=g, dtype=torch.float64)
    target = torch.randint(1, c, (n, 4), generator=g)
    return {
        "pred": logits.log_softmax(-1),
        "target": target,
        "input_lengths": torch.tensor([12, 10, 7]),
        "target_lengths": torch.tensor([4, 3, 2]),
    }


def _extreme_sequences(dtype):
    # confident frames (log-probabilities near 0 and -200) next to uniform ones
    inputs = _sequences(1)
    logits = torch.full((12, 3, 5), -100.0)
    logits[:, :, 0] = 100.0
    logits[::3, 0, 1] = 100.0
    logits[4:, 1] = 0.0
    return {**inputs, "pred": logits.log_softmax(-1).to(dtype)}


def _ctc_reference(blank=0, zero_infinity=False, reduction="mean"):
    # the term renormalises its input with log_softmax (a no-op on log-probabilities)
    def reference(pred, target, input_lengths, target_lengths):
        return F.ctc_loss(pred.log_softmax(-1), target, input_lengths, target_lengths,
                          blank=blank, reduction=reduction, zero_infinity=zero_infinity)

    return reference


def _blank_last(seed=0):
    inputs = _sequences(seed)
    return {**inputs, "target": inputs["target"] - 1}  # labels 0..3, blank 4


CASES = {
    "distill_kl": (_logit_pair, _hinton_reference(4.0), _extreme_logit_pair),
    'distill_kl(temperature=0.5, class_dim=-1, reduction="sum")': (
        lambda seed=0: _logit_pair(seed, (2, 3, 4)),
        lambda pred, target: 6 * _hinton_reference(0.5, -1)(pred, target),
        _extreme_logit_pair,
    ),
    "distill_kl(temperature=20)": (_logit_pair, _hinton_reference(20.0), _extreme_logit_pair),
    "ctc": (_sequences, _ctc_reference(), _extreme_sequences),
    'ctc(blank=4, zero_infinity=true, reduction="sum")': (
        _blank_last, _ctc_reference(4, True, "sum"), _extreme_sequences,
    ),
}


def test_distill_kl_equals_kl_div_batchmean_times_t_squared():
    inputs = _logit_pair(2)
    for t in (1.0, 4.0, 20.0):
        got = lossdsl.compile(f"distill_kl(temperature={t})")(**inputs)
        expected = F.kl_div(
            F.log_softmax(inputs["pred"] / t, 1), F.softmax(inputs["target"] / t, 1), reduction="batchmean"
        ) * t * t
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_distill_kl_gradient_and_classes_along_an_inner_axis():
    # (N, C, H, W): the classes on axis 1, a KL per pixel, averaged over N, H and W
    inputs = _logit_pair(3, (2, 4, 3, 2))
    pred = inputs["pred"].clone().requires_grad_()
    out = lossdsl.compile("distill_kl(temperature=2)")(pred, inputs["target"])
    out.backward()
    ref = inputs["pred"].clone().requires_grad_()
    expected = _hinton_reference(2.0)(ref, inputs["target"])
    expected.backward()
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pred.grad, ref.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_distill_kl_at_the_smallest_temperature_is_finite(dtype):
    inputs = {k: v.to(dtype) for k, v in _extreme_logit_pair(torch.float32).items()}
    pred = inputs["pred"].requires_grad_()
    out = lossdsl.compile("distill_kl(temperature=0.0001)")(pred, inputs["target"])
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(pred.grad).all()
    # the hard-label limit: -log p_k / T^2 ~ (max(s) - s_k) / T for the teacher's top class k,
    # a gap of 200 in the first sample; the second matches its teacher, the third's gap is 0
    assert out.float().item() == pytest.approx(1e-4 * 200 / 3, rel=1e-3)


def test_distill_kl_of_a_student_equal_to_its_teacher_is_zero():
    logits = _logit_pair(4)["target"]
    assert lossdsl.compile("distill_kl")(logits, logits.clone()).item() == pytest.approx(0.0, abs=1e-13)


def test_ctc_equals_f_ctc_loss_on_log_probabilities_value_and_logit_gradient():
    inputs = _sequences(5)
    logits = torch.randn(12, 3, 5, dtype=torch.float64, generator=_gen(6))
    ours = logits.clone().requires_grad_()
    out = lossdsl.compile("ctc")(ours.log_softmax(-1), inputs["target"], input_lengths=inputs["input_lengths"],
                                 target_lengths=inputs["target_lengths"])
    out.backward()
    ref = logits.clone().requires_grad_()
    expected = F.ctc_loss(ref.log_softmax(-1), inputs["target"], inputs["input_lengths"], inputs["target_lengths"])
    expected.backward()
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-10, atol=1e-12)


def test_ctc_takes_lengths_as_lists_and_concatenated_targets():
    inputs = _sequences(7)
    flat = torch.cat([row[:n] for row, n in zip(inputs["target"], inputs["target_lengths"].tolist())])
    got = lossdsl.compile("ctc")(inputs["pred"], flat, input_lengths=[12, 10, 7], target_lengths=[4, 3, 2])
    expected = F.ctc_loss(inputs["pred"], inputs["target"], inputs["input_lengths"], inputs["target_lengths"])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_ctc_impossible_alignment_is_inf_or_zero_with_zero_infinity():
    inputs = _sequences(8)
    inputs["input_lengths"] = torch.tensor([12, 2, 7])  # 2 frames cannot emit 3 labels
    with pytest.raises(lossdsl.NonFiniteLossError, match="'ctc' is inf"):
        lossdsl.compile("ctc")(**inputs)
    assert lossdsl.compile("ctc", nonfinite="warn")(**inputs).item() == float("inf")
    pred = inputs.pop("pred").clone().requires_grad_()
    out = lossdsl.compile("ctc(zero_infinity=true)")(pred, **inputs)
    out.backward()
    expected = F.ctc_loss(pred.detach(), inputs["target"], inputs["input_lengths"], inputs["target_lengths"],
                          zero_infinity=True)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(pred.grad).all() and (pred.grad[:, 1] == 0).all()


def test_ctc_input_errors_name_the_term():
    inputs = _sequences(9)
    bad = [
        ({"pred": inputs["pred"][:, 0]}, r"\(T, N, C\)"),
        ({"input_lengths": torch.tensor([12, 10])}, "one integer length per sample"),
        ({"target_lengths": [4.0, 3.0, 2.0]}, "one integer length per sample"),
        ({"target": inputs["target"].double()}, "integer label sequences"),
        ({"input_lengths": torch.tensor([13, 10, 7])}, "input_lengths"),
        ({"target": inputs["target"][:2]}, "2 label sequences"),
    ]
    for change, words in bad:
        with pytest.raises(lossdsl.LossInputError, match=words) as info:
            lossdsl.compile("ctc")(**{**inputs, **change})
        assert info.value.term == "ctc"
    with pytest.raises(lossdsl.LossInputError, match="blank=5"):
        lossdsl.compile("ctc(blank=5)")(**inputs)
