"""Forecasting sensor sequences with a loss from a YAML config: config -> compile -> train -> inspect.

The loss lives in ``configs/forecast.yaml``; the data (coupled oscillations with sudden
spikes) and the LSTM come from ``lossdsl.tools.demo``. Run ``python examples/forecast.py --steps 200``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import lossdsl
from lossdsl.tools.demo import Forecaster, make_sensor_data, windows

CONFIG = Path(__file__).with_name("configs") / "forecast.yaml"


def main(steps: int = 200, seed: int = 0, log_dir: str = "runs/forecast") -> list[float]:
    """Train for ``steps`` steps; returns the loss of every step.

    The per-term log goes to ``<log_dir>/terms.jsonl`` (the config's own sink is the demo's);
    a log that an earlier run of this example left there is replaced, and it says so.
    """
    torch.manual_seed(seed)
    config = lossdsl.config.load_config(CONFIG)
    log = Path(log_dir) / "terms.jsonl"
    if log.exists():  # a JsonlWriter never replaces a log by itself
        print(f"replacing the log of an earlier run: {log}")
        log.unlink()
    monitor = config.monitor.model_copy(update={"sink": str(log)})
    crit = config.model_copy(update={"monitor": monitor}).compile()  # as lossdsl.from_config(CONFIG), sink aside

    series = make_sensor_data(32, 300, seed=seed)
    x, y = windows(series, 2048, seed=seed + 1)
    model = Forecaster()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for step in range(steps):
        idx = torch.randint(0, len(x), (64,))
        loss = crit(model(x[idx]), y[idx], step=step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())

    print(crit.monitor.summary())  # raw, weight, weighted and share of every term
    print("suggested:", crit.monitor.suggest_weights().source.strip())
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--log-dir", default="runs/forecast")
    args = parser.parse_args()
    losses = main(args.steps, log_dir=args.log_dir)
    print(f"loss: first {losses[0]:.4f}, last {losses[-1]:.4f}")
