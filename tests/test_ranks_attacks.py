"""Ranks that disagree (DESIGN.md §6, §6.1, §7, §9; README "Several processes",
"Reliability", "Seeing the balance"): a NaN on one rank under the gradient balancers, a synced
read made on one rank alone.

Two gloo processes on the CPU meet through a file. Each scenario runs under a process group
with a timeout (short where a collective waits for a rank that never comes) and the whole run
under a deadline, so a hang, a crash of a rank or a collective mismatch fails the test
instead of waiting. Every expected value is
written here: equal weights and state on every rank, weights that a refused call leaves as
they were, means of the values each rank recorded.
"""

import os
import time
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

import lossdsl
from rendezvous import rendezvous

WORLD = 2
GROUP_TIMEOUT = 4.0  # seconds a collective waits for the other rank where one never comes
TIMEOUTS = {"sync_on_one_rank": GROUP_TIMEOUT}  # the others: generous, a loaded machine is slow


# --- scenarios: each runs on both ranks and returns what the test compares ------------------


def _batch(rank: int, step: int, bad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(10 * rank + step)
    x, y = torch.randn(6, 3, generator=gen), torch.randn(6, 2, generator=gen) * (1 + 3 * rank) * (1 + step) ** 2
    if bad:
        y = y.clone()
        y[0, 0] = float("nan")
    return x, y


BAD = (1, 1)  # (rank, step) of the NaN


def _weight_producer(rank: int, policy: str) -> dict:
    """lra updating on every call, a NaN target on rank 1 at step 1."""
    torch.manual_seed(0)
    shared = torch.nn.Linear(3, 2)
    crit = lossdsl.compile('balance(mse, mae, method="lra", every=1)', nonfinite=policy)
    out = {"weights": {}, "raised": []}
    for step in range(4):
        x, y = _batch(rank, step, (rank, step) == BAD)
        try:
            crit(shared(x), y, shared=shared, step=step).backward()
        except lossdsl.NonFiniteLossError:
            out["raised"].append(step)
            continue
        out["weights"][step] = float(crit.weights["mae"])
    out["count"] = int(crit.balancers[0].count)
    return out


def _aggregator(rank: int, policy: str) -> dict:
    """imtl_g (its weights change from call to call), a NaN target on rank 1 at step 1."""
    torch.manual_seed(0)
    shared = torch.nn.Linear(3, 2)
    crit = lossdsl.compile('balance(mse, mae, method="imtl_g")', nonfinite=policy)
    out = {}
    for step in range(3):
        x, y = _batch(rank, step, (rank, step) == BAD)
        shared.zero_grad()
        crit(shared(x), y, step=step)
        crit.backward(shared=shared)
        out[step] = float(crit.weights["mae"])
    return out


def _sync_on_one_rank(rank: int) -> dict:
    """Both ranks record one call; rank 0 alone reads with sync=True, which fails at the
    timeout; then it reads without sync."""
    crit = lossdsl.compile("mse + mae")
    crit(torch.full((4,), 2.0), torch.zeros(4))
    if rank != 0:
        time.sleep(GROUP_TIMEOUT + 2)  # alive: rank 0 waits for it, not for a closed socket
        return {}
    out = {}
    try:
        crit.monitor.as_dict(sync=True)
    except RuntimeError as err:  # the backend's timeout
        out["error"] = type(err).__name__
    out["after"] = crit.monitor.as_dict()
    return out


SCENARIOS = {
    "lra_warn": lambda r: _weight_producer(r, "warn"),
    "lra_zero_term": lambda r: _weight_producer(r, "zero_term"),
    "lra_skip_batch": lambda r: _weight_producer(r, "skip_batch"),
    "lra_raise": lambda r: _weight_producer(r, "raise"),
    "imtl_g_zero_term": lambda r: _aggregator(r, "zero_term"),
    "imtl_g_skip_batch": lambda r: _aggregator(r, "skip_batch"),
    "sync_on_one_rank": _sync_on_one_rank,
}


def _worker(rank: int, name: str, meet: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=meet, rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=TIMEOUTS.get(name, 60.0)))
    try:
        result = SCENARIOS[name](rank)
    except Exception as err:  # reported by the test, with the rank's traceback
        result = {"failed": f"{type(err).__name__}: {err}\n{traceback.format_exc()}"}
    # saved before the group is taken down: gloo may abort a rank whose peer closed first
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    try:
        dist.barrier()
        dist.destroy_process_group()
    except RuntimeError:
        pass  # a group that timed out may refuse a clean shutdown


def _run(name: str, tmp_path) -> list[dict]:
    """Each rank's result; fails (without waiting) when a rank hangs past the deadline or dies."""
    context = mp.start_processes(_worker, args=(name, rendezvous(tmp_path), str(tmp_path)), nprocs=WORLD,
                                 join=False, start_method="spawn")
    limit = 2 * TIMEOUTS.get(name, 60.0) + 30  # spawning, both ranks, the timeouts
    deadline = time.monotonic() + limit
    try:
        while not context.join(timeout=0.5):
            if time.monotonic() > deadline:
                pytest.fail(f"{name}: the ranks still ran after {limit} s")
    except ProcessException as err:  # a rank that died after saving its result died at the shutdown
        if not all((tmp_path / f"rank{r}.pt").exists() for r in range(WORLD)):
            pytest.fail(f"{name}: a rank died: {err}")
    finally:
        for p in context.processes:
            if p.is_alive():
                p.kill()
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for rank, result in enumerate(results):
        assert "failed" not in result, f"rank {rank}: {result['failed']}"
    return results


pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch built without distributed")


# --- a NaN on one rank: the gradient balancers ----------------------------------------------


@pytest.mark.parametrize("policy", ["warn", "zero_term", "skip_batch"])
def test_lra_with_a_nan_on_one_rank_keeps_every_rank_in_step(tmp_path, policy):
    """README: a bad term leaves lra's weights and count of training calls as they were, and on
    update calls the ranks average their gradient statistics so every rank gets the same weights."""
    r0, r1 = _run(f"lra_{policy}", tmp_path)
    assert r0["weights"] == r1["weights"] and sorted(r0["weights"]) == [0, 1, 2, 3]
    assert r0["weights"][1] == r0["weights"][0]  # the bad call changed nothing, on either rank
    assert r0["count"] == r1["count"] == 3


def test_lra_with_a_nan_on_one_rank_raises_on_every_rank(tmp_path):
    """README: under raise a NaN on one rank raises NonFiniteLossError on every rank, and a
    loop that catches it and skips the batch keeps the ranks' collectives in step."""
    r0, r1 = _run("lra_raise", tmp_path)
    assert r0["raised"] == r1["raised"] == [1]
    assert r0["weights"] == r1["weights"] and sorted(r0["weights"]) == [0, 2, 3]
    assert r0["count"] == r1["count"] == 3


@pytest.mark.parametrize("policy", ["zero_term", "skip_batch"])
def test_an_aggregator_with_a_nan_on_one_rank_keeps_its_weights_on_every_rank(tmp_path, policy):
    """README: under zero_term/skip_batch a bad term on one rank leaves the balancer unchanged on
    every rank; an aggregator's stored weights stay as they were."""
    r0, r1 = _run(f"imtl_g_{policy}", tmp_path)
    assert r0 == r1
    assert r0[1] == r0[0]


# --- the monitor's synced reads ---------------------------------------------------------------


def test_a_synced_read_that_fails_keeps_its_window(tmp_path):
    """A read that raised has read nothing: as sinks that fail get their window back, the next
    read of as_dict reports the calls made since the last read that returned."""
    r0, _ = _run("sync_on_one_rank", tmp_path)
    assert r0["error"]
    assert r0["after"].get("loss/mse") == pytest.approx(4.0)
    assert r0["after"].get("loss/mae") == pytest.approx(2.0)
