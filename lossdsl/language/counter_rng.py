"""A counter-based random generator: plain integer maths on tensors, no global RNG.

Balancers that draw random numbers (``relobralo``'s ``rho``) keep the generator's whole
state, a key and a counter, in their buffers: a resumed run draws the same numbers, on any
device, under ``torch.compile``, and the global RNG is never touched.

>>> import torch
>>> u = counter_uniform(seed_key(7, torch), torch.arange(1000))
>>> bool((u >= 0).all() and (u < 1).all()), abs(float(u.mean()) - 0.5) < 0.05
(True, True)
"""

from __future__ import annotations

from typing import Any


__all__ = ["counter_uniform", "counter_seed", "seed_key"]

_MASK32 = 0xFFFFFFFF


def _mul32(x: Any, c: int) -> Any:
    """``(x * c) mod 2**32`` for ``0 <= x < 2**32`` in int64 without overflow (16-bit halves)."""
    low, high = x & 0xFFFF, x >> 16
    return (low * c + (((high * c) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: Any) -> Any:
    # a 32-bit integer finaliser (xorshift-multiply rounds): every input bit affects every output bit
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def seed_key(seed: int, t: Any) -> Any:
    """The generator's key for ``seed``: an int64 0-dim tensor (``t``: the torch module)."""
    return _mix32(t.tensor(int(seed) & _MASK32, dtype=t.long))


def counter_seed(key: Any, counter: Any) -> Any:
    """A 32-bit integer from a key and a counter (int64 tensors): the seed of one draw of a
    library that takes its random numbers from torch's own generators (seeded, then restored)."""
    return _mix32(_mix32(counter & _MASK32) ^ (key & _MASK32))


def counter_uniform(key: Any, counter: Any) -> Any:
    """A uniform number in ``[0, 1)`` from a key and a counter (int64 tensors), in float32."""
    return (counter_seed(key, counter) >> 8).float() * (1.0 / (1 << 24))
