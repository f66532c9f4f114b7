"""One loss called from several threads at once (as ``nn.DataParallel`` does): every call is
counted exactly once, in the statistics and in the sinks' windows (DESIGN.md §7)."""

import sys
import threading

import pytest
import torch

import lossdsl

THREADS, CALLS = 4, 50


def value(thread: int, call: int) -> float:
    """The error of a call; mse of a constant error e is e * e, exact in float32."""
    return float(thread * CALLS + call + 1)


@pytest.mark.parametrize("probe", [0, 7])
def test_calls_from_threads_are_each_counted_once(probe):
    crit = lossdsl.compile("mse + 0.5*mae")
    if probe:
        crit.monitor.probe(every=probe)
    rows = []
    crit.monitor.attach(lambda scalars, step: rows.append(scalars), every=10)
    start = threading.Barrier(THREADS)
    errors = []

    def work(thread: int) -> None:
        try:
            start.wait()
            for call in range(CALLS):
                e = value(thread, call)
                pred = torch.zeros(3, requires_grad=bool(probe))
                crit(pred, torch.full((3,), e))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors

    errors_all = [value(t, c) for t in range(THREADS) for c in range(CALLS)]
    n = len(errors_all)
    stats = crit.monitor.stats()
    assert stats["mse"]["count"] == n and stats["total"]["count"] == n
    assert stats["mse"]["mean"] == sum(e * e for e in errors_all) / n  # exact: integers in float64
    assert stats["mae"]["mean"] == sum(errors_all) / n
    assert stats["mse"]["min"] == 1.0 and stats["mse"]["max"] == float(n * n)
    # the sink's rows: 20 windows of 10 calls each, which add up to every call once
    assert len(rows) == n // 10
    assert sum(10 * r["loss/mae"] for r in rows) == pytest.approx(sum(errors_all), rel=1e-12)
    if probe:  # |d mse / d pred| = sqrt(3) * 2e / 3 on the probed calls, whichever they were
        low, high = 2 * min(errors_all) / 3**0.5, 2 * max(errors_all) / 3**0.5
        assert low <= stats["mse"]["grad_norm"] <= high
