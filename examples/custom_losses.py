"""Custom losses written in the text, read from a YAML config: a bounded hinge and the
variance of a per-step loss (README, "Custom losses in the text").

Both programs live in ``configs/custom_losses.yaml``, one under each key; the script trains
a small model with each and prints what the extra term is for:

- ``bounded``: an MLP fits a curve that lies in [0, 1] from noisy samples. The hinge, as
  written by hand in the code this program comes from, charges a prediction outside [0, 1]
  with ``relu(1 - |e|)``: most where that prediction is near its target. Printed: the share
  of test predictions outside [0, 1] and the test MSE against the clean curve. Read them
  with the monitor's table: the hinge takes most of the loss, and its gradient (``-sign(e)``
  outside the interval) moves such a prediction away from its target, so more of them end
  outside than with ``mse`` alone (about 0.4 against 0.04 here). Text in a config makes a
  change of formula a one-line experiment.
- ``sequence``: a GRU tags every step of a sequence (the class is the position of the
  largest of the last three inputs, so late steps see more context than early ones); the
  variance term keeps the per-step losses together. Printed: the accuracy of the first and
  of the other steps.

Run ``python examples/custom_losses.py --steps 300``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

import lossdsl

CONFIG = Path(__file__).with_name("configs") / "custom_losses.yaml"
CLASSES, FEATURES, LENGTH = 3, 3, 12


def bounded_data(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x in [-3, 3]; the target is a sigmoid bump in [0, 1] plus noise that leaves it."""
    x = 6 * torch.rand(n, 1, generator=gen) - 3
    clean = torch.sigmoid(3 * torch.sin(1.5 * x))
    return x, clean + 0.15 * torch.randn(n, 1, generator=gen)


def sequence_data(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (n, T, F); the class of step t is the feature that was largest, summed over
    steps t-2..t (so step 0 sees one step, step 2 and later see three)."""
    x = torch.randn(n, LENGTH, FEATURES, generator=gen)
    window = x.cumsum(1) - torch.nn.functional.pad(x.cumsum(1), (0, 0, 3, 0))[:, :LENGTH]
    return x, window.argmax(-1)


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(FEATURES, 32, batch_first=True)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


def fit(crit: lossdsl.Loss, model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int,
        gen: torch.Generator) -> list[float]:
    """``steps`` Adam steps on batches of 128 drawn from (x, y); the loss of every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for step in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=gen)
        loss = crit(model(x[idx]), y[idx], step=step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    return history


def train_bounded(steps: int, seed: int) -> tuple[list[float], dict]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the model's initial weights
    crit = lossdsl.from_config(CONFIG, key="bounded")
    x, y = bounded_data(2048, gen)
    test_x, _ = bounded_data(512, gen)
    test_y = torch.sigmoid(3 * torch.sin(1.5 * test_x))
    model = nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    history = fit(crit, model, x, y, steps, gen)
    with torch.no_grad():
        out = model(test_x)
    report = {
        "outside [0, 1]": ((out < 0) | (out > 1)).float().mean().item(),
        "test mse": torch.mean((out - test_y) ** 2).item(),
        "terms": crit.monitor.summary(),
    }
    return history, report


def train_sequence(steps: int, seed: int) -> tuple[list[float], dict]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    crit = lossdsl.from_config(CONFIG, key="sequence")
    x, y = sequence_data(4096, gen)
    test_x, test_y = sequence_data(1024, gen)
    model = Tagger()
    history = fit(crit, model, x, y, steps, gen)
    with torch.no_grad():
        correct = (model(test_x).argmax(-1) == test_y).float().mean(0)  # per step
    report = {
        "accuracy of step 0": correct[0].item(),
        "accuracy of steps 1..": correct[1:].mean().item(),
        "terms": crit.monitor.summary(),
    }
    return history, report


def main(steps: int = 300, seed: int = 0, quiet: bool = False) -> dict[str, list[float]]:
    """Train both models for ``steps`` steps; returns the loss of every step of each."""
    histories = {}
    for name, train in (("bounded", train_bounded), ("sequence", train_sequence)):
        history, report = train(steps, seed)
        histories[name] = history
        if not quiet:
            print(f"== {name}: loss {history[0]:.4f} -> {history[-1]:.4f}")
            for key, value in report.items():
                print(value if key == "terms" else f"{key}: {value:.3f}")
    return histories


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.steps, args.seed)
