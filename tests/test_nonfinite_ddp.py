"""Non-finite terms and rank-local calls under torch.distributed (DESIGN.md §6, §8, §9): two CPU
processes (gloo).

- ``raise``: a NaN on rank 1 only raises on both ranks at the same step, so a loop that
  catches the error and skips the batch keeps the ranks' collectives (DDP's gradient
  all-reduce, the balancer's) in step; the balancer's state and weights stay identical.
- ``zero_term``: a bad term on rank 1 only stops the balancer's update on both ranks.
- A call on one rank alone: in eval mode or without gradients it needs no other rank; a
  training call waits at the balancer's all-reduce until the process group's timeout, then
  raises the backend's error.
"""

import os
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import lossdsl
from rendezvous import rendezvous

WORLD, STEPS, BAD_STEP, BAD_RANK = 2, 5, 2, 1
SHORT_TIMEOUT = 3.0  # seconds: the process group of the rank-local part
# spiky outside the balancer: only the guard's all-reduce can tell rank 0 about the NaN
RAISING = 'balance(mse, mae, method="relobralo", expected_rho=0.5, alpha=0.7) + 0.5*spiky'
ZEROING = 'balance(mse, spiky, method="ema", beta=0.8)'
BETA = 0.8


def spiky(pred, target, gate):
    """sqrt(gate * e^2): NaN where gate < 0."""
    return torch.sqrt(gate * (pred - target) ** 2 + 1e-6).mean()


def _batch(rank: int, step: int):
    gen = torch.Generator().manual_seed(100 * rank + step)
    x, y = torch.randn(8, 3, generator=gen), torch.randn(8, 2, generator=gen)
    gate = torch.full((8, 2), -1.0 if (rank, step) == (BAD_RANK, BAD_STEP) else 1.0)
    return x, y, gate


def _raising(rank: int) -> dict:
    """Train under DDP, skipping the batch whose loss raises."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    net = DistributedDataParallel(model)
    crit = lossdsl.compile(RAISING, terms={"spiky": spiky})
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    raised, weights = {}, []
    for step in range(STEPS):
        x, y, gate = _batch(rank, step)
        opt.zero_grad()
        try:
            loss = crit(net(x), y, gate=gate, step=step)
        except lossdsl.NonFiniteLossError as err:
            raised[step] = str(err)
            continue
        loss.backward()
        opt.step()
        weights.append(torch.stack([crit.weights[n] for n in crit.term_names]))
    return {
        "raised": raised,
        "weights": torch.stack(weights),
        "balancer": {k: v.clone() for k, v in crit.balancers.state_dict().items()},
        "params": [p.detach().clone() for p in model.parameters()],
        "spiky_nonfinite": crit.monitor.stats()["spiky"]["nonfinite"],
    }


def _zeroing(rank: int) -> dict:
    crit = lossdsl.compile(ZEROING, terms={"spiky": spiky}, nonfinite="zero_term")
    raw = []
    for step in range(4):
        x, y, gate = _batch(rank, step)
        pred = x[:, :2].clone().requires_grad_(True)
        crit(pred, y, gate=gate).backward()
        assert torch.isfinite(pred.grad).all()
        raw.append(torch.stack([crit.terms["mse"], crit.terms["spiky"]]))
    return {"raw": torch.stack(raw), "ema": crit.balancers[0].ema.clone(), "count": int(crit.balancers[0].count)}


def _alone(rank: int) -> dict:
    """Rank 0 calls a balancer loss alone; rank 1 makes no call and waits."""
    if rank != 0:
        time.sleep(SHORT_TIMEOUT + 3)  # alive, so rank 0 waits for it, not for a closed socket
        return {}
    crit = lossdsl.compile('balance(mse, mae, method="ema")', nonfinite="raise")
    pred, target = torch.randn(4, 2, requires_grad=True), torch.zeros(4, 2)
    out = {}
    start = time.monotonic()
    crit.eval()
    crit(pred, target)
    try:  # a rank-local NaN raises here, on this rank only
        crit(torch.full((4, 2), float("nan")), target)
    except lossdsl.NonFiniteLossError:
        out["eval_nan_raised"] = True
    crit.train()
    with torch.no_grad():
        crit(pred, target)
    out["local_seconds"] = time.monotonic() - start
    before = crit.balancers[0].ema.clone()
    start = time.monotonic()
    try:
        crit(pred, target)  # a training call: the balancer all-reduces
    except RuntimeError as err:  # gloo's timeout (torch.distributed.DistBackendError)
        out["training_error"] = type(err).__name__
    out["training_seconds"] = time.monotonic() - start
    out["state_kept"] = torch.equal(crit.balancers[0].ema, before)
    return out


def worker(rank: int, meets: tuple[str, str], out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=meets[0], rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        result = {"raising": _raising(rank), "zeroing": _zeroing(rank)}
    finally:
        dist.destroy_process_group()
    # a second group with a short timeout, for the call made on one rank alone
    dist.init_process_group("gloo", init_method=meets[1], rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=SHORT_TIMEOUT))
    try:
        result["alone"] = _alone(rank)
    finally:
        try:
            dist.destroy_process_group()
        except RuntimeError:
            pass  # the group that timed out may refuse a clean shutdown
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))



pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch built without distributed")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_nonfinite")
    mp.spawn(worker, args=((rendezvous(out), rendezvous(out)), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def test_a_nan_on_one_rank_raises_on_every_rank(ranks):
    r0, r1 = ranks[0]["raising"], ranks[1]["raising"]
    assert list(r0["raised"]) == list(r1["raised"]) == [BAD_STEP]
    assert "term 'spiky' is nan" in r1["raised"][BAD_STEP]
    here = r0["raised"][BAD_STEP]
    assert "term 'spiky' is not finite on another rank" in here and "(on 1 of 2 ranks)" in here
    # the call that raised is still recorded, where the NaN was
    assert (r0["spiky_nonfinite"], r1["spiky_nonfinite"]) == (0, 1)


def test_after_the_skipped_batch_the_ranks_stay_in_step(ranks):
    r0, r1 = ranks[0]["raising"], ranks[1]["raising"]
    assert r0["weights"].shape[0] == STEPS - 1
    assert torch.equal(r0["weights"], r1["weights"])
    assert r0["balancer"].keys() == r1["balancer"].keys()
    assert all(torch.equal(r0["balancer"][k], r1["balancer"][k]) for k in r0["balancer"])
    # its own terms were finite on both ranks: the raising call updated it on both
    assert int(r0["balancer"]["0.count"]) == STEPS
    assert all(torch.equal(a, b) for a, b in zip(r0["params"], r1["params"]))


def test_zero_term_on_one_rank_stops_the_update_on_every_rank(ranks):
    z0, z1 = ranks[0]["zeroing"], ranks[1]["zeroing"]
    assert torch.isnan(z1["raw"][BAD_STEP, 1]) and torch.isfinite(z0["raw"]).all()
    assert z0["count"] == z1["count"] == 3 and torch.equal(z0["ema"], z1["ema"])
    # the EMA of the ranks' averaged values over the good calls only
    good = [s for s in range(4) if s != BAD_STEP]
    mean = [(z0["raw"][s] + z1["raw"][s]).double() / 2 for s in good]
    want = sum(BETA ** (len(good) - 1 - t) * (1 - BETA) * m for t, m in enumerate(mean))
    torch.testing.assert_close(z0["ema"].double(), want, rtol=1e-5, atol=0)


def test_eval_and_no_grad_calls_run_on_one_rank_alone(ranks):
    alone = ranks[0]["alone"]
    assert alone["eval_nan_raised"]
    assert alone["local_seconds"] < SHORT_TIMEOUT  # no collective waited for the other rank


def test_a_training_call_on_one_rank_alone_fails_at_the_timeout(ranks):
    alone = ranks[0]["alone"]
    assert alone["training_error"]  # raised, not hung
    assert SHORT_TIMEOUT * 0.8 <= alone["training_seconds"] < SHORT_TIMEOUT + 30
    assert alone["state_kept"]
