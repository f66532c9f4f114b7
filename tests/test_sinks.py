"""Sinks and plots (DESIGN.md §7): what a JSONL log and TensorBoard read back, against window
means computed by hand from the term values; the PNG a log draws."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.plot import plot_log

SOURCE = "0.7*mse + 0.3*mae"
SUFFIXES = ("", "/weight", "/weighted", "/share")
KEYS = {"loss/total"} | {f"loss/{n}{s}" for n in ("mse", "mae") for s in SUFFIXES}


def run(crit, calls, seed=0, nan_at=()):
    """Calls the loss; returns the hand-computed (mse, mae) of each call."""
    gen = torch.Generator().manual_seed(seed)
    values = []
    for i in range(calls):
        pred, target = torch.randn(6, generator=gen), torch.randn(6, generator=gen)
        if i in nan_at:
            pred[0] = math.nan
        crit(pred, target, step=i + 1)
        values.append((F.mse_loss(pred, target).item(), F.l1_loss(pred, target).item()))
    return values


def window_means(values):
    mse = [a for a, _ in values]
    mae = [b for _, b in values]
    n = len(values)
    return {"loss/mse": sum(mse) / n, "loss/mae": sum(mae) / n,
            "loss/total": sum(0.7 * a + 0.3 * b for a, b in values) / n,
            "loss/mse/weighted": 0.7 * sum(mse) / n,
            "loss/mse/share": sum(0.7 * a / (0.7 * a + 0.3 * b) for a, b in values) / n}


def test_jsonl_has_one_object_per_write_with_window_means(tmp_path):
    path = tmp_path / "logs" / "run.jsonl"
    crit = lossdsl.compile(SOURCE)
    crit.monitor.attach(lossdsl.JsonlWriter(path), every=3)
    values = run(crit, 9)
    crit.monitor.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6, 9]
    for k, record in enumerate(records):
        assert set(record) == KEYS | {"step"}
        expected = window_means(values[3 * k : 3 * k + 3])
        for key, value in expected.items():
            assert record[key] == pytest.approx(value, rel=1e-6), key
        assert record["loss/mae/weight"] == pytest.approx(0.3)


def test_jsonl_writes_null_for_a_window_without_finite_values(tmp_path):
    path = tmp_path / "run.jsonl"
    crit = lossdsl.compile(SOURCE, nonfinite="zero_term")
    crit.monitor.attach(str(path), every=1)  # a path: the default JSONL sink
    run(crit, 2, nan_at={1})
    crit.monitor.close()
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["loss/mse"] is not None
    assert second["loss/mse"] is None and second["loss/mae/share"] is None
    assert crit.monitor.stats()["mse"]["nonfinite"] == 1


def test_tensorboard_events_hold_every_scalar(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    crit = lossdsl.compile(SOURCE)
    crit.monitor.probe(every=1)
    writer = lossdsl.TensorBoardWriter(tmp_path / "tb")
    crit.monitor.attach(writer, every=2)
    gen = torch.Generator().manual_seed(1)
    values = []
    for step in range(1, 7):
        pred = torch.randn(6, generator=gen, requires_grad=True)
        target = torch.randn(6, generator=gen)
        crit(pred, target, step=step)
        values.append((F.mse_loss(pred, target).item(), F.l1_loss(pred, target).item()))
    crit.monitor.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert KEYS | {"loss/mse/grad_norm", "loss/mae/grad_norm"} <= tags
    steps = [e.step for e in events.Scalars("loss/mse")]
    assert steps == [2, 4, 6]
    for k, event in enumerate(events.Scalars("loss/mae")):
        expected = window_means(values[2 * k : 2 * k + 2])["loss/mae"]
        assert event.value == pytest.approx(expected, rel=1e-6)


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "run.jsonl"
    crit = lossdsl.compile("recon = mse + 0.1*mae\n0.5*recon + huber")
    crit.monitor.probe(every=2)
    crit.monitor.attach(lossdsl.JsonlWriter(path), every=2)
    gen = torch.Generator().manual_seed(2)
    for i in range(12):
        crit(torch.randn(8, generator=gen, requires_grad=True) * (1 + i), torch.zeros(8))
    crit.monitor.close()
    png = plot_log(path, tmp_path / "out" / "terms.png")
    data = open(png, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_of_an_empty_log_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(lossdsl.LossDSLError, match="nothing to plot"):
        plot_log(path, tmp_path / "x.png")


def test_callable_and_custom_sinks():
    crit = lossdsl.compile(SOURCE)
    got = []

    class Collect:
        def write(self, scalars, step):
            got.append((step, scalars["loss/mse"]))

    crit.monitor.attach(Collect(), every=2)
    crit.monitor.attach(lambda scalars, step: got.append((step, "fn")), every=4)
    values = run(crit, 4)
    assert got[0] == (2, pytest.approx((values[0][0] + values[1][0]) / 2))
    assert (4, "fn") in got
    with pytest.raises(lossdsl.LossDSLError, match="cannot write"):
        crit.monitor.attach(42)
