"""``lossdsl demo``: train the small LSTM forecaster of :mod:`lossdsl.tools.demo` with a loss
read from a config file.

The loss comes from ``examples/configs/forecast.yaml`` when that file is there (a source
checkout) and from the same text embedded here otherwise (an installed package), so
``lossdsl demo`` works anywhere. It writes ``<out>/terms.jsonl`` (per-term statistics) and
``<out>/terms.png``, and prints the per-term table every few steps and suggested weights at
the end. The config is read here, on top of both the configs and the tools, which never
import each other.

>>> history = run_demo(steps=4, out_dir=None, progress=False, quiet=True)
>>> len(history)
4
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..config import LossConfig, load_config
from ..tools.demo import train

__all__ = ["DEFAULT_CONFIG", "CONFIG_NAME", "find_config", "run_demo"]

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


def find_config(path: str | Path | None = None) -> Path | None:
    """The demo's config file: ``path`` if given, else ``examples/configs/forecast.yaml`` in
    the working directory or the source checkout; ``None`` means the embedded copy.

    >>> find_config("my/loss.yaml").name
    'loss.yaml'
    """
    if path is not None:
        return Path(path)
    # this file is lossdsl/cli/demo.py: the checkout's root is three folders up
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


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
    """Train the forecaster with the demo's loss config; returns the training loss of every step.

    ``out_dir=None`` writes no files (no log, no plot); otherwise the config's sink is
    replaced by ``<out_dir>/terms.jsonl`` and the plot goes to ``<out_dir>/terms.png``. The
    log of an earlier run there is replaced, and the demo says so, unless the config says
    ``monitor.append: true``.
    """
    path = find_config(config)
    cfg: LossConfig = load_config(yaml.safe_load(DEFAULT_CONFIG) if path is None else path)
    where = "the built-in copy of " + CONFIG_NAME if path is None else _shown(path)
    say = (lambda text: None) if quiet else (lambda text: print(text, flush=True))
    log_path = png_path = None
    if out_dir is not None and not cfg.monitor.enabled:
        say("monitoring is off in the config (monitor.enabled: false): no log, plot or suggestion")
    elif out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        log_path, png_path = Path(out_dir) / "terms.jsonl", Path(out_dir) / "terms.png"
        if log_path.exists() and not cfg.monitor.append:  # a fresh log per run, and said so
            log_path.unlink()
            say(f"replacing the log of an earlier run: {log_path} (monitor.append: true keeps it)")
    monitor = cfg.monitor.model_copy(update={"sink": None if log_path is None else str(log_path)})
    crit = cfg.model_copy(update={"monitor": monitor}).compile()
    say(f"loss from {where}:\n  {crit.canonical}")
    return train(
        crit,
        300 if steps is None else int(steps),
        seed=seed,
        batch=batch,
        print_every=print_every,
        progress=progress,
        quiet=quiet,
        log_path=log_path,
        png_path=png_path,
    )


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
