"""Shared test settings: one torch thread per worker (CI runs two workers on two cores) and a
hypothesis profile without deadlines, since shared CI machines have noisy timing."""

import os

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)

settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
