"""The custom losses of DESIGN.md §3.1, compiled from the text, against the same formula
written in PyTorch (values and gradients in float64)."""

import pytest
import torch
import torch.nn.functional as F
from test_syntax_tensors import EXAMPLES

import lossdsl

D = torch.float64


def _hinge(pred, target):
    outside = (pred < 0) | (pred > 1)
    return F.mse_loss(pred, target) + 0.5 * torch.where(outside, F.relu(1 - (pred - target).abs()), 0).mean()


def _sequence(pred, target):
    step_ce = F.cross_entropy(pred.permute(0, 2, 1), target, reduction="none").mean(dim=0)
    return step_ce.mean() + 0.1 * step_ce.var(correction=0)


def _huber(pred, target):
    e = (pred - target).abs()
    delta = 0.5 * e.mean()  # differentiated too
    return torch.where(e <= delta, 0.5 * e**2, delta * (e - 0.5 * delta)).mean()


def _weights(pred, target, w):
    channels = torch.tensor([1, 2, 0.5], dtype=D)
    return (w * (pred - target) ** 2).mean() + 0.1 * (channels * (pred - target).abs()).mean()


def _ranking(pred, target):
    d, n = pred[:, None] - pred[None, :], pred.shape[0]
    return torch.where(target[:, None] > target[None, :], F.relu(1 - d), 0).sum() / (n * (n - 1) / 2)


def _inputs(name, g):
    if name == "sequence":  # (N, T, C) logits, (N, T) classes
        logits = torch.randn(5, 7, 4, dtype=D, generator=g)
        return {"pred": logits, "target": torch.randint(0, 4, (5, 7), generator=g)}
    if name == "ranking":
        return {"pred": torch.randn(9, dtype=D, generator=g), "target": torch.randn(9, dtype=D, generator=g)}
    # pred in [-0.5, 1.5): some of it outside the hinge's [0, 1]
    inputs = {"pred": 2 * torch.rand(6, 3, dtype=D, generator=g) - 0.5}
    inputs["target"] = torch.rand(6, 3, dtype=D, generator=g)
    if name == "weights":
        inputs["w"] = torch.rand(6, 3, dtype=D, generator=g)
    return inputs


REFERENCES = dict(hinge=_hinge, sequence=_sequence, huber=_huber, weights=_weights, ranking=_ranking)


@pytest.mark.parametrize("name", list(EXAMPLES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_design_examples_equal_their_pytorch_formula(name, seed):
    g = torch.Generator().manual_seed(seed)
    inputs = _inputs(name, g)
    mine = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}
    theirs = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in inputs.items()}
    got, want = lossdsl.compile(EXAMPLES[name])(**mine), REFERENCES[name](**theirs)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # the gradient too: through where, indexing and (for huber) the threshold itself
    got.backward()
    want.backward()
    torch.testing.assert_close(mine["pred"].grad, theirs["pred"].grad, rtol=1e-10, atol=1e-10)


_BOOL_ARITHMETIC = [
    ("true - mse", lambda p, t: 1 - F.mse_loss(p, t)),
    ("mean((pred > 0) - pred)", lambda p, t: ((p > 0).to(D) - p).mean()),
    ("mean(pred > target) + mse", lambda p, t: (p > t).to(D).mean() + F.mse_loss(p, t)),
]


@pytest.mark.parametrize("text, reference", _BOOL_ARITHMETIC, ids=[t for t, _ in _BOOL_ARITHMETIC])
def test_conditions_in_arithmetic_count_as_zero_or_one(text, reference):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(6, 3, dtype=D, generator=g), torch.randn(6, 3, dtype=D, generator=g)
    got = lossdsl.compile(text)(pred, target)
    torch.testing.assert_close(got, reference(pred, target), rtol=1e-10, atol=1e-10)
