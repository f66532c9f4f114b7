"""summary(sync=True) / stats(sync=True) / as_dict(sync=True) over two gloo processes: equal
on both ranks and equal to the statistics of both ranks' values computed by hand."""

import json
import math
import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import lossdsl
from rendezvous import rendezvous

BETA = 0.99


def rank_batches(rank):
    """Rank 0 makes 3 calls, rank 1 makes 4, the first with a NaN in pred."""
    gen = torch.Generator().manual_seed(100 + rank)
    batches = []
    for i in range(3 + rank):
        pred, target = torch.randn(5, generator=gen) * (rank + 1), torch.randn(5, generator=gen)
        if rank == 1 and i == 0:
            pred[2] = math.nan
        batches.append((pred, target))
    return batches


def worker(rank, meet, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=meet, rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        crit = lossdsl.compile("0.7*mse + 0.3*mae", nonfinite="zero_term")
        for pred, target in rank_batches(rank):
            crit(pred, target)
        result = {
            "stats": crit.monitor.stats(sync=True),
            "summary": crit.monitor.summary(sync=True),
            "as_dict": crit.monitor.as_dict(sync=True),
            "local": crit.monitor.stats(),
        }
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()



@pytest.mark.skipif(not dist.is_available(), reason="torch built without distributed")
def test_synced_statistics_are_global_and_equal_on_both_ranks(tmp_path):
    mp.spawn(worker, args=(rendezvous(tmp_path), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0]["summary"] == results[1]["summary"]
    assert results[0]["stats"] == results[1]["stats"]
    assert results[0]["as_dict"] == results[1]["as_dict"]
    assert results[0]["local"] != results[1]["local"]  # the ranks did see different data

    per_rank = [
        [(F.mse_loss(p, t).item(), F.l1_loss(p, t).item()) for p, t in rank_batches(r)] for r in range(2)
    ]
    stats = results[0]["stats"]
    for j, name in enumerate(("mse", "mae")):
        values = [v[j] for rank in per_rank for v in rank]
        finite = [v for v in values if math.isfinite(v)]
        s = stats[name]
        assert s["mean"] == pytest.approx(sum(finite) / len(finite), rel=1e-6)
        assert s["min"] == pytest.approx(min(finite), rel=1e-6)
        assert s["max"] == pytest.approx(max(finite), rel=1e-6)
        assert s["nonfinite"] == len(values) - len(finite) == 1
        assert results[0]["as_dict"][f"loss/{name}"] == pytest.approx(sum(finite) / len(finite), rel=1e-6)
        # the EMAs of the ranks combine by their bias-correction weights
        emas, norms = [], []
        for rank in per_rank:
            ema = norm = 0.0
            for v in (v[j] for v in rank):
                if math.isfinite(v):
                    ema, norm = BETA * ema + (1 - BETA) * v, BETA * norm + (1 - BETA)
            emas.append(ema)
            norms.append(norm)
        assert s["ema"] == pytest.approx(sum(emas) / sum(norms), rel=1e-6)
    assert stats["total"]["count"] == 7
