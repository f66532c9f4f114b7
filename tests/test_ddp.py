"""Training under DistributedDataParallel (DESIGN.md §6, §9): two CPU processes (gloo), each
with half of every batch, train a model with a balanced loss and the monitor on.

Every term here is a mean over equally sized local batches, so the loss is batch-decomposable:
the mean of the ranks' values is the value on the whole batch. The balancer all-reduces the
values it reads and DDP averages the gradients, so both ranks must hold identical weights and
statistics, and the run must match one process that sees the concatenated batch.
"""

import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import lossdsl
from rendezvous import rendezvous

SOURCE = 'recon = mse\n0.5*temporal_diff + balance(recon, mae, method="ema", beta=0.9)'
STEPS, BATCH, WORLD = 5, 16, 2


def _global_batch(step: int):
    gen = torch.Generator().manual_seed(500 + step)
    x = torch.randn(BATCH, 6, 3, generator=gen)
    y = torch.randn(BATCH, 6, 2, generator=gen) * (1 + step)
    return x, y


def _train(rank: int, world: int) -> dict:
    """Train on this rank's share of each batch (all of it when world == 1)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    net = DistributedDataParallel(model) if world > 1 else model
    crit = lossdsl.compile(SOURCE)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    share = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    weights, raw = [], []
    for step in range(STEPS):
        x, y = _global_batch(step)
        opt.zero_grad()
        crit(net(x[share]), y[share], step=step).backward()
        opt.step()
        weights.append(torch.stack([crit.weights[n] for n in crit.term_names]))
        raw.append(torch.stack([crit.terms[n] for n in crit.term_names]))
    return {
        "names": crit.term_names,
        "params": [p.detach().clone() for p in model.parameters()],
        "weights": torch.stack(weights),
        "raw": torch.stack(raw),
        "balancer": {k: v.clone() for k, v in crit.balancers.state_dict().items()},
        "stats": crit.monitor.stats(sync=world > 1),
    }


def worker(rank: int, meet: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=meet, rank=rank, world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        torch.save(_train(rank, WORLD), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()



@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(rendezvous(out), str(out)), nprocs=WORLD, join=True)
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]
    return ranks, _train(0, 1)


pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch built without distributed")


def test_ranks_see_different_data_but_hold_identical_weights_and_state(runs):
    (r0, r1), _ = runs
    assert not torch.allclose(r0["raw"], r1["raw"])  # the local term values differ
    assert torch.equal(r0["weights"], r1["weights"])
    assert all(torch.equal(r0["balancer"][k], r1["balancer"][k]) for k in r0["balancer"])
    assert all(torch.equal(a, b) for a, b in zip(r0["params"], r1["params"]))
    assert _same_stats(r0["stats"], r1["stats"])


def _same_stats(a: dict, b: dict) -> bool:
    """Equal numbers, NaN (e.g. a gradient norm that was never probed) equal to NaN."""
    def same(x: float, y: float) -> bool:
        return x == y or (x != x and y != y)

    return a.keys() == b.keys() and all(
        a[n].keys() == b[n].keys() and all(same(a[n][k], b[n][k]) for k in a[n]) for n in a
    )


def test_ddp_matches_one_process_on_the_concatenated_batch(runs):
    (r0, r1), single = runs
    # the global value of each term is the mean of the ranks' values (equal local sizes)
    torch.testing.assert_close((r0["raw"] + r1["raw"]) / 2, single["raw"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r0["weights"], single["weights"], rtol=1e-5, atol=1e-7)
    for k in single["balancer"]:
        torch.testing.assert_close(r0["balancer"][k], single["balancer"][k], rtol=1e-5, atol=1e-7)
    for a, b in zip(r0["params"], single["params"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_synced_statistics_equal_those_of_one_process(runs):
    (r0, _), single = runs
    for name in single["names"] + ["total"]:
        synced, alone = r0["stats"][name], single["stats"][name]
        assert synced["count"] == WORLD * alone["count"] == WORLD * STEPS
        for key in ("mean", "weight"):
            assert synced[key] == pytest.approx(alone[key], rel=1e-5), (name, key)
