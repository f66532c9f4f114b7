"""Imbalanced binary classification: ``focal`` against ``cross_entropy(class_weights=...)``.

One sample in twenty is positive. The same small network is trained twice: once with the
binary focal loss on one logit per sample (Lin et al. 2017, ``focal(gamma=2, alpha=0.25)``),
once with a class-weighted cross entropy on two logits. Both losses are one line of text; the
example prints each model's recall and precision on the rare class.
Run ``python examples/imbalanced_classification.py --steps 300``.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import lossdsl

POSITIVE_RATE = 0.05
LOSSES = {
    # one logit per sample, float targets in {0, 1}
    "focal": "focal(gamma=2, alpha=0.25)",
    # two logits per sample, class-index targets; the rare class weighs 19 times more
    "cross_entropy": "cross_entropy(class_weights=[1, 19])",
}


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of 6 dimensions; the positives sit off-centre and overlap the negatives."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < POSITIVE_RATE).long()
    x = torch.randn(n, 6, generator=g)
    x[y == 1, :2] += torch.tensor([1.8, -1.2])
    return x, y


def train(name: str, steps: int, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[nn.Module, list[float]]:
    torch.manual_seed(seed)
    crit = lossdsl.compile(LOSSES[name])
    outputs = 1 if name == "focal" else 2
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, outputs))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(steps):
        idx = torch.randint(0, len(x), (256,), generator=g)
        logits = model(x[idx])
        if name == "focal":
            loss = crit(logits.squeeze(-1), y[idx].float())
        else:
            loss = crit(logits, y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    return model, history


@torch.no_grad()
def rare_class_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(recall, precision) of the positive class."""
    logits = model(x)
    predicted = logits.squeeze(-1) > 0 if logits.shape[-1] == 1 else logits.argmax(-1) == 1
    true_pos = (predicted & (y == 1)).sum().item()
    recall = true_pos / max(1, (y == 1).sum().item())
    precision = true_pos / max(1, predicted.sum().item())
    return recall, precision


def main(steps: int = 300, seed: int = 0) -> dict[str, list[float]]:
    """Train both models; returns ``{loss name: loss of every step}``."""
    x, y = make_data(8192, seed)
    x_test, y_test = make_data(4096, seed + 1)
    histories = {}
    for name in LOSSES:
        model, histories[name] = train(name, steps, x, y, seed)
        recall, precision = rare_class_scores(model, x_test, y_test)
        print(f"{LOSSES[name]:>40}: rare-class recall {recall:.2f}, precision {precision:.2f}")
    return histories


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    main(parser.parse_args().steps)
