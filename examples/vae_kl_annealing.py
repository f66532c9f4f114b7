"""A variational autoencoder with KL annealing, its loss in a TOML config.

The data are points on a curved 2-D sheet in 8 dimensions (plus a little noise), so a 2-D
latent code describes them. The loss (``configs/vae.toml``) is
``8*recon + linear(0, 1, steps=150)*vae_kl``: ``vae_kl`` reads the encoder's ``mu`` and
``logvar`` inputs, and its weight follows the step that ``crit(..., step=step)`` passes in.
Run ``python examples/vae_kl_annealing.py --steps 400``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import nn

import lossdsl

CONFIG = Path(__file__).with_name("configs") / "vae.toml"
FEATURES, LATENT = 8, 2


def make_data(n: int, seed: int = 0) -> torch.Tensor:
    """Points ``tanh(A z) + 0.3 sin(B z)`` of a 2-D latent ``z``, in 8 dimensions."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, LATENT, generator=g)
    a = torch.randn(LATENT, FEATURES, generator=g)
    b = torch.randn(LATENT, FEATURES, generator=g)
    x = torch.tanh(z @ a) + 0.3 * torch.sin(math.pi * z @ b)
    return x + 0.05 * torch.randn(x.shape, generator=g)


class VAE(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(FEATURES, hidden), nn.SiLU(), nn.Linear(hidden, 2 * LATENT))
        self.decoder = nn.Sequential(nn.Linear(LATENT, hidden), nn.SiLU(), nn.Linear(hidden, FEATURES))

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # the reparameterisation trick
        return self.decoder(z), mu, logvar


def main(steps: int = 400, seed: int = 0) -> list[float]:
    """Train for ``steps`` steps; returns the loss of every step."""
    torch.manual_seed(seed)
    crit = lossdsl.from_config(CONFIG)
    data = make_data(4096, seed)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for step in range(steps):
        x = data[torch.randint(0, len(data), (128,))]
        recon, mu, logvar = model(x)
        loss = crit(recon, x, mu=mu, logvar=logvar, step=step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            terms = {name: round(float(v), 4) for name, v in crit.terms.items()}
            weights = {name: round(float(v), 3) for name, v in crit.weights.items()}
            print(f"step {step}: loss {loss.item():.4f}  terms {terms}  weights {weights}")
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=400)
    losses = main(parser.parse_args().steps)
    print(f"loss: first {losses[0]:.4f}, last {losses[-1]:.4f}")
