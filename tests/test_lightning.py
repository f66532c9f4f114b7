"""The Lightning example: a real ``lightning.Trainer`` run that logs the per-term values."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import pytest

pytest.importorskip("lightning")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "lightning_module.py"


def test_lightning_module_trains_and_logs_every_term(tmp_path):
    spec = importlib.util.spec_from_file_location("lossdsl_example_lightning", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    history = module.main(steps=30, root_dir=str(tmp_path))

    assert len(history) == 30 and all(math.isfinite(v) for v in history)
    assert sum(history[-5:]) / 5 < sum(history[:5]) / 5
    [metrics] = list(tmp_path.glob("lightning_logs/*/metrics.csv"))
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("loss/total")]
    assert len(rows) == 6  # as_dict() logged on every 5th of 30 steps
    for row in rows:
        value = {k: float(v) for k, v in row.items() if v}
        # the program: 0.7*huber(delta=1) + 0.3*mae + watch(mse)
        assert value["loss/huber/weight"] == pytest.approx(0.7)
        assert value["loss/mae/weight"] == pytest.approx(0.3)
        assert value["loss/mse/weight"] == 0.0
        assert value["loss/total"] == pytest.approx(0.7 * value["loss/huber"] + 0.3 * value["loss/mae"], rel=1e-5)
        # a squared error is at least the square of the mean absolute error (Jensen)
        assert value["loss/mse"] >= value["loss/mae"] ** 2 * (1 - 1e-6)
    # each row is the mean over its own 5 steps of the history (the total's raw values)
    for row, end in zip(rows, range(5, 31, 5)):
        assert int(row["step"]) == end - 1
        assert float(row["loss/total"]) == pytest.approx(sum(history[end - 5:end]) / 5, rel=1e-5)
