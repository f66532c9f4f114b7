"""Two tasks on one trunk, balanced by their gradients, under ``lightning.Trainer``.

One network regresses a value (``mse``) and classifies (``cross_entropy``) from a shared
trunk. The tasks' gradients on the trunk pull in different directions; two ways to settle
that, written in the loss text:

- ``method="upgrad"`` aggregates the Jacobian of the terms on the trunk (TorchJD's UPGrad):
  the update is not the gradient of a weighted sum, so the loss is back-propagated with
  ``crit.backward(shared=...)`` under manual optimisation;
- ``method="lra"`` (learning-rate annealing) rescales the regression term from the terms'
  gradient statistics every few steps: an ordinary loss that Lightning back-propagates
  under automatic optimisation.

Each run logs ``crit.monitor.as_dict()``, which holds the gradient norms on the trunk
(``loss/<term>/shared_grad_norm``) and their cosine (``loss/depth~classes/cos``).
Run ``python examples/multitask_gradients.py --steps 200`` (needs ``pip install 'lossdsl[mtl]' lightning``).
"""

from __future__ import annotations

import argparse
import tempfile

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lossdsl

TERMS = "depth = mse(pred=depth_pred, target=depth)\nclasses = cross_entropy(pred=logits, target=label)\n"
PROGRAMS = {
    "upgrad": TERMS + 'balance(depth, classes, method="upgrad")',
    "lra": TERMS + 'balance(classes, depth, method="lra", every=5)',  # the first term is the reference
}


class TwoTasks(L.LightningModule):
    def __init__(self, source: str, manual: bool, log_every: int = 10) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
        self.depth_head = nn.Linear(32, 1)
        self.class_head = nn.Linear(32, 3)
        self.crit = lossdsl.compile(source)
        self.automatic_optimization = not manual
        self.log_every = log_every
        self.history: list[float] = []

    def training_step(self, batch, batch_idx):
        x, depth, label = batch
        h = self.trunk(x)
        loss = self.crit(
            depth_pred=self.depth_head(h), depth=depth, logits=self.class_head(h), label=label, shared=self.trunk
        )
        self.history.append(loss.item())
        if (self.global_step + 1) % self.log_every == 0:
            self.log_dict(self.crit.monitor.as_dict(prefix="loss/"), on_step=True, on_epoch=False)
        if self.automatic_optimization:
            return loss  # lra: weights from the gradients, then an ordinary backward by Lightning
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.crit.backward()  # upgrad: the aggregated Jacobian on the trunk (shared= from the call)
        optimizer.step()
        return None

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def make_loader(n: int = 1024, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    depth = 5.0 * torch.sin(x[:, :1] + x[:, 1:2]) + 0.1 * torch.randn(n, 1, generator=g)  # a large-scale target
    label = (x[:, 2:5] + 0.3 * x[:, :3]).argmax(1)
    return DataLoader(TensorDataset(x, depth, label), batch_size=64, shuffle=True, generator=g)


def fit(method: str, steps: int, seed: int = 0, root_dir: str | None = None) -> TwoTasks:
    L.seed_everything(seed, verbose=False)
    model = TwoTasks(PROGRAMS[method], manual=method == "upgrad")
    logger = L.pytorch.loggers.CSVLogger(root_dir, name=method) if root_dir else False
    with tempfile.TemporaryDirectory() as scratch:
        trainer = L.Trainer(
            max_steps=steps, accelerator="cpu", devices=1, logger=logger,
            default_root_dir=root_dir or scratch, log_every_n_steps=model.log_every,
            enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        )
        trainer.fit(model, make_loader(seed=seed))
    return model


def main(steps: int = 200, root_dir: str | None = None, seed: int = 0) -> dict[str, list[float]]:
    """Fit the two-task model with each balancer for ``steps`` steps; the loss of every
    step, by method."""
    return {method: fit(method, steps, seed, root_dir).history for method in PROGRAMS}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    for method, losses in main(args.steps).items():
        print(f"{method:>6}: loss first {losses[0]:.4f}, last {losses[-1]:.4f}")
