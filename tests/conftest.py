"""Shared test configuration: the deterministic hypothesis profile used in CI."""

import os

import torch
from hypothesis import HealthCheck, settings

# The test problems are tiny: intra-op threads only add spin-wait overhead, which becomes
# seconds per test when the two CI cores are shared.
torch.set_num_threads(1)

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=25,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
