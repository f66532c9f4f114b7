"""Self-supervised embeddings with ``nt_xent`` (SimCLR), watching ``info_nce`` alongside.

Points come from 8 hidden classes: 16 features of content (a class centre plus noise) and 16
of loud "style" that says nothing about the class. Each training step makes two views of a
batch of points (the style drawn afresh, a little noise on the content); an encoder maps
both to 16-dimensional embeddings and the loss pulls the two views of a point together and
pushes the other points of the batch away, so the encoder learns to ignore the style. No
class label is used in training; the example prints how often a held-out point's nearest
neighbour (by cosine) shares its class, before and after.
``watch(info_nce(...))`` logs the one-directional InfoNCE of the same views without
training on it. Run ``python examples/contrastive_pairs.py --steps 300``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import lossdsl

CLASSES, CONTENT, STYLE = 8, 16, 16
DIM = CONTENT + STYLE
LOSS = "nt_xent(temperature=0.2) + watch(info_nce(temperature=0.2))"


def make_points(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(points (n, 32), classes (n,))``: content first, then style."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, CONTENT, generator=torch.Generator().manual_seed(1234))
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    content = centres[labels] + 0.6 * torch.randn(n, CONTENT, generator=g)
    return torch.cat([content, 4 * torch.randn(n, STYLE, generator=g)], 1), labels


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A view of the same points: new style, a little noise on the content."""
    content = x[:, :CONTENT] + 0.2 * torch.randn(len(x), CONTENT, generator=g)
    return torch.cat([content, 4 * torch.randn(len(x), STYLE, generator=g)], 1)


@torch.no_grad()
def neighbour_accuracy(encoder: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    z = F.normalize(encoder(x), dim=1)
    similarity = z @ z.T
    similarity.fill_diagonal_(-2.0)  # a point is not its own neighbour
    return float((labels[similarity.argmax(1)] == labels).float().mean())


def main(steps: int = 300, seed: int = 0) -> list[float]:
    """Train the encoder; returns the loss of every step."""
    torch.manual_seed(seed)
    crit = lossdsl.compile(LOSS)
    x, _ = make_points(8192, seed)
    x_test, labels_test = make_points(1024, seed + 1)
    encoder = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, 16))
    optimizer = torch.optim.Adam(encoder.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    before = neighbour_accuracy(encoder, x_test, labels_test)
    history = []
    for _ in range(steps):
        batch = x[torch.randint(0, len(x), (128,), generator=g)]
        loss = crit(anchor=encoder(augment(batch, g)), positive=encoder(augment(batch, g)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    after = neighbour_accuracy(encoder, x_test, labels_test)
    print(f"nearest neighbour of the same class: {before:.2f} -> {after:.2f} (chance {1 / CLASSES:.2f})")
    print(crit.monitor.summary())
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    main(parser.parse_args().steps)
