"""The demo's forecasting task: synthetic sensor data, an LSTM forecaster and its training loop.

The data are multivariate sensor sequences (a few coupled oscillations with drift, noise and
sudden spikes), generated from a seed, so the demo needs no download. :func:`train` trains the
forecaster with any compiled loss, printing the per-term table every few steps and suggested
weights at the end; ``lossdsl demo`` (:mod:`lossdsl.cli.demo`) gives it the loss of a config.

>>> import lossdsl
>>> history = train(lossdsl.compile("huber + 0.1*temporal_diff"), steps=3, quiet=True)
>>> len(history)
3
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from .plot import plot_log

__all__ = ["make_sensor_data", "windows", "Forecaster", "train"]

CONTEXT, HORIZON, CHANNELS = 48, 12, 3


def make_sensor_data(n_series: int, length: int, *, seed: int = 0, spike_rate: float = 0.01) -> Tensor:
    """``(n_series, length, 3)`` float32 sensor readings: coupled oscillations, drift, spikes.

    >>> x = make_sensor_data(2, 100, seed=1)
    >>> tuple(x.shape), bool(torch.isfinite(x).all())
    ((2, 100, 3), True)
    """
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float32)[None, :, None]
    period = 16 + 24 * torch.rand(n_series, 1, CHANNELS, generator=g)
    phase = 2 * math.pi * torch.rand(n_series, 1, CHANNELS, generator=g)
    amplitude = 0.5 + torch.rand(n_series, 1, CHANNELS, generator=g)
    base = amplitude * torch.sin(2 * math.pi * t / period + phase)
    # The channels share a slow drift and the second follows the first with a lag, so
    # forecasting one channel helps to read the others.
    drift = 0.3 * torch.sin(2 * math.pi * t / (150 + 100 * torch.rand(n_series, 1, 1, generator=g)))
    lagged = torch.roll(base[..., :1], shifts=3, dims=1)
    signal = base + drift + torch.cat([torch.zeros_like(lagged), 0.5 * lagged, torch.zeros_like(lagged)], -1)
    noise = 0.05 * torch.randn(signal.shape, generator=g)
    hits = torch.rand(signal.shape, generator=g) < spike_rate
    spikes = hits * torch.sign(torch.randn(signal.shape, generator=g)) * (3 + 3 * torch.rand(signal.shape, generator=g))
    return signal + noise + spikes


def windows(series: Tensor, count: int, *, seed: int) -> tuple[Tensor, Tensor]:
    """``count`` random (context, horizon) windows cut from ``series``."""
    g = torch.Generator().manual_seed(seed)
    n, length, _ = series.shape
    rows = torch.randint(0, n, (count,), generator=g)
    starts = torch.randint(0, length - CONTEXT - HORIZON + 1, (count,), generator=g)
    idx = starts[:, None] + torch.arange(CONTEXT + HORIZON)[None, :]
    cut = series[rows[:, None], idx]
    return cut[:, :CONTEXT], cut[:, CONTEXT:]


class Forecaster(nn.Module):
    """An LSTM over the context and a linear head for the whole horizon.

    The head predicts changes from the last observed value, which trains much faster than
    predicting levels from scratch.
    """

    def __init__(self, channels: int = CHANNELS, hidden: int = 32, horizon: int = HORIZON) -> None:
        super().__init__()
        self.horizon, self.channels = horizon, channels
        self.lstm = nn.LSTM(channels, hidden, batch_first=True)
        self.head = nn.Linear(hidden, horizon * channels)

    def forward(self, context: Tensor) -> Tensor:
        out, _ = self.lstm(context)
        delta = self.head(out[:, -1]).view(-1, self.horizon, self.channels)
        return context[:, -1:, :] + delta


class _Progress:
    """tqdm when it is installed, else a line of text every few steps."""

    def __init__(self, total: int, enabled: bool, write: Callable[[str], None]) -> None:
        self.total, self.enabled, self._write = total, enabled, write
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc="training", unit="step", leave=True)
            except ImportError:
                self.bar = None
        self.every = max(1, total // 10)

    def update(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elif self.enabled and (step % self.every == 0 or step == self.total):
            self._write(f"step {step}/{self.total}  loss {loss:.4f}")

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            self._write(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()




def train(
    crit: nn.Module,
    steps: int = 300,
    *,
    seed: int = 0,
    batch: int = 64,
    print_every: int | None = None,
    progress: bool = True,
    quiet: bool = False,
    log_path: str | Path | None = None,
    png_path: str | Path | None = None,
) -> list[float]:
    """Train the forecaster with the loss ``crit``; returns the training loss of every step.

    ``log_path``: the JSONL log that ``crit``'s monitor writes, drawn to ``png_path`` at the
    end (when matplotlib is installed). At the end every attached sink gets a last row for
    the steps after its previous one.
    """
    threads = torch.get_num_threads()
    # A model this small runs fastest on one thread; more threads only add waiting, a lot of
    # it on a busy machine. The caller's setting is restored at the end.
    torch.set_num_threads(1)
    try:
        return _train(crit, int(steps), seed, batch, print_every, progress, quiet, log_path, png_path)
    finally:
        torch.set_num_threads(threads)


def _train(crit, steps, seed, batch, print_every, progress, quiet, log_path, png_path) -> list[float]:
    say = (lambda text: None) if quiet else (lambda text: print(text, flush=True))
    torch.manual_seed(seed)
    series = make_sensor_data(48, 400, seed=seed)
    train_x, train_y = windows(series[:40], 4096, seed=seed + 1)
    val_x, val_y = windows(series[40:], 512, seed=seed + 2)
    model = Forecaster()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1), eta_min=1e-3)
    print_every = print_every or max(1, steps // 3)
    val_before = _validation_mae(model, val_x, val_y)

    bar = _Progress(steps, progress and not quiet, say)
    g = torch.Generator().manual_seed(seed + 3)
    history: list[float] = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, train_x.shape[0], (batch,), generator=g)
        pred = model(train_x[idx])
        loss = crit(pred, train_y[idx], step=step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        history.append(float(loss.detach()))
        bar.update(step, history[-1])
        if step % print_every == 0 and not quiet:
            bar.write(f"\nper-term statistics at step {step}:\n{crit.monitor.summary()}\n")
    bar.close()
    elapsed = time.perf_counter() - start
    # a last row for the calls after the last logged one (all of them when the run is shorter
    # than the log's cadence), so the log and its plot cover the whole run
    crit.monitor.write()

    val_after = _validation_mae(model, val_x, val_y)
    naive = float((val_x[:, -1:, :] - val_y).abs().mean())
    say(f"trained {steps} steps in {elapsed:.1f} s; validation MAE {val_before:.3f} -> {val_after:.3f} "
        f"(repeating the last value: {naive:.3f})")
    if log_path is not None:
        say(f"per-term log: {log_path}")
        if png_path is not None:
            try:
                plot_log(log_path, png_path)
                say(f"plot: {png_path}")
            except ImportError as err:  # matplotlib is an optional dependency; the error names the extra
                say(f"no plot: {err}")
    if not crit.monitor.enabled:
        return history
    suggestion = crit.monitor.suggest_weights()
    say("suggested weights (equal share of the gradient norm): " + ", ".join(
        f"{name} {weight:.3g}" for name, weight in suggestion.weights.items()))
    say("suggested program:\n  " + suggestion.source.strip().replace("\n", "\n  "))
    return history


@torch.no_grad()
def _validation_mae(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((model(x) - y).abs().mean())
