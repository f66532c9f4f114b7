"""A PyTorch Lightning module whose loss is a lossdsl program, logging every term.

The compiled loss is a submodule (``self.crit``), so it follows the module to its device and
its state is in the checkpoint. ``training_step`` logs ``crit.monitor.as_dict(prefix="loss/")``
(``loss/total``, ``loss/<term>``, ``loss/<term>/weight``, ``.../weighted``, ``.../share``) with
``self.log_dict``, so any Lightning logger records the per-term magnitudes.
Run ``python examples/lightning_module.py --steps 100`` (needs ``pip install lightning``).
"""

from __future__ import annotations

import argparse
import tempfile

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lossdsl

LOSS = "0.7*huber(delta=1) + 0.3*mae + watch(mse)"


class Regressor(L.LightningModule):
    def __init__(self, source: str = LOSS, log_every: int = 5) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))
        self.crit = lossdsl.compile(source)
        self.log_every = log_every
        self.history: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.crit(self.net(x), y, step=self.global_step)
        self.history.append(loss.item())
        if (self.global_step + 1) % self.log_every == 0:
            # as_dict() reads the device once and gives the means since its last call: here
            # the last `log_every` steps, on the steps where Lightning writes its logs
            self.log_dict(self.crit.monitor.as_dict(prefix="loss/"), on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.net.parameters(), lr=1e-2)


def make_loader(n: int = 2048, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, :1] * x[:, 1:2] + torch.sin(2 * x[:, 2:3]) - 0.5 * x[:, 3:]) + 0.1 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=g)


def main(steps: int = 100, root_dir: str | None = None, seed: int = 0) -> list[float]:
    """Fit for ``steps`` steps; returns the loss of every step.

    With ``root_dir`` the metrics go to ``<root_dir>/lightning_logs/.../metrics.csv``;
    without, nothing is written anywhere.
    """
    L.seed_everything(seed, verbose=False)
    model = Regressor()
    logger = L.pytorch.loggers.CSVLogger(root_dir) if root_dir else False
    with tempfile.TemporaryDirectory() as scratch:
        trainer = L.Trainer(
            max_steps=steps, accelerator="cpu", devices=1, logger=logger,
            default_root_dir=root_dir or scratch, log_every_n_steps=model.log_every,
            enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        )
        trainer.fit(model, make_loader(seed=seed))
    return model.history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=100)
    losses = main(parser.parse_args().steps)
    print(f"loss: first {losses[0]:.4f}, last {losses[-1]:.4f}")
