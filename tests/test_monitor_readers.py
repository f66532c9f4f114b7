"""Readers of the monitor (DESIGN.md §7): every reader has its own window, validation calls
are kept apart from training calls, and rows carry the stored optimizer step. Expected
values are means computed in the tests from the term values of each call."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import lossdsl

SOURCE = "0.7*mse + 0.3*mae"
W = {"mse": 0.7, "mae": 0.3}


def batch(i: int):
    gen = torch.Generator().manual_seed(100 + i)
    return torch.randn(5, 3, generator=gen) * (1 + i % 4), torch.randn(5, 3, generator=gen)


def by_hand(pred, target) -> dict[str, float]:
    return {"mse": F.mse_loss(pred, target).item(), "mae": F.l1_loss(pred, target).item()}


def window_means(calls: list[dict], prefix: str = "loss/") -> dict[str, float]:
    """as_dict() of a window, from the raw term values of its calls."""
    n = len(calls)
    out = {f"{prefix}total": sum(sum(W[k] * c[k] for k in W) for c in calls) / n}
    for name, w in W.items():
        out[f"{prefix}{name}"] = sum(c[name] for c in calls) / n
        out[f"{prefix}{name}/weight"] = w
        out[f"{prefix}{name}/weighted"] = sum(w * c[name] for c in calls) / n
        out[f"{prefix}{name}/share"] = sum(w * c[name] / sum(W[k] * c[k] for k in W) for c in calls) / n
    return out


def assert_means(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key


def test_a_sink_and_as_dict_keep_their_own_windows(tmp_path):
    crit = lossdsl.compile(SOURCE)
    path = tmp_path / "run.jsonl"
    crit.monitor.attach(lossdsl.JsonlWriter(path), every=10)
    calls, dicts = [], {}
    for i in range(1, 31):
        crit(*batch(i), step=i)
        calls.append({name: float(v) for name, v in crit.terms.items()})
        if i % 3 == 0:
            dicts[i] = crit.monitor.as_dict()
    crit.monitor.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r.pop("step") for r in rows] == [10, 20, 30]
    for k, row in enumerate(rows):
        assert_means(row, window_means(calls[10 * k : 10 * k + 10]))
    assert sorted(dicts) == list(range(3, 31, 3))
    for i, got in dicts.items():
        assert_means(got, window_means(calls[i - 3 : i]))
    # the term values crit.terms gave are those of the formula
    assert calls[4]["mse"] == pytest.approx(by_hand(*batch(5))["mse"], rel=1e-6)


def test_two_sinks_of_different_cadence_do_not_share_a_window():
    crit = lossdsl.compile(SOURCE)
    got = {2: [], 5: []}
    for every in got:
        crit.monitor.attach(lambda scalars, step, every=every: got[every].append(scalars), every=every)
    calls = []
    for i in range(1, 11):
        crit(*batch(i))
        calls.append(by_hand(*batch(i)))
    for every, rows in got.items():
        assert len(rows) == 10 // every
        for k, row in enumerate(rows):
            assert_means(row, window_means(calls[every * k : every * (k + 1)]))


def test_a_sink_attached_late_starts_its_window_there():
    crit = lossdsl.compile(SOURCE)
    for i in range(1, 5):
        crit(*batch(i))
    rows = []
    crit.monitor.attach(lambda scalars, step: rows.append(scalars), every=6)
    calls = []
    for i in range(5, 7):
        crit(*batch(i))
        calls.append(by_hand(*batch(i)))
    assert len(rows) == 1  # the 6th training call
    assert_means(rows[0], window_means(calls))


@pytest.mark.parametrize("mode", ["eval", "no_grad", "inference_mode"])
def test_validation_calls_are_kept_apart(mode):
    crit = lossdsl.compile(SOURCE)
    rows = []
    crit.monitor.attach(lambda scalars, step: rows.append(scalars), every=4)
    train, val = [], []
    for i in range(1, 13):
        pred, target = batch(i)
        if i % 3 == 0:
            if mode == "eval":
                crit.eval()
                crit(pred, target)
                crit.train()
            else:
                with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
                    crit(pred, target)
            val.append(by_hand(pred, target))
        else:
            crit(pred.requires_grad_(), target)
            train.append(by_hand(pred.detach(), target))
    assert len(train) == 8 and len(val) == 4
    # the sinks count training calls only: every 4 of them, training means only
    assert len(rows) == 2
    for k, row in enumerate(rows):
        assert_means(row, window_means(train[4 * k : 4 * k + 4]))
    assert_means(crit.monitor.as_dict(), window_means(train))
    assert_means(crit.monitor.as_dict(prefix="val/", phase="eval"), window_means(val, "val/"))
    for phase, values in (("train", train), ("eval", val)):
        stats = crit.monitor.stats(phase=phase)
        for name in W:
            assert stats[name]["count"] == len(values)
            assert stats[name]["mean"] == pytest.approx(sum(c[name] for c in values) / len(values), rel=1e-6)
            assert stats[name]["min"] == pytest.approx(min(c[name] for c in values), rel=1e-6)
    # summary() and suggest_weights() read the training calls only
    row = next(line for line in crit.monitor.summary().splitlines() if line.startswith("mse "))
    assert f"{sum(c['mse'] for c in train) / 8:.4g}" in row.split()
    magnitude = {n: sum(W[n] * c[n] for c in train) / 8 for n in W}
    whole = sum(magnitude.values())
    suggested = crit.monitor.suggest_weights().weights
    for name in W:  # equal shares of the training magnitude: w * (whole / 2) / magnitude
        assert suggested[name] == pytest.approx(W[name] * whole / 2 / magnitude[name], rel=1e-5)


def test_an_unknown_phase_is_an_error():
    crit = lossdsl.compile(SOURCE)
    with pytest.raises(lossdsl.LossDSLError, match="phase") as info:
        crit.monitor.as_dict(phase="val")
    assert "eval" in info.value.hint


def test_rows_carry_the_stored_step():
    crit = lossdsl.compile(SOURCE)
    steps = []
    crit.monitor.attach(lambda scalars, step: steps.append(step), every=10)
    for i in range(30):
        crit(*batch(i), step=1000 + i)
    assert steps == [1009, 1019, 1029]


def test_gradient_accumulation_shares_a_step_and_logs_every_n_calls():
    # four calls (micro-batches) per optimizer step; the step is set once per step
    crit = lossdsl.compile(SOURCE)
    rows = []
    crit.monitor.attach(lambda scalars, step: rows.append((step, scalars)), every=10)
    calls = []
    for call in range(40):
        if call % 4 == 0:
            crit.set_step(call // 4)
        crit(*batch(call))
        calls.append(by_hand(*batch(call)))
    # a row at every 10th call, labelled with the step of that call: (10 - 1) // 4 = 2, ...
    assert [step for step, _ in rows] == [2, 4, 7, 9]
    for k, (_, row) in enumerate(rows):
        assert_means(row, window_means(calls[10 * k : 10 * k + 10]))


def test_manual_write_uses_the_stored_step_and_each_sinks_window():
    crit = lossdsl.compile(SOURCE)
    got = []
    crit.monitor.attach(lambda scalars, step: got.append((step, scalars["loss/mse"])), every=100)
    values = []
    for i in range(3):
        crit(*batch(i), step=7 + i)
        values.append(by_hand(*batch(i))["mse"])
    crit.monitor.write()
    crit.monitor.write(step=50)  # nothing new since the last row: nothing written
    assert got == [(9, pytest.approx(sum(values) / 3, rel=1e-6))]


def test_reset_starts_every_window_anew():
    crit = lossdsl.compile(SOURCE)
    rows = []
    crit.monitor.attach(lambda scalars, step: rows.append(scalars), every=4)
    for i in range(3):
        crit(*batch(i))
    crit.monitor.reset()
    crit(*batch(3))
    assert math.isclose(rows[0]["loss/mse"], by_hand(*batch(3))["mse"], rel_tol=1e-6)
    assert crit.monitor.as_dict()["loss/mse"] == pytest.approx(by_hand(*batch(3))["mse"], rel=1e-6)


def test_compiled_calls_keep_the_phases_apart():
    torch._dynamo.reset()
    crit = lossdsl.compile(SOURCE)
    compiled = torch.compile(crit, fullgraph=True, backend="eager")
    train, val = [], []
    for i in range(6):
        pred, target = batch(i)
        if i % 2:
            with torch.no_grad():
                compiled(pred, target)
            val.append(by_hand(pred, target))
        else:
            compiled(pred.requires_grad_(), target).backward()
            train.append(by_hand(pred.detach(), target))
    assert_means(crit.monitor.as_dict(), window_means(train))
    assert_means(crit.monitor.as_dict(phase="eval"), window_means(val))
