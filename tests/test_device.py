"""Device and dtype follow the inputs; torch.compile works (DESIGN.md §9)."""

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import lossdsl

CARD = "0.7*huber(delta=1) + 0.3*temporal_diff"
WITH_SCHEDULE = "0.7*huber(delta=1) + linear(0, 1, steps=10)*temporal_diff + mse*mae + watch(mae)"


class DeviceRecorder(TorchFunctionMode):
    """Records the device of every tensor that goes into or comes out of a torch call,
    factory functions such as torch.tensor(...) included."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in tree_flatten((args, kwargs, out))[0]:
            if isinstance(x, torch.Tensor):
                self.seen.add((getattr(func, "__name__", str(func)), x.device.type))
        return out


@pytest.mark.parametrize("source", [CARD, WITH_SCHEDULE])
def test_meta_device_has_no_hidden_cpu_tensors(source):
    crit = lossdsl.compile(source).to("meta")
    pred = torch.randn(4, 6, 3, device="meta", requires_grad=True)
    target = torch.randn(4, 6, 3, device="meta")
    with DeviceRecorder() as recorder:
        total = crit(pred, target, step=3)
        terms, weights = crit.terms, crit.weights
        total.backward()
    assert recorder.seen, "the recorder saw no torch calls"
    off_meta = {call for call, device in recorder.seen if device != "meta"}
    assert not off_meta, f"tensors off the meta device in: {sorted(off_meta)}"
    assert total.device.type == "meta" and total.shape == ()
    assert pred.grad is not None and pred.grad.device.type == "meta"
    assert all(t.device.type == "meta" for t in [*terms.values(), *weights.values()])
    assert all(b.device.type == "meta" for b in crit.buffers())


def _card_by_hand(pred, target):
    huber = F.huber_loss(pred, target, delta=1.0)
    temporal = (torch.diff(pred, dim=1) - torch.diff(target, dim=1)).abs().mean()
    return 0.7 * huber + 0.3 * temporal


def _inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(4, 6, 3, generator=g).to(dtype).requires_grad_(),
        torch.randn(4, 6, 3, generator=g).to(dtype),
    )


def test_float64_in_float64_out():
    pred, target = _inputs(torch.float64)
    crit = lossdsl.compile(WITH_SCHEDULE)
    total = crit(pred, target, step=5)
    assert total.dtype == torch.float64
    assert all(t.dtype == torch.float64 for t in crit.terms.values())
    total.backward()
    assert pred.grad.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("source", [CARD, WITH_SCHEDULE])
def test_half_precision_in_half_precision_out(dtype, source):
    pred, target = _inputs(dtype)
    crit = lossdsl.compile(source)
    total = crit(pred, target, step=5)
    assert total.dtype == dtype
    total.backward()
    assert pred.grad.dtype == dtype and torch.isfinite(pred.grad).all()
    if source == CARD:
        # computed in float32 inside: close to the float64 formula at half precision
        p64, t64 = pred.detach().double(), target.double()
        assert float(total.detach()) == pytest.approx(float(_card_by_hand(p64, t64)), rel=1e-2)


@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager():
    # one small inductor compile (a term, a schedule read from the step tensor, a sum)
    crit = lossdsl.compile("0.7*huber(delta=1) + linear(0, 1, steps=10)*temporal_diff")
    pred, target = _inputs(torch.float64, seed=1)
    step = torch.tensor(4)
    eager = crit(pred, target, step=step)
    (eager_grad,) = torch.autograd.grad(eager, pred)
    compiled = torch.compile(crit, fullgraph=True)
    p2 = pred.detach().clone().requires_grad_()
    value = compiled(p2, target, step=step)
    (grad,) = torch.autograd.grad(value, p2)
    torch.testing.assert_close(value, eager, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-12, atol=1e-12)
    assert float(crit.weights["temporal_diff"]) == pytest.approx(0.4)


def test_a_changing_step_does_not_recompile():
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    crit = lossdsl.compile(WITH_SCHEDULE)
    compiled = torch.compile(crit, fullgraph=True, backend=counting_backend)
    pred, target = _inputs(torch.float64, seed=2)
    values = []
    for s in (0, 5, 10):
        values.append(float(compiled(pred, target, step=torch.tensor(s)).detach()))
        assert float(crit.weights["temporal_diff"]) == pytest.approx(s / 10)
    assert len(graphs) == 1
    # the schedule moved the value: 0.7*huber + tau*temporal + mse*mae
    huber = float(crit.terms["huber"])
    temporal = float(crit.terms["temporal_diff"])
    product = float(crit.terms["mse"] * crit.terms["mae"])
    assert values[2] == pytest.approx(0.7 * huber + temporal + product, rel=1e-10)
    assert values[0] == pytest.approx(0.7 * huber + product, rel=1e-10)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_and_dtype_follow_the_inputs():
    crit = lossdsl.compile(WITH_SCHEDULE).to("cuda")
    pred, target = (t.detach().cuda().requires_grad_() for t in _inputs(torch.float64, seed=3))
    total = crit(pred, target, step=5)
    assert total.device.type == "cuda" and total.dtype == torch.float64
    cpu = lossdsl.compile(WITH_SCHEDULE)(pred.detach().cpu(), target.detach().cpu(), step=5)
    torch.testing.assert_close(total.cpu(), cpu, rtol=1e-12, atol=1e-12)
    total.backward()
    assert pred.grad.device.type == "cuda"
