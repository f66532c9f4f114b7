"""Balancers under torch.distributed (DESIGN.md §6, §9): two CPU processes with gloo, each with
its own batch, must compute the same weights, namely those of the ranks' averaged losses."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import lossdsl
from rendezvous import rendezvous
from lossdsl.language.balancers import METHODS as BALANCER_METHODS
from lossdsl.runtime.balancer import Balancer

STATEFUL = {
    "ema": {"beta": 0.8},
    "dwa": {"window": 2},
    "cov": {},
    "softadapt": {"beta": 1.0},
    "relobralo": {"expected_rho": 0.5, "alpha": 0.7},
}
STEPS = 6



def _source(method: str, params: dict) -> str:
    extra = "".join(f", {k}={v}" for k, v in params.items())
    return f'balance(mse, mae, method="{method}"{extra})'


def _worker(rank: int, world: int, meet: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=meet, rank=rank, world_size=world)
    try:
        gen = torch.Generator().manual_seed(100 + rank)  # each rank its own local batches
        results = {}
        for method, params in STATEFUL.items():
            crit = lossdsl.compile(_source(method, params))
            raw, weights = [], []
            for step in range(STEPS):
                pred = torch.randn(16, 4, generator=gen) * (1 + step)
                target = torch.randn(16, 4, generator=gen)
                crit(pred, target)
                raw.append(torch.stack([crit.terms["mse"], crit.terms["mae"]]))
                weights.append(torch.stack([crit.weights["mse"], crit.weights["mae"]]))
            results[method] = (torch.stack(raw), torch.stack(weights))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, rendezvous(out), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("method", list(STATEFUL))
def test_ranks_with_different_batches_get_identical_weights(ranks, method):
    (raw0, w0), (raw1, w1) = ranks[0][method], ranks[1][method]
    assert not torch.allclose(raw0, raw1)  # the local losses differ
    assert torch.equal(w0, w1)  # the weights do not
    # and they are the weights of a single process that sees the averaged losses
    single = Balancer(BALANCER_METHODS[method], 2, STATEFUL[method])
    for step in range(STEPS):
        mean = (raw0[step] + raw1[step]) / 2
        _, weights = single(list(mean.unbind(0)))
        assert torch.allclose(weights, w0[step], rtol=1e-6)


def test_ema_weights_follow_the_formula_on_averaged_losses(ranks):
    (raw0, w0), (raw1, _) = ranks[0]["ema"], ranks[1]["ema"]
    beta, m = 0.8, [0.0, 0.0]
    for step in range(STEPS):
        mean = [(float(a) + float(b)) / 2 for a, b in zip(raw0[step], raw1[step])]
        m = [beta * mi + (1 - beta) * li for mi, li in zip(m, mean)]
        want = [1 / (mi / (1 - beta ** (step + 1)) + 1e-8) for mi in m]
        assert w0[step].tolist() == pytest.approx(want, rel=1e-5)
    # the first step's weight is 1 / (averaged loss), not 1 / (this rank's loss)
    assert not math.isclose(float(w0[0, 0]), 1 / float(raw0[0, 0]), rel_tol=1e-3)
