"""Resuming a run (DESIGN.md §4, §6): ``state_dict()``/``load_state_dict()`` and pickling
restore the step (so schedules), the balancers and the monitor exactly.

The main test kills a training process after it saved a checkpoint, continues in a fresh
process, and compares the losses with an uninterrupted run bit for bit. This file is also
that training script: ``python test_resume.py first|resume ...``.
"""

import math
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import lossdsl

SOURCE = (
    "recon = mse  # the balancer keeps this name\n"
    'linear(0, 1, steps=6)*temporal_diff + balance(recon, mae, method="ema", beta=0.9)'
)
BETA, EPS, RAMP = 0.9, 1e-8, 6.0
STEPS, KILL_AT = 9, 4


def _batch(step: int):
    """The data of a step depends on the step only, so a fresh process sees the same."""
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(8, 5, 3, generator=gen)
    y = torch.randn(8, 5, 2, generator=gen) * (1 + step % 3)
    return x, y


def _fresh():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    crit = lossdsl.compile(SOURCE)
    opt = torch.optim.Adam(list(model.parameters()) + list(crit.parameters()), lr=0.05)
    return model, opt, crit


def _train(model, opt, crit, until: int) -> list:
    """Train from the stored step of ``crit`` up to ``until``; the step advances by set_step."""
    losses = []
    while int(crit.step) < until:
        x, y = _batch(int(crit.step))
        opt.zero_grad()
        loss = crit(model(x), y)  # the step is the one stored in crit
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        crit.set_step(int(crit.step) + 1)
    return losses


def _summary(model, crit) -> dict:
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "balancer": {k: v.clone() for k, v in crit.balancers.state_dict().items()},
        "stats": crit.monitor.stats(),
        "step": int(crit.step),
    }


def _script(mode: str, checkpoint: str, out: str) -> None:
    torch.set_num_threads(1)
    model, opt, crit = _fresh()
    if mode == "first":
        losses = _train(model, opt, crit, KILL_AT)
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "crit": crit.state_dict()}
        torch.save(state, checkpoint)
        torch.save(losses, out)
        print("saved", flush=True)
        signal.pause()  # wait to be killed
    state = torch.load(checkpoint)  # weights only: the loss state is plain tensors and text
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    crit.load_state_dict(state["crit"])
    losses = _train(model, opt, crit, STEPS)
    torch.save({"losses": losses, **_summary(model, crit)}, out)


def _run(mode, tmp_path):
    cmd = [sys.executable, __file__, mode, str(tmp_path / "ckpt.pt"), str(tmp_path / f"{mode}.pt")]
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _close(a: dict, b: dict) -> None:
    """Monitor statistics of two runs: the same numbers (summation order may differ)."""
    for name in a:
        for key, value in a[name].items():
            other = b[name][key]
            both_nan = math.isnan(value) and math.isnan(other)
            assert both_nan or math.isclose(value, other, rel_tol=1e-9, abs_tol=1e-12), (name, key)


def test_kill_and_resume_in_a_fresh_process_matches_an_uninterrupted_run(tmp_path):
    first = _run("first", tmp_path)
    line = first.stdout.readline()
    if line.strip() != "saved":
        first.kill()
        pytest.fail("the first run did not save: " + first.communicate()[1][-2000:])
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    second = _run("resume", tmp_path)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-2000:]

    model, opt, crit = _fresh()
    reference = _train(model, opt, crit, STEPS)
    expected = _summary(model, crit)
    before = torch.load(tmp_path / "first.pt")
    after = torch.load(tmp_path / "resume.pt")
    assert torch.equal(torch.stack(before + after["losses"]), torch.stack(reference))  # bit for bit
    assert all(torch.equal(a, b) for a, b in zip(after["params"], expected["params"]))
    assert after["balancer"].keys() == expected["balancer"].keys() and after["balancer"]
    assert all(torch.equal(after["balancer"][k], expected["balancer"][k]) for k in expected["balancer"])
    assert after["step"] == STEPS
    _close(after["stats"], expected["stats"])
    assert after["stats"]["recon"]["count"] == STEPS


def _hand_ema(values: list) -> float:
    """Bias-corrected EMA of ``values`` (beta 0.9), by the formula of DESIGN.md §6."""
    m = 0.0
    for v in values:
        m = BETA * m + (1 - BETA) * v
    return m / (1 - BETA ** len(values))


def test_loaded_state_gives_the_weights_of_the_formula():
    model, opt, crit = _fresh()
    seen = {"recon": [], "mae": []}
    for step in range(KILL_AT):
        x, y = _batch(step)
        crit(model(x), y, step=step)
        for name in seen:
            seen[name].append(float(crit.terms[name]))
    loaded = lossdsl.compile(SOURCE)
    loaded.load_state_dict(crit.state_dict())
    assert int(loaded.step) == KILL_AT - 1
    x, y = _batch(KILL_AT)
    pred = model(x).detach()
    loaded(pred, y, step=KILL_AT)
    seen["recon"].append(F.mse_loss(pred, y).item())
    seen["mae"].append(F.l1_loss(pred, y).item())
    weights = loaded.weights
    assert weights["temporal_diff"].item() == pytest.approx(KILL_AT / RAMP, rel=1e-6)
    for name in ("recon", "mae"):
        assert weights[name].item() == pytest.approx(1 / (_hand_ema(seen[name]) + EPS), rel=1e-5)
    assert loaded.monitor.stats()["recon"]["count"] == KILL_AT + 1


def test_pickled_loss_continues_exactly(tmp_path):
    model, opt, crit = _fresh()
    _train(model, opt, crit, KILL_AT)
    torch.save(crit, tmp_path / "crit.pt")
    restored = torch.load(tmp_path / "crit.pt", weights_only=False)
    assert isinstance(restored, lossdsl.Loss) and restored.canonical == crit.canonical
    x, y = _batch(KILL_AT)
    pred = model(x).detach()
    a, b = crit(pred, y), restored(pred, y)
    assert torch.equal(a, b)
    assert all(torch.equal(crit.weights[k], restored.weights[k]) for k in crit.weights)
    _close(crit.monitor.stats(), restored.monitor.stats())


def test_state_from_a_different_program_is_refused():
    saved = lossdsl.compile("mse + mae").state_dict()
    other = lossdsl.compile("mse + 2*mae")
    with pytest.raises(lossdsl.LossDSLError, match="different loss program") as info:
        other.load_state_dict(saved)
    assert "mse + mae" in info.value.hint and "mse + 2 * mae" in info.value.hint


def test_a_refused_state_changes_nothing():
    # two programs with tensors of the same names and shapes: a learnable balancer, a
    # stateful one, the step and the monitor; only the ema's beta differs
    program = 'balance(mse, mae, method="uncertainty") + balance(huber, temporal_diff, method="ema", beta={})'
    saved, crit = lossdsl.compile(program.format(0.5)), lossdsl.compile(program.format(0.9))
    for loss, steps in ((saved, 5), (crit, 2)):
        opt = torch.optim.SGD(loss.parameters(), lr=0.5)
        for step in range(steps):
            x, y = _batch(step)
            opt.zero_grad()
            loss(x[..., :2] * (1 + steps), y, step=10 * steps + step).backward()
            opt.step()
    state = saved.state_dict()
    tensors = dict(crit.named_parameters()) | dict(crit.named_buffers())
    before = {k: v.detach().clone() for k, v in tensors.items()}
    assert any(not torch.equal(before[k], state[k]) for k in state if k in before)
    with pytest.raises(lossdsl.LossDSLError, match="different loss program"):
        crit.load_state_dict(state)
    after = dict(crit.named_parameters()) | dict(crit.named_buffers())
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before), [
        k for k in before if not torch.equal(after[k], before[k])
    ]


def test_state_from_the_same_program_written_differently_loads():
    crit = lossdsl.compile("mse+mae")
    crit(torch.zeros(3), torch.ones(3), step=5)
    other = lossdsl.compile("mse + mae  # the same program")
    other.load_state_dict(crit.state_dict())
    assert int(other.step) == 5


MONITORED = "0.7*huber(delta=1) + 0.3*temporal_diff + watch(mse)"
CALLS, SAVE_AT = 25, 13


def _monitored_calls(crit, calls, log, dicts) -> None:
    """Calls ``calls`` (1-based) with data that depends on the call only; as_dict() every 3."""
    for i in calls:
        gen = torch.Generator().manual_seed(500 + i)
        pred = torch.randn(3, 7, 2, generator=gen).mul(1 + i % 4).requires_grad_()
        crit(pred, torch.randn(3, 7, 2, generator=gen), step=2 * i).backward()
        if i % 3 == 0:
            dicts[i] = crit.monitor.as_dict()


def _monitored(path):
    crit = lossdsl.compile(MONITORED)
    crit.monitor.probe(every=4)
    crit.monitor.attach(lossdsl.JsonlWriter(path), every=10)
    return crit


def test_resumed_monitor_reads_what_an_uninterrupted_one_does(tmp_path):
    """Probe every 4, a sink every 10 and as_dict() every 3 calls; saved at call 13, the
    middle of every reader's window, and continued in a fresh compile."""
    import io
    import shutil

    whole, part = tmp_path / "whole.jsonl", tmp_path / "part.jsonl"
    ref_dicts, dicts = {}, {}
    crit = _monitored(whole)
    _monitored_calls(crit, range(1, SAVE_AT + 1), whole, ref_dicts)
    buffer = io.BytesIO()
    torch.save(crit.state_dict(), buffer)
    crit.monitor.flush()
    shutil.copy(whole, part)  # the log as the interrupted run left it
    _monitored_calls(crit, range(SAVE_AT + 1, CALLS + 1), whole, ref_dicts)
    crit.monitor.close()

    resumed = _monitored(part)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))  # weights only
    _monitored_calls(resumed, range(SAVE_AT + 1, CALLS + 1), part, dicts)
    resumed.monitor.close()

    rows = whole.read_text().splitlines()
    assert len(rows) == 2 and "grad_norm" in rows[1]
    assert part.read_text().splitlines() == rows  # every row, the steps included (20, 40)
    later = {i: d for i, d in ref_dicts.items() if i > SAVE_AT}
    assert dicts == later
    # probed at calls 1, 5, 9, 13, 17, 21, 25: in the windows that end at 15, 18 and 21
    assert [i for i, d in later.items() if "loss/huber/grad_norm" in d] == [15, 18, 21]
    for name in ("train", "eval"):
        a, b = crit.monitor.stats(phase=name), resumed.monitor.stats(phase=name)
        assert repr(a) == repr(b)  # NaN included


if __name__ == "__main__":
    _script(*sys.argv[1:4])
