"""A term of your own: register a Python function with ``@lossdsl.term`` and use it by name.

``spectral`` compares the magnitude spectra of prediction and target along the time axis,
a common extra term when a model should keep the right frequencies (a denoiser that must not
smooth away oscillations). Positional parameters are tensor inputs; keyword-only parameters
are hyperparameters, checked by pydantic from their annotations when the program compiles
(``spectral(dim="time")`` is an error with a caret, before training starts).
Run ``python examples/custom_term.py --steps 300``.
"""

from __future__ import annotations

import argparse
import math
from typing import Annotated

import torch
from annotated_types import Gt
from torch import nn

import lossdsl


@lossdsl.term
def spectral(pred: torch.Tensor, target: torch.Tensor, *, dim: int = 1,
             eps: Annotated[float, Gt(0)] = 1e-8) -> torch.Tensor:
    """Spectral loss: mean abs difference of the rFFT magnitudes along ``dim``."""
    # the magnitude of a complex number has no gradient at 0: keep it away from there
    magnitude = lambda x: (torch.fft.rfft(x.float(), dim=dim).abs() ** 2 + eps).sqrt()  # noqa: E731
    return (magnitude(pred) - magnitude(target)).abs().mean().to(pred.dtype)


def make_signals(n: int, length: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(noisy, clean)`` sums of two sines, shape ``(n, length)``."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float32)
    freq = 1 + 6 * torch.rand(n, 2, 1, generator=g)
    phase = 2 * math.pi * torch.rand(n, 2, 1, generator=g)
    clean = torch.sin(2 * math.pi * freq * t / length + phase).sum(1)
    return clean + 0.5 * torch.randn(clean.shape, generator=g), clean


class Denoiser(nn.Module):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, hidden, 7, padding=3), nn.ReLU(),
            nn.Conv1d(hidden, hidden, 7, padding=3), nn.ReLU(),
            nn.Conv1d(hidden, 1, 7, padding=3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x[:, None])[:, 0]


def main(steps: int = 300, seed: int = 0) -> list[float]:
    """Train the denoiser with ``mse + 0.1*spectral``; returns the loss of every step."""
    torch.manual_seed(seed)
    crit = lossdsl.compile("mse + 0.1*spectral(dim=1)")
    noisy, clean = make_signals(2048, seed=seed)
    model = Denoiser()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(steps):
        idx = torch.randint(0, len(noisy), (64,))
        loss = crit(model(noisy[idx]), clean[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    terms = ", ".join(f"{name} {float(value):.4f}" for name, value in crit.terms.items())
    print(f"last step: loss {history[-1]:.4f} ({terms})")
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    main(parser.parse_args().steps)
