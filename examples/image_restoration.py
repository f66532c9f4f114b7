"""Image denoising with ``ssim``, ``l1`` and a perceptual ``feature_distance``, balanced in text.

Clean 24 x 24 images are smooth blobs and stripes; the input adds gaussian noise. A small
residual network predicts the noise. The loss mixes 1 - SSIM and L1 as Zhao et al. (2017)
recommend, plus a feature distance through a frozen network passed in with the call
(``net=...``). Here that network is a fixed random convolution stack, so the example needs no
download; with pretrained weights it would be VGG (see the README). The example prints the
PSNR of held-out images before and after training, and each term's share of the loss.
Run ``python examples/image_restoration.py --steps 300``.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import lossdsl

SIZE = 24
LOSS = "0.8*ssim(window=7) + 0.2*l1 + feature_distance(p=1)"


def make_images(n: int, seed: int = 0) -> torch.Tensor:
    """``(n, 1, 24, 24)`` clean images in [0, 1]: three gaussian blobs and a stripe pattern."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.linspace(0, 1, SIZE)
    y, x = axis[:, None], axis[None, :]
    centres = torch.rand(n, 3, 2, generator=g)
    widths = torch.rand(n, 3, generator=g) * 0.15 + 0.05
    blobs = torch.exp(
        -((x - centres[..., 0, None, None]) ** 2 + (y - centres[..., 1, None, None]) ** 2)
        / (2 * widths[..., None, None] ** 2)
    ).sum(1)
    angle = torch.rand(n, 1, 1, generator=g) * math.pi
    stripes = 0.5 + 0.5 * torch.sin(12 * (x * torch.cos(angle) + y * torch.sin(angle)))
    return (0.7 * blobs.clamp(max=1) + 0.3 * stripes)[:, None]


def feature_network(seed: int = 0) -> nn.Module:
    """A frozen random convolution stack returning two layers' features."""

    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(seed)
            self.first = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU())
            self.second = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2), nn.ReLU())

        def forward(self, x):
            a = self.first(x)
            return [a, self.second(a)]

    return Features().eval().requires_grad_(False)


def psnr(pred: torch.Tensor, clean: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((pred - clean) ** 2).mean()))


def main(steps: int = 300, seed: int = 0, noise: float = 0.15) -> list[float]:
    """Train the denoiser; returns the loss of every step."""
    torch.manual_seed(seed)
    crit = lossdsl.compile(LOSS)
    net = feature_network(seed)
    clean = make_images(2048, seed)
    test_clean = make_images(256, seed + 1)
    g = torch.Generator().manual_seed(seed)
    test_noisy = test_clean + noise * torch.randn(test_clean.shape, generator=g)
    denoiser = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 1, 3, padding=1),
    )
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=2e-3)
    history = []
    for _ in range(steps):
        target = clean[torch.randint(0, len(clean), (32,), generator=g)]
        noisy = target + noise * torch.randn(target.shape, generator=g)
        loss = crit(noisy - denoiser(noisy), target, net=net)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    with torch.no_grad():
        restored = test_noisy - denoiser(test_noisy)
    print(f"PSNR on held-out images: noisy {psnr(test_noisy, test_clean):.1f} dB -> "
          f"restored {psnr(restored, test_clean):.1f} dB")
    print(crit.monitor.summary())
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    main(parser.parse_args().steps)
