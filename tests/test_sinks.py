"""Sinks and plots (DESIGN.md §7): what a JSONL log and TensorBoard read back, against window
means computed by hand from the term values; the PNG a log draws."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.tools.plot import plot_log

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


# --- a log is never replaced silently -------------------------------------------------------

OLD = '{"step": 1, "loss/total": 1.0}\n'


def test_an_existing_log_is_refused_before_training(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text(OLD)
    crit = lossdsl.compile(SOURCE)
    crit.monitor.attach(lossdsl.JsonlWriter(path), every=5)
    with pytest.raises(lossdsl.LossDSLError, match="already holds") as info:
        crit(torch.zeros(3), torch.ones(3), step=1)  # the first training call, not the first row
    assert "append=True" in info.value.hint and "new path" in info.value.hint
    assert path.read_text() == OLD
    with pytest.raises(lossdsl.LossDSLError, match="already holds"):
        lossdsl.JsonlWriter(path).write({"loss/total": 2.0}, step=3)  # a writer on its own too
    assert path.read_text() == OLD


def test_append_true_and_an_empty_file_are_written(tmp_path):
    kept, empty = tmp_path / "kept.jsonl", tmp_path / "empty.jsonl"
    kept.write_text(OLD)
    empty.write_text("")
    crit = lossdsl.compile(SOURCE)
    crit.monitor.attach(lossdsl.JsonlWriter(kept, append=True), every=2)
    crit.monitor.attach(lossdsl.JsonlWriter(empty), every=2)
    values = run(crit, 2)
    crit.monitor.close()
    lines = kept.read_text().splitlines()
    assert lines[0] == OLD.strip() and len(lines) == 2
    for record in (json.loads(lines[1]), json.loads(empty.read_text())):
        assert record["step"] == 2
        assert record["loss/mse"] == pytest.approx(window_means(values)["loss/mse"], rel=1e-6)


def test_a_resumed_loss_appends_to_its_log(tmp_path):
    path = tmp_path / "run.jsonl"
    crit = lossdsl.compile(SOURCE)
    crit.monitor.attach(lossdsl.JsonlWriter(path), every=2)
    first = run(crit, 2)
    state = crit.state_dict()
    crit.monitor.close()
    resumed = lossdsl.compile(SOURCE)
    resumed.monitor.attach(lossdsl.JsonlWriter(path), every=2)
    resumed.load_state_dict(state)
    second = run(resumed, 2, seed=1)
    resumed.monitor.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 2
    assert records[0]["loss/mae"] == pytest.approx(window_means(first)["loss/mae"], rel=1e-6)
    assert records[1]["loss/mae"] == pytest.approx(window_means(second)["loss/mae"], rel=1e-6)


@pytest.mark.parametrize("append", [False, True])
def test_config_append(tmp_path, append):
    path = tmp_path / "terms.jsonl"
    path.write_text(OLD)
    crit = lossdsl.from_config(
        {"expr": SOURCE, "monitor": {"sink": str(path), "log_every": 1, "append": append}}
    )
    if not append:
        with pytest.raises(lossdsl.LossDSLError, match="already holds"):
            crit(torch.zeros(3), torch.ones(3))
        assert path.read_text() == OLD
        return
    crit(torch.zeros(3), torch.ones(3), step=4)
    crit.monitor.close()
    first, second = path.read_text().splitlines()
    assert first == OLD.strip() and json.loads(second)["step"] == 4


def test_tensorboard_writer_without_tensorboard_names_the_extra(tmp_path, monkeypatch):
    import sys

    loaded = ("tensorboard", "tensorboard.", "torch.utils.tensorboard")
    for name in [n for n in sys.modules if n.startswith(loaded)]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` fails
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(lossdsl.LossDSLError, match="tensorboard") as info:
        lossdsl.TensorBoardWriter(tmp_path / "tb")
    assert "pip install 'lossdsl[tensorboard]'" in str(info.value)
    with pytest.raises(lossdsl.LossDSLError, match="tensorboard"):  # a config's sink: at compile
        lossdsl.from_config({"expr": SOURCE, "monitor": {"sink": str(tmp_path / "tb")}})
    assert not (tmp_path / "tb").exists()
