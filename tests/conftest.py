"""Shared test settings: one torch thread per worker (CI runs two workers on two cores), a
hypothesis profile without deadlines, since shared CI machines have noisy timing, and dynamo's
caches cleared after each test (every compiled loss adds graphs to the one ``Loss.forward``,
whose recompile limit the tests of a worker would otherwise share)."""

import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)

settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    yield
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()
