"""``import lossdsl`` (and the command line) without numpy: quiet, and everything works.

torch prints "Failed to initialize NumPy" when it is imported without numpy; lossdsl never
converts to numpy, so its users should not see that warning.
"""

from __future__ import annotations

import os
import subprocess
import sys

BLOCK_NUMPY = """
import sys

class _NoNumpy:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" or name.startswith("numpy."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoNumpy())
try:
    import numpy
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("numpy could still be imported")
"""

# lossdsl first: torch comes in through lossdsl.compile (``import lossdsl`` alone imports no
# torch). A script that imports torch itself before that gets torch's own warning from torch.
USE_LOSSDSL = """
import lossdsl

crit = lossdsl.compile("0.7*huber(delta=1) + 0.3*temporal_diff + watch(mse)")
import torch

pred = torch.randn(2, 5, 3, requires_grad=True)
target = torch.randn(2, 5, 3)
crit(pred, target).backward()
e = (pred - target).detach()
huber = torch.where(e.abs() <= 1, 0.5 * e**2, e.abs() - 0.5).mean()
smooth = (e[:, 1:] - e[:, :-1]).abs().mean()
assert torch.allclose(crit.terms["huber"], huber) and torch.allclose(crit.terms["temporal_diff"], smooth)
assert pred.grad is not None
crit.monitor.summary()
assert "numpy" not in sys.modules or sys.modules["numpy"] is None
"""

# the command line as the console script runs it: its first import brings in torch
USE_CLI = """
from lossdsl.cli import main

assert main(["check", "mse + mae"]) == 0
assert main(["explain", "0.7*huber + 0.3*mae"]) == 0
assert "numpy" not in sys.modules or sys.modules["numpy"] is None
"""


def run_without_numpy(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_NUMPY + script],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


def test_import_and_use_without_numpy_is_quiet():
    result = run_without_numpy(USE_LOSSDSL)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_the_command_line_without_numpy_is_quiet():
    result = run_without_numpy(USE_CLI)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("ok: mse + mae")
    assert "huber  (term huber) : loss" in result.stdout
