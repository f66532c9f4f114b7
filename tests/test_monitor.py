"""Per-term statistics of the monitor (DESIGN.md §7) against statistics computed by hand
from the term values, which the tests compute themselves with torch.nn.functional."""

import math

import pytest
import torch
import torch.nn.functional as F

import lossdsl

BETA = 0.9


def hand_stats(values, beta=BETA):
    """Mean, bias-corrected EMA, min, max and non-finite count of a list of floats."""
    finite = [v for v in values if math.isfinite(v)]
    ema, n = 0.0, 0
    for v in finite:
        ema = beta * ema + (1 - beta) * v
        n += 1
    return {
        "mean": sum(finite) / len(finite),
        "ema": ema / (1 - beta**n),
        "min": min(finite),
        "max": max(finite),
        "nonfinite": len(values) - len(finite),
    }


def run_two_terms(calls, nan_every=0, seed=0):
    """``0.7*mse + 0.3*mae(pred=other)``; every ``nan_every``-th call ``other`` holds a NaN.

    Returns the loss and, per call, the hand-computed mse and mae values."""
    crit = lossdsl.compile("0.7*mse + 0.3*mae(pred=other)", nonfinite="zero_term")
    crit.monitor.ema = BETA
    gen = torch.Generator().manual_seed(seed)
    mses, maes = [], []
    for i in range(calls):
        pred, target, other = (torch.randn(4, 3, generator=gen) * (1 + i % 5) for _ in range(3))
        if nan_every and i % nan_every == nan_every - 1:
            other[0, 0] = math.nan
        crit(pred, target, other=other)
        mses.append(F.mse_loss(pred, target).item())
        maes.append(F.l1_loss(other, target).item())
    return crit, mses, maes


@pytest.mark.parametrize("calls", [7, 300])  # 300 calls also fold the history buffer twice
def test_statistics_equal_hand_computed(calls):
    crit, mses, maes = run_two_terms(calls, nan_every=4)
    stats = crit.monitor.stats()
    for name, values in (("mse", mses), ("mae", maes)):
        ref = hand_stats(values)
        for key in ("mean", "ema", "min", "max", "nonfinite"):
            assert stats[name][key] == pytest.approx(ref[key], rel=1e-5), (name, key)
    # the total uses 0 for the bad term (zero_term), and is always finite
    totals = [0.7 * a + (0.3 * b if math.isfinite(b) else 0.0) for a, b in zip(mses, maes)]
    assert stats["total"]["mean"] == pytest.approx(sum(totals) / calls, rel=1e-5)
    assert stats["total"]["nonfinite"] == 0
    # the weighted mean and the share are over the calls where the term was finite
    ok = [(a, b) for a, b in zip(mses, maes) if math.isfinite(b)]
    assert stats["mae"]["weighted"] == pytest.approx(sum(0.3 * b for _, b in ok) / len(ok), rel=1e-5)
    shares = [0.7 * a / (0.7 * a + 0.3 * b) if math.isfinite(b) else 1.0 for a, b in zip(mses, maes)]
    assert stats["mse"]["share"] == pytest.approx(sum(shares) / calls, rel=1e-5)
    assert stats["mse"]["weight"] == pytest.approx(0.7) and stats["mae"]["weight"] == pytest.approx(0.3)


def test_shares_sum_to_one_and_watch_has_weight_zero():
    crit = lossdsl.compile("0.7*huber(delta=1) + 0.3*temporal_diff + watch(mse)")
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        crit(torch.randn(2, 6, 3, generator=gen), torch.randn(2, 6, 3, generator=gen))
    logs = crit.monitor.as_dict()
    shares = [logs[f"loss/{n}/share"] for n in ("huber", "temporal_diff", "mse")]
    assert sum(shares) == pytest.approx(1.0, abs=1e-9)
    assert logs["loss/mse/weight"] == 0.0 and logs["loss/mse/share"] == 0.0
    stats = crit.monitor.stats()
    assert sum(stats[n]["share"] for n in ("huber", "temporal_diff", "mse")) == pytest.approx(1.0)


def test_composite_share_is_relative_to_the_terms():
    crit = lossdsl.compile("recon = mse + 0.5*mae\n2*recon + mae")
    pred, target = torch.tensor([0.0, 1.0, 3.0]), torch.tensor([1.0, 1.0, 1.0])
    crit(pred, target)
    mse, mae = F.mse_loss(pred, target).item(), F.l1_loss(pred, target).item()
    logs = crit.monitor.as_dict()
    contrib = {"mse": 2 * mse, "mae": 2 * 0.5 * mae, "mae_2": mae, "recon": 2 * (mse + 0.5 * mae)}
    denom = contrib["mse"] + contrib["mae"] + contrib["mae_2"]
    for name, c in contrib.items():
        assert logs[f"loss/{name}/weighted"] == pytest.approx(c, rel=1e-6)
        assert logs[f"loss/{name}/share"] == pytest.approx(c / denom, rel=1e-6)


@pytest.mark.parametrize("source", ["log(mse) + mse*mae", "m = mse\nlog(m) + m*mae"])
def test_effective_weights_match_autograd_for_a_nonlinear_program(source):
    crit = lossdsl.compile(source)
    shared = "m = mse" in source  # one mse used twice, or two separate mse terms
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        pred, target = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
        crit(pred, target)
        mse_a = F.mse_loss(pred, target).detach().requires_grad_()
        mse_b = mse_a if shared else F.mse_loss(pred, target).detach().requires_grad_()
        mae = F.l1_loss(pred, target).detach().requires_grad_()
        total = torch.log(mse_a) + mse_b * mae
        leaves = [mse_a, mae] if shared else [mse_a, mse_b, mae]
        grads = torch.autograd.grad(total, leaves)
        logs = crit.monitor.as_dict()  # one call per window
        for name, grad in zip(crit.term_names, grads):
            assert logs[f"loss/{name}/weight"] == pytest.approx(grad.item(), rel=1e-5), name
        assert logs["loss/total"] == pytest.approx(total.item(), rel=1e-5)


def test_as_dict_is_the_mean_since_the_last_read():
    crit, mses, maes = run_two_terms(6)
    crit.monitor.reset()
    gen = torch.Generator().manual_seed(5)
    seen = []
    for i in range(5):
        pred, target, other = (torch.randn(3, 2, generator=gen) for _ in range(3))
        crit(pred, target, other=other)
        seen.append((F.mse_loss(pred, target).item(), F.l1_loss(other, target).item()))
        if i == 1:
            first = crit.monitor.as_dict(prefix="train/")
    second = crit.monitor.as_dict()
    assert set(first) == {"train/total"} | {
        f"train/{n}{s}" for n in ("mse", "mae") for s in ("", "/weight", "/weighted", "/share")
    }
    assert first["train/mse"] == pytest.approx((seen[0][0] + seen[1][0]) / 2, rel=1e-6)
    assert second["loss/mae"] == pytest.approx(sum(b for _, b in seen[2:]) / 3, rel=1e-6)
    assert second["loss/total"] == pytest.approx(sum(0.7 * a + 0.3 * b for a, b in seen[2:]) / 3, rel=1e-6)
    assert crit.monitor.as_dict() == {}  # nothing new since the last read
    # stats() covers everything since reset(), whatever was read in between
    assert crit.monitor.stats()["mse"]["mean"] == pytest.approx(sum(a for a, _ in seen) / 5, rel=1e-6)


def test_reset_and_disable():
    crit, _, _ = run_two_terms(4)
    crit.monitor.reset()
    stats = crit.monitor.stats()
    assert stats["mse"]["count"] == 0 and math.isnan(stats["mse"]["mean"])
    crit.monitor.enabled = False
    crit(torch.zeros(3), torch.ones(3), other=torch.ones(3))
    assert crit.monitor.as_dict() == {}
    crit.monitor.enabled = True
    crit(torch.zeros(3), torch.ones(3), other=torch.ones(3))
    assert crit.monitor.as_dict()["loss/mse"] == pytest.approx(1.0)


def test_statistics_are_in_the_state_dict():
    crit, mses, maes = run_two_terms(9, nan_every=3)
    state = crit.state_dict()
    assert {"monitor.sums", "monitor.ema_acc", "monitor.low", "monitor.high", "monitor._extra_state"} <= set(state)
    fresh = lossdsl.compile("0.7*mse + 0.3*mae(pred=other)", nonfinite="zero_term")
    fresh.monitor.ema = BETA
    fresh.load_state_dict(state)
    stats = fresh.monitor.stats()
    for name, values in (("mse", mses), ("mae", maes)):
        ref = hand_stats(values)
        for key in ("mean", "ema", "min", "max", "nonfinite"):
            assert stats[name][key] == pytest.approx(ref[key], rel=1e-5), (name, key)


def test_summary_names_every_term():
    crit, mses, _ = run_two_terms(3)
    text = crit.monitor.summary()
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["term", "weight"]
    row = next(line for line in lines if line.startswith("mse "))
    assert f"{sum(mses) / 3:.4g}" in row.split()
    assert any(line.startswith("total") for line in lines)


def test_meta_calls_record_nothing_and_use_no_hidden_cpu_tensor():
    # a meta tensor has no data: any host read (.item(), bool(), .tolist()) or CPU tensor
    # mixed into the per-call path raises. A meta call is a shape check: the statistics
    # gathered so far stay as they are.
    crit = lossdsl.compile("0.7*huber(delta=1) + 0.3*temporal_diff")
    p, t = torch.randn(4, 8, 2), torch.randn(4, 8, 2)
    crit(p, t)
    x = torch.empty(4, 8, 2, device="meta")
    for _ in range(3):
        crit(x, x)
    stats = crit.monitor.stats()["huber"]
    assert stats["count"] == 1 and stats["mean"] == pytest.approx(F.huber_loss(p, t).item(), rel=1e-6)
    crit.to("meta")  # the whole module on meta (deferred initialisation): state without numbers
    for _ in range(300):  # more calls than the pending rows hold
        crit(x, x)
    state = crit.monitor.state_dict()
    tensors = [t for t in state.values() if isinstance(t, torch.Tensor)]
    assert tensors and all(t.device.type == "meta" for t in tensors)
    crit.to_empty(device="cpu")  # and back: the statistics start anew
    crit(p, 2 * t)
    stats = crit.monitor.stats()
    assert stats["huber"]["count"] == 1
    assert stats["huber"]["mean"] == pytest.approx(F.huber_loss(p, 2 * t).item(), rel=1e-6)
    hub, tem = 0.7 * F.huber_loss(p, 2 * t).item(), 0.3 * torch.diff(p - 2 * t, dim=1).abs().mean().item()
    assert stats["huber"]["share"] == pytest.approx(hub / (hub + tem), rel=1e-6)


def test_reading_on_the_meta_device_skips_the_host():
    # a meta tensor has no data to copy out: the readers give NaN or nothing, and a sink
    # gets no row, instead of failing
    crit = lossdsl.compile("0.7*huber(delta=1) + 0.3*temporal_diff")
    rows = []
    crit.monitor.attach(lambda scalars, step: rows.append(scalars), every=1)
    crit.monitor.probe(every=1)
    crit.to("meta")
    x = torch.empty(4, 8, 2, device="meta", requires_grad=True)
    loss = crit(x, torch.empty(4, 8, 2, device="meta"), step=3)
    assert loss.device.type == "meta" and loss.shape == ()
    crit.monitor.write()
    assert rows == [] and crit.monitor.as_dict() == {}
    stats = crit.monitor.stats()
    assert set(stats) == {"huber", "temporal_diff", "total"}
    assert all(math.isnan(v) for s in stats.values() for v in s.values())
    assert crit.monitor.summary().splitlines()[0].startswith("term")
    suggestion = crit.monitor.suggest_weights()  # nothing measured: the program unchanged
    assert suggestion.source == "0.7*huber(delta=1) + 0.3*temporal_diff"


def test_torch_compile_fullgraph_compiles_once_and_records():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    crit = lossdsl.compile("0.7*huber(delta=1) + 0.3*temporal_diff")
    counter = CompileCounter()
    compiled = torch.compile(crit, fullgraph=True, backend=counter)
    gen = torch.Generator().manual_seed(3)
    hubers = []
    for _ in range(5):
        pred = torch.randn(2, 5, 3, generator=gen, requires_grad=True)
        target = torch.randn(2, 5, 3, generator=gen)
        compiled(pred, target).backward()
        hubers.append(F.huber_loss(pred, target, delta=1.0).item())
    assert counter.frame_count == 1
    stats = crit.monitor.stats()
    ref = hand_stats(hubers, beta=0.99)
    for key in ("mean", "ema", "min", "max"):
        assert stats["huber"][key] == pytest.approx(ref[key], rel=1e-5)
    assert stats["huber"]["count"] == 5


def test_float64_inputs_keep_float64_precision():
    crit = lossdsl.compile("mse")
    values = [1.0 + k * 1e-12 for k in range(5)]
    for v in values:
        crit(torch.zeros(1, dtype=torch.float64), torch.full((1,), v, dtype=torch.float64).sqrt())
    assert crit.monitor.stats()["mse"]["mean"] == pytest.approx(sum(values) / 5, rel=1e-14)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_record_never_synchronises():
    crit = lossdsl.compile("0.7*mse + 0.3*mae", nonfinite="zero_term")  # left on the CPU
    pred, target = torch.randn(64, device="cuda"), torch.randn(64, device="cuda")
    crit(pred, target)  # the state follows the inputs to the GPU here, once
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(300):
            crit(pred, target)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert crit.monitor.stats()["mse"]["mean"] == pytest.approx(F.mse_loss(pred, target).item(), rel=1e-5)


def test_a_monitor_of_its_own_records_rows_and_weights():
    # the interface a Loss uses: rows [values..., total] and the weights of each call
    monitor = lossdsl.Monitor(["a", "b", "ab"], is_term=[True, True, False])
    calls = [((1.0, 4.0), (0.5, 2.0)), ((3.0, 1.0), (0.5, 1.0)), ((2.0, -2.0), (1.0, 1.0))]
    for (a, b), (wa, wb) in calls:
        total = wa * a + wb * b
        monitor.record(torch.tensor([a, b, total, total]), torch.tensor([wa, wb, 1.0]))
    stats = monitor.stats()
    weighted = [(wa * a, wb * b) for (a, b), (wa, wb) in calls]
    shares = [abs(x) / (abs(x) + abs(y)) for x, y in weighted]
    assert stats["a"]["mean"] == pytest.approx(2.0) and stats["b"]["min"] == -2.0
    assert stats["b"]["weight"] == pytest.approx((2.0 + 1.0 + 1.0) / 3)
    assert stats["a"]["weighted"] == pytest.approx(sum(x for x, _ in weighted) / 3)
    assert stats["a"]["share"] == pytest.approx(sum(shares) / 3)
    # the composite is not a term: its share is relative to the terms' sum, not added to it
    assert stats["total"]["share"] == pytest.approx(1.0)
    assert stats["ab"]["share"] == pytest.approx(sum(abs(x + y) / (abs(x) + abs(y)) for x, y in weighted) / 3)


def test_sink_rows_carry_the_step_tensor_as_it_is_when_written():
    monitor = lossdsl.Monitor(["a"])
    rows = []
    monitor.attach(lambda scalars, step: rows.append(step), every=2)
    for _ in range(2):  # no step given: the rows count the training calls
        monitor.record(torch.tensor([1.0, 1.0]), torch.ones(1))
    step = torch.tensor(7)
    monitor.record(torch.tensor([1.0, 1.0]), torch.ones(1), step)
    step.fill_(9)  # set after the call (set_step), read when the row is written
    monitor.write()
    assert rows == [2, 9]


def test_lower_precision_keeps_the_statistics_in_float64():
    crit = lossdsl.compile("mse")
    values = [1.0 + k * 1e-9 for k in range(4)]
    for v in values:
        crit(torch.zeros(1, dtype=torch.float64), torch.full((1,), v, dtype=torch.float64).sqrt())
    crit.half()  # moves nothing: the sums must not be rounded to float16 and back
    assert all(b.dtype == torch.float64 for b in crit.monitor.buffers())
    assert crit.monitor.stats()["mse"]["mean"] == pytest.approx(sum(values) / 4, rel=1e-14)


def test_a_pickled_monitor_keeps_its_statistics_and_its_program_text():
    import pickle

    crit = lossdsl.compile("mse + mae  # two terms")
    crit(torch.zeros(4), torch.full((4,), 10.0))
    restored = pickle.loads(pickle.dumps(crit.monitor))
    assert restored.stats()["mse"]["mean"] == 100.0
    # equal shares of 100 + 10: 55 each
    assert restored.suggest_weights().source == "0.55*mse + 5.5*mae  # two terms"


def test_a_compiled_call_folds_exactly_what_an_eager_call_folds():
    # under torch.compile one call's row is folded in the graph by a one-row specialisation;
    # the statistics, shares and the non-finite bookkeeping must match the eager path bit for bit
    torch._dynamo.reset()
    source = "0.7*mse + 0.2*mae + 0.1*linear(0, 1, steps=4)*mse"
    eager = lossdsl.compile(source, nonfinite="zero_term")
    compiled_crit = lossdsl.compile(source, nonfinite="zero_term")
    compiled = torch.compile(compiled_crit, backend="eager")
    gen = torch.Generator().manual_seed(5)
    for step in range(6):
        pred = torch.randn(3, 4, generator=gen) * 3
        if step == 2:
            pred[0, 0] = math.inf  # a non-finite call: left out of every statistic
        target = torch.randn(3, 4, generator=gen)
        eager(pred.clone().requires_grad_(), target, step=step)
        compiled(pred.clone().requires_grad_(), target, step=step)
    expected, got = eager.monitor.stats(), compiled_crit.monitor.stats()
    assert expected.keys() == got.keys()
    for name in expected:
        # the total itself is summed in float32 by two different kernels
        rel = 1e-6 if name == "total" else 1e-12
        for key, value in expected[name].items():
            assert got[name][key] == pytest.approx(value, rel=rel, nan_ok=True), (name, key)
    assert expected["mse"]["nonfinite"] == 1
