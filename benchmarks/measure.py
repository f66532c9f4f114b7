"""Timing and memory of one forward + backward, measured the same way for every variant.

Time: variants run interleaved, in a shuffled order each round; a sample is the mean of
``calls`` back-to-back steps, as wall-clock time and as CPU time of the process; the result is
the median over rounds, and a ratio is the median over rounds of the per-round ratio (both
variants measured within the same seconds, so load from other processes affects them alike).

Memory ("peak"): the CPU allocator reports every allocation and free to the PyTorch profiler
(``profile_memory=True``), including those inside ``torch.compile``'d kernels. Peak is the
largest number of bytes allocated at any moment during one forward + backward, counted from
just before the forward (the inputs, which exist before, are not counted; the gradient of
``pred``, which exists after, is). "Held" is what is still allocated when the forward
returns: the tensors saved for backward plus the outputs.

>>> import torch
>>> from benchmarks.measure import memory
>>> p = torch.randn(1000, requires_grad=True)
>>> m = memory(lambda: (p.exp() * 2).sum(), lambda: None)
>>> m.held >= 4000, m.peak >= 8000     # exp saves its output; backward makes two gradients
(True, True)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import random
import sys
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["Memory", "memory", "interleaved", "calls_for"]


@dataclass(frozen=True)
class Memory:
    peak: int  # bytes
    held: int  # bytes alive between forward and backward


def _allocations(prof) -> list[tuple[int, int]]:
    """(time, signed bytes) of every allocation (+) and free (-) the profiler saw."""
    out: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        fields = node.extra_fields
        if type(fields).__name__.endswith("Allocation"):
            out.append((node.start_time_ns, int(fields.alloc_size)))
        stack.extend(node.children)
    out.sort()
    return out


def _running(allocs: list[tuple[int, int]], start: int) -> tuple[int, int]:
    """(highest running total, final total) starting from ``start`` bytes."""
    level = peak = start
    for _, size in allocs:
        level += size
        peak = max(peak, level)
    return peak, level


def memory(forward: Callable[[], torch.Tensor], reset: Callable[[], None]) -> Memory:
    """Peak and held bytes of ``forward()`` followed by ``.backward()`` of its result.

    ``reset()`` runs first, outside the measurement (e.g. ``pred.grad = None``).
    """
    reset()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as forward_prof:
        loss = forward()
    fwd_peak, held = _running(_allocations(forward_prof), 0)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as backward_prof:
        loss.backward()
    bwd_peak, _ = _running(_allocations(backward_prof), held)
    return Memory(peak=max(fwd_peak, bwd_peak), held=held)


def calls_for(step: Callable[[], object], budget_s: float = 0.02, most: int = 200) -> int:
    """How many back-to-back calls make one sample last about ``budget_s`` (timer noise)."""
    start = time.perf_counter()
    step()
    one = max(time.perf_counter() - start, 1e-6)
    return max(1, min(most, int(budget_s / one)))


def interleaved(
    steps: dict[str, Callable[[], object]], rounds: int, calls: dict[str, int], seed: int = 0
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per call of each step, ``rounds`` samples each, in a shuffled order per round:
    ``(wall clock, CPU time of this process)``. On a busy machine the CPU time is the steadier
    of the two (time spent waiting for a core is not in it); with one torch thread it is the
    cost of the call itself."""
    order = list(steps)
    rng = random.Random(seed)
    wall: dict[str, list[float]] = {name: [] for name in order}
    cpu: dict[str, list[float]] = {name: [] for name in order}
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            fn, n = steps[name], calls[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                fn()
            cpu[name].append((time.process_time() - start_cpu) / n)
            wall[name].append((time.perf_counter() - start) / n)
    return wall, cpu


def median_ratio(samples: dict[str, list[float]], name: str, base: str) -> float:
    """Median over rounds of ``samples[name][r] / samples[base][r]``."""
    return statistics.median(a / b for a, b in zip(samples[name], samples[base]))


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse instead of returning each large
    tensor to the system (mmap/munmap: every call then pays page faults for every big tensor,
    which dominates and scatters the large-size times). A caching allocator, as on CUDA, behaves
    like this. Returns whether it applied (glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False
