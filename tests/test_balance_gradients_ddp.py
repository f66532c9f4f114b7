"""Gradient balancers under torch.distributed (DESIGN.md §6.1): two CPU processes with gloo,
each with its own batch, get identical weights: those of the ranks' averaged gradient
statistics (``lra``, ``gradnorm``) or of the ranks' averaged Jacobian (``upgrad``)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import lossdsl
from rendezvous import rendezvous

TWO = 'balance(mse(pred=a, target=ya), mse(pred=b, target=yb), method="{m}")'
STEPS = 3



def _model() -> nn.Module:
    torch.manual_seed(0)  # the same initial model on every rank, as DDP would broadcast
    return nn.ModuleDict({"trunk": nn.Sequential(nn.Linear(3, 5), nn.Tanh()), "a": nn.Linear(5, 1), "b": nn.Linear(5, 1)})


def _local_jacobian(model, x, ya, yb) -> torch.Tensor:
    h = model["trunk"](x)
    terms = [F.mse_loss(model["a"](h), ya), F.mse_loss(model["b"](h), yb)]
    shared = list(model["trunk"].parameters())
    return torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(t, shared, retain_graph=True)]) for t in terms])


def _worker(rank: int, world: int, meet: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=meet, rank=rank, world_size=world)
    try:
        results = {}
        for method in ("lra", "gradnorm", "upgrad"):
            gen = torch.Generator().manual_seed(100 + rank)  # each rank its own local batches
            model, crit = _model(), lossdsl.compile(TWO.format(m=method))
            weights, jacobians, grads, terms = [], [], [], []
            for _ in range(STEPS):
                x = torch.randn(8, 3, generator=gen)
                ya, yb = x[:, :1], -x[:, 1:2] * 2
                jacobians.append(_local_jacobian(model, x, ya, yb))
                h = model["trunk"](x)
                loss = crit(a=model["a"](h), ya=ya, b=model["b"](h), yb=yb, shared=model["trunk"])
                model.zero_grad()
                if method == "upgrad":
                    crit.backward()
                else:
                    loss.backward()
                terms.append(torch.stack([crit.terms["mse"], crit.terms["mse_2"]]))
                weights.append(torch.stack([crit.weights["mse"], crit.weights["mse_2"]]))
                grads.append(torch.cat([p.grad.reshape(-1) for p in model["trunk"].parameters()]))
                with torch.no_grad():  # no DDP wrapper: each rank steps on its own gradient
                    for p in [*model.parameters(), *crit.parameters()]:  # gradnorm's weights too
                        p -= 0.1 * p.grad
            results[method] = {k: torch.stack(v) for k, v in
                               dict(weights=weights, jacobians=jacobians, grads=grads, terms=terms).items()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_gradients")
    mp.spawn(_worker, args=(2, rendezvous(out), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("method", ["lra", "gradnorm", "upgrad"])
def test_ranks_with_different_batches_get_identical_weights(ranks, method):
    r0, r1 = ranks[0][method], ranks[1][method]
    assert not torch.allclose(r0["jacobians"][0], r1["jacobians"][0])  # the local gradients differ
    assert torch.equal(r0["weights"], r1["weights"])  # the weights do not
    assert not torch.equal(r0["weights"][-1], torch.ones(2))


def test_lra_reads_the_ranks_averaged_statistics(ranks):
    j0, j1 = ranks[0]["lra"]["jacobians"][0], ranks[1]["lra"]["jacobians"][0]
    # the first call: lambda_2 = 0.9 + 0.1 * mean_r max|g_1| / mean_r mean|g_2|
    max1 = (j0[0].abs().max() + j1[0].abs().max()) / 2
    mean2 = (j0[1].abs().mean() + j1[1].abs().mean()) / 2
    assert float(ranks[0]["lra"]["weights"][0, 1]) == pytest.approx(float(0.9 + 0.1 * max1 / mean2), rel=1e-5)


def test_upgrad_aggregates_the_ranks_averaged_jacobian(ranks):
    torchjd = pytest.importorskip("torchjd")
    j0, j1 = ranks[0]["upgrad"]["jacobians"][0], ranks[1]["upgrad"]["jacobians"][0]
    want = torchjd.aggregation.UPGrad()((j0 + j1) / 2)
    for r in ranks:
        assert torch.allclose(r["upgrad"]["grads"][0], want, atol=1e-5)
