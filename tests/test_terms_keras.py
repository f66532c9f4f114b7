"""Keras-style terms (hinge, squared_hinge, categorical_hinge, mape, msle) against their
DESIGN.md §5 formulas written out in float64, and against the values published in Keras'
own tests (keras/src/losses/losses_test.py, Keras 3: HingeTest, SquaredHingeTest,
CategoricalHingeTest, MeanAbsolutePercentageErrorTest, MeanSquaredLogarithmicErrorTest).
CASES is shared with test_terms_common.py (see test_terms_regression.py).
"""

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.cli import main

# Keras' tests compare with assertAlmostEqual to 3 decimals: |a - b| < 1.5e-3
KERAS_DECIMALS = 1.5e-3

# the inputs of Keras' hinge tests and of its regression tests
HINGE_TRUE = [[0.0, 1.0], [0.0, 0.0]]
HINGE_PRED = [[0.6, 0.4], [0.4, 0.6]]
REG_TRUE = [[1.0, 9.0, 2.0], [-5.0, -2.0, 6.0]]
REG_PRED = [[4.0, 8.0, 12.0], [8.0, 1.0, 3.0]]


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _scores_01(seed=0):
    g = _gen(seed)
    pred = torch.randn(5, 4, generator=g, dtype=torch.float64) * 1.5
    target = (torch.rand(5, 4, generator=g) > 0.5).to(torch.float64)
    return {"pred": pred, "target": target}


def _scores_pm1(seed=0):
    inputs = _scores_01(seed)
    return {"pred": inputs["pred"], "target": 2 * inputs["target"] - 1}


def _extreme_scores(dtype):
    pred = torch.tensor([[1e4, -1e4, 100.0, -100.0], [0.0, 1.0, -1.0, 1e-3]], dtype=dtype)
    target = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]], dtype=dtype)
    return {"pred": pred, "target": target}


def _extreme_scores_pm1(dtype):
    inputs = _extreme_scores(dtype)
    return {"pred": inputs["pred"], "target": 2 * inputs["target"] - 1}


def _one_hot(seed=0, shape=(6, 5), class_dim=-1):
    g = _gen(seed)
    pred = torch.randn(*shape, generator=g, dtype=torch.float64)
    labels = torch.randint(0, shape[class_dim], pred.movedim(class_dim, -1).shape[:-1], generator=g)
    target = F.one_hot(labels, shape[class_dim]).to(torch.float64).movedim(-1, class_dim)
    target[0] = target[0].softmax(-1) if class_dim == -1 else target[0]  # one soft row
    return {"pred": pred, "target": target}


def _extreme_classes(dtype):
    pred = torch.tensor([[100.0, -100.0, 1e4], [-1e4, 100.0, 100.0], [0.0, 0.0, 0.0]], dtype=dtype)
    target = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=dtype)
    return {"pred": pred, "target": target}


def _positive(seed=0):
    g = _gen(seed)
    pred = torch.rand(4, 6, generator=g, dtype=torch.float64) * 20 - 2  # some negatives
    target = torch.rand(4, 6, generator=g, dtype=torch.float64) * 20 - 2
    return {"pred": pred, "target": target}


def _extreme_regression(dtype):
    pred = torch.tensor([[1e4, -1e4, 0.5, 0.0], [2.0, 1e4, -3.0, 1e-3]], dtype=dtype)
    target = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1e4, -1e4, 1e-9, 1e4]], dtype=dtype)
    return {"pred": pred, "target": target}


def _hinge_reference(margin, pm1, squared):
    def reference(pred, target):
        y = target if pm1 else 2 * target - 1
        l = torch.clamp(margin - y * pred, min=0)
        return (l**2 if squared else l).mean()

    return reference


def _categorical_hinge_reference(class_dim=-1):
    # one sample at a time: its positive score against its largest wrong score
    def reference(pred, target):
        p = pred.movedim(class_dim, -1).reshape(-1, pred.shape[class_dim])
        t = target.movedim(class_dim, -1).reshape(-1, pred.shape[class_dim])
        values = [max(0.0, 1 + max((1 - tc) * pc for tc, pc in zip(tr, pr)) - sum(tr * pr)) for tr, pr in zip(t, p)]
        return torch.stack([torch.as_tensor(v, dtype=pred.dtype) for v in values]).mean()

    return reference


def _mape_reference(eps):
    return lambda pred, target: (100 * (pred - target).abs() / torch.clamp(target.abs(), min=eps)).mean()


def _msle_reference(pred, target):
    return ((torch.log(1 + pred.clamp(min=0)) - torch.log(1 + target.clamp(min=0))) ** 2).mean()


CASES = {
    "hinge": (_scores_01, _hinge_reference(1.0, False, False), _extreme_scores),
    'hinge(margin=0.5, targets="pm1")': (_scores_pm1, _hinge_reference(0.5, True, False), _extreme_scores_pm1),
    "squared_hinge": (_scores_01, _hinge_reference(1.0, False, True), _extreme_scores),
    'squared_hinge(margin=2, targets="pm1")': (
        _scores_pm1, _hinge_reference(2.0, True, True), _extreme_scores_pm1,
    ),
    "categorical_hinge": (_one_hot, _categorical_hinge_reference(), _extreme_classes),
    "categorical_hinge(class_dim=1)": (
        lambda seed=0: _one_hot(seed, (3, 4, 2), class_dim=1),
        _categorical_hinge_reference(1),
        lambda dtype: {k: v.T[None] for k, v in _extreme_classes(dtype).items()},
    ),
    "mape": (_positive, _mape_reference(1e-7), _extreme_regression),
    "mape(eps=0.5)": (_positive, _mape_reference(0.5), _extreme_regression),
    "msle": (_positive, _msle_reference, _extreme_regression),
}


def _call(src, pred, target, **inputs):
    return lossdsl.compile(src)(_t(pred), _t(target), **inputs).item()


def test_hinge_terms_equal_keras_published_values():
    # HingeTest.test_unweighted: 1.3 (sum_over_batch_size); per sample [1.1, 1.5]
    assert _call("hinge", HINGE_PRED, HINGE_TRUE) == pytest.approx(1.3, abs=KERAS_DECIMALS)
    # test_weighted: sample_weight [1, 0] -> 0.55
    w = _t([[1.0], [0.0]])
    assert _call("hinge(weight=w)", HINGE_PRED, HINGE_TRUE, w=w) == pytest.approx(0.55, abs=KERAS_DECIMALS)
    for row, value in zip(range(2), [1.1, 1.5]):
        assert _call("hinge", HINGE_PRED[row], HINGE_TRUE[row]) == pytest.approx(value, abs=KERAS_DECIMALS)
    # SquaredHingeTest: 1.86; per sample [1.46, 2.26]; sample_weight [1, 0] -> 0.73
    assert _call("squared_hinge", HINGE_PRED, HINGE_TRUE) == pytest.approx(1.86, abs=KERAS_DECIMALS)
    assert _call("squared_hinge(weight=w)", HINGE_PRED, HINGE_TRUE, w=w) == pytest.approx(0.73, abs=KERAS_DECIMALS)
    for row, value in zip(range(2), [1.46, 2.26]):
        assert _call("squared_hinge", HINGE_PRED[row], HINGE_TRUE[row]) == pytest.approx(value, abs=KERAS_DECIMALS)
    # CategoricalHingeTest: 1.4 (sum_over_batch_size), 2.8 ("sum"), per sample [1.2, 1.6]
    assert _call("categorical_hinge", HINGE_PRED, HINGE_TRUE) == pytest.approx(1.4, abs=KERAS_DECIMALS)
    assert _call('categorical_hinge(reduction="sum")', HINGE_PRED, HINGE_TRUE) == pytest.approx(2.8, abs=KERAS_DECIMALS)
    for row, value in zip(range(2), [1.2, 1.6]):
        one = _call("categorical_hinge", [HINGE_PRED[row]], [HINGE_TRUE[row]])
        assert one == pytest.approx(value, abs=KERAS_DECIMALS)


def test_mape_and_msle_equal_keras_published_values():
    # Keras' sample weights scale each sample's mean; lossdsl's weight multiplies each element
    # and takes the mean of all, which is the same number for weights constant along a row
    per_sample = {"w": _t([[1.2], [3.4]])}
    scalar = {"w": _t(2.3)}
    timestep = {"w": _t([3.0, 6.0, 5.0, 0.0, 4.0, 2.0]).reshape(2, 3, 1)}
    pred3, true3 = _t(REG_PRED).reshape(2, 3, 1), _t(REG_TRUE).reshape(2, 3, 1)
    published = {
        "mape": (211.8518, 487.259, 422.8888, 694.4444),
        "msle": (1.4370, 3.3051, 3.7856, 2.647374),
    }
    for name, (unweighted, scalar_w, sample_w, timestep_w) in published.items():
        assert _call(name, REG_PRED, REG_TRUE) == pytest.approx(unweighted, abs=KERAS_DECIMALS)
        assert _call(f"{name}(weight=w)", REG_PRED, REG_TRUE, **scalar) == pytest.approx(scalar_w, abs=KERAS_DECIMALS)
        got = _call(f"{name}(weight=w)", REG_PRED, REG_TRUE, **per_sample)
        assert got == pytest.approx(sample_w, abs=KERAS_DECIMALS)
        got = lossdsl.compile(f"{name}(weight=w)")(pred3, true3, **timestep).item()
        assert got == pytest.approx(timestep_w, abs=KERAS_DECIMALS)
        # test_all_correct_unweighted / test_zero_weighted: 0
        assert _call(name, REG_TRUE, REG_TRUE) == 0.0
        assert _call(f"{name}(weight=w)", REG_PRED, REG_TRUE, w=_t(0.0)) == 0.0


@pytest.mark.parametrize("name", ["hinge", "squared_hinge", "mape", "msle"])
def test_elementwise_terms_take_weight_mask_and_sum(name):
    inputs = _positive(3) if name in ("mape", "msle") else _scores_01(3)
    reference = CASES[name][1]
    pred, target = inputs["pred"], inputs["target"]
    # the elementwise values, recovered from the reference on single elements
    values = torch.stack([reference(p[None], t[None]) for p, t in zip(pred.flatten(), target.flatten())])
    values = values.reshape(pred.shape)
    w = torch.rand(pred.shape, generator=_gen(4), dtype=torch.float64)
    mask = (torch.rand(pred.shape, generator=_gen(5)) > 0.4).to(torch.float64)
    checks = {
        f"{name}(weight=w)": (w * values).mean(),
        f"{name}(mask=m)": (mask * values).sum() / mask.sum(),
        f'{name}(reduction="sum")': values.sum(),
        f'{name}(weight=w, mask=m, reduction="sum")': (mask * w * values).sum(),
    }
    for src, expected in checks.items():
        crit = lossdsl.compile(src, strict=False)  # each program reads only some of w, m
        got = crit(pred, target, w=w, m=mask)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    zero = lossdsl.compile(f"{name}(mask=m)")(pred.clone().requires_grad_(), target, m=torch.zeros_like(mask))
    zero.backward()
    assert zero.item() == 0.0


def test_mape_at_zero_targets_is_finite_and_divided_by_eps():
    pred = torch.tensor([2.0, -1.0], dtype=torch.float64, requires_grad=True)
    target = torch.zeros(2, dtype=torch.float64)
    out = lossdsl.compile("mape(eps=0.01)")(pred, target)
    out.backward()
    assert out.item() == pytest.approx(100 * (2 + 1) / 0.01 / 2, rel=1e-12)
    torch.testing.assert_close(pred.grad, torch.tensor([1.0, -1.0], dtype=torch.float64) * 100 / 0.01 / 2)


def test_categorical_hinge_refuses_a_class_axis_out_of_range():
    with pytest.raises(lossdsl.LossInputError, match="class_dim") as info:
        lossdsl.compile("categorical_hinge(class_dim=2)")(torch.zeros(3, 4), torch.zeros(3, 4))
    assert info.value.term == "categorical_hinge"


SECOND_TABLE = [
    "hinge", "squared_hinge", "categorical_hinge", "mape", "msle", "tversky", "focal_tversky",
    "jaccard", "giou", "diou", "ciou", "info_nce", "nt_xent", "ssim", "distill_kl", "ctc",
    "feature_distance",
]


@pytest.mark.parametrize("name", SECOND_TABLE)
def test_cli_shows_each_second_table_term(name, capsys):
    # `lossdsl terms NAME`: signature with ranges, the docstring (summary first, an example)
    code = main(["terms", name])
    out = capsys.readouterr().out
    spec = lossdsl.registry[name]
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == spec.signature() and lines[2] == spec.summary
    assert "Example: ``" in out
    for h in spec.hyper:
        assert f"  {h.describe()}" in lines
    for p in spec.inputs:
        assert any(line.strip().startswith(p.name) for line in lines[lines.index("inputs:"):])
