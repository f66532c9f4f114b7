"""``lossdsl demo``: train a small LSTM forecaster with a loss read from a config file.

The data are synthetic multivariate sensor sequences (a few coupled oscillations with drift,
noise and sudden spikes), generated from a seed, so the demo needs no download. The loss comes
from ``examples/configs/forecast.yaml`` when that file is there (a source checkout) and from
the same text embedded here otherwise (an installed package), so ``lossdsl demo`` works
anywhere. It writes ``<out>/terms.jsonl`` (per-term statistics) and ``<out>/terms.png``, and
prints the per-term table every few steps and suggested weights at the end.

>>> history = run_demo(steps=4, out_dir=None, progress=False, quiet=True)
>>> len(history)
4
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["DEFAULT_CONFIG", "find_config", "make_sensor_data", "Forecaster", "run_demo"]

CONFIG_NAME = "examples/configs/forecast.yaml"

# The same text as examples/configs/forecast.yaml (a test keeps the two equal).
DEFAULT_CONFIG = """\
# The loss of `lossdsl demo`: a robust fit (huber ignores most of the spikes' pull), a penalty
# on step-to-step changes that differ from the target's, and mse only watched (logged, weight 0).
expr: |
  0.7*huber(delta=1) + 0.3*temporal_diff + watch(mse)
monitor:
  probe_every: 10          # gradient norm of each weighted term w.r.t. pred, every 10 steps
  log_every: 10            # one line of per-term statistics every 10 steps
  sink: runs/demo/terms.jsonl
"""

CONTEXT, HORIZON, CHANNELS = 48, 12, 3


def find_config(path: str | Path | None = None) -> Path | None:
    """The demo's config file: ``path`` if given, else ``examples/configs/forecast.yaml`` in
    the working directory or the source checkout; ``None`` means the embedded copy."""
    if path is not None:
        return Path(path)
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        candidate = base / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


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


def run_demo(
    steps: int | None = None,
    out_dir: str | Path | None = "runs/demo",
    *,
    config: str | Path | None = None,
    seed: int = 0,
    batch: int = 64,
    print_every: int | None = None,
    progress: bool = True,
    quiet: bool = False,
) -> list[float]:
    """Train the forecaster; returns the training loss of every step.

    ``out_dir=None`` writes no files (no log, no plot); otherwise the config's sink is
    replaced by ``<out_dir>/terms.jsonl`` and the plot goes to ``<out_dir>/terms.png``.
    """
    steps = 300 if steps is None else int(steps)
    threads = torch.get_num_threads()
    # A model this small runs fastest on one thread; more threads only add waiting, a lot of
    # it on a busy machine. The caller's setting is restored at the end.
    torch.set_num_threads(1)
    try:
        return _train(steps, out_dir, config, seed, batch, print_every, progress, quiet)
    finally:
        torch.set_num_threads(threads)


def _train(steps, out_dir, config, seed, batch, print_every, progress, quiet) -> list[float]:
    import yaml

    from .config import LossConfig, load_config

    say = (lambda text: None) if quiet else (lambda text: print(text, flush=True))
    torch.manual_seed(seed)
    path = find_config(config)
    cfg: LossConfig = load_config(yaml.safe_load(DEFAULT_CONFIG) if path is None else path)
    where = "the built-in copy of " + CONFIG_NAME if path is None else _shown(path)
    log_path = png_path = None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        log_path, png_path = Path(out_dir) / "terms.jsonl", Path(out_dir) / "terms.png"
        log_path.unlink(missing_ok=True)  # a fresh log per run
        monitor = cfg.monitor.model_copy(update={"sink": str(log_path)})
    else:
        monitor = cfg.monitor.model_copy(update={"sink": None})
    cfg = cfg.model_copy(update={"monitor": monitor})
    crit = cfg.compile()
    say(f"loss from {where}:\n  {crit.canonical}")

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

    val_after = _validation_mae(model, val_x, val_y)
    naive = float((val_x[:, -1:, :] - val_y).abs().mean())
    say(f"trained {steps} steps in {elapsed:.1f} s; validation MAE {val_before:.3f} -> {val_after:.3f} "
        f"(repeating the last value: {naive:.3f})")
    if log_path is not None:
        say(f"per-term log: {log_path}")
        try:
            from .plot import plot_log

            plot_log(log_path, png_path)
            say(f"plot: {png_path}")
        except ImportError as err:  # matplotlib is an optional dependency; the error names the extra
            say(f"no plot: {err}")
    suggestion = crit.monitor.suggest_weights()
    say("suggested weights (equal share of the gradient norm): " + ", ".join(
        f"{name} {weight:.3g}" for name, weight in suggestion.weights.items()))
    say("suggested program:\n  " + suggestion.source.strip().replace("\n", "\n  "))
    return history


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@torch.no_grad()
def _validation_mae(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((model(x) - y).abs().mean())


if __name__ == "__main__":
    run_demo(int(sys.argv[1]) if len(sys.argv) > 1 else None)
