"""The benchmarked hand-written losses compute what the lossdsl programs compute, so that
BENCHMARKS.md's ratios compare the same arithmetic."""

import sys
from pathlib import Path

import pytest
import torch

import lossdsl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.programs import PROGRAMS  # noqa: E402


@pytest.mark.parametrize("key", sorted(PROGRAMS))
def test_the_hand_written_loss_equals_the_program(key):
    program = PROGRAMS[key]
    hand, crit = program.hand(), lossdsl.compile(program.source)
    # a balancer keeps its statistics in float32 buffers, the hand-written one in float64
    rtol = 1e-6 if key == "balance" else 1e-12
    gen = torch.Generator().manual_seed(11)
    for step in (0, 300, 2000):  # before, during and after the schedules' ramps
        pred = (torch.randn(3, 6, 2, generator=gen, dtype=torch.float64) * 5).requires_grad_()
        target = torch.randn(3, 6, 2, generator=gen, dtype=torch.float64)
        expected = hand(pred, target, step)
        (grad_expected,) = torch.autograd.grad(expected, pred)
        got = crit(pred, target, step=step)
        (grad_got,) = torch.autograd.grad(got, pred)
        torch.testing.assert_close(got, expected, rtol=rtol, atol=1e-14)
        torch.testing.assert_close(grad_got, grad_expected, rtol=max(rtol, 1e-10), atol=1e-14)
