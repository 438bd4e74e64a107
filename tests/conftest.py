"""Shared test configuration: the deterministic hypothesis profile used in CI.

Profiles (``HYPOTHESIS_PROFILE``): ``ci`` (default; derandomized, 25 examples per property,
reproducible run to run) and ``dev`` (random, 200 examples per property: a longer search to
run before a release, about 10× the time of the property tests).  Without torch installed the
torch tests are skipped (see ``tests/cases.py`` and the root ``conftest.py``).
"""

import os

import pytest
from hypothesis import HealthCheck, settings

try:
    import torch
except ImportError:  # pragma: no cover - CI installs torch
    torch = None

if torch is not None:
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
settings.register_profile("dev", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))



@pytest.fixture(scope="session")
def validate_smoke(tmp_path_factory):
    """One ``invhvp validate --smoke`` report folder shared by the validate tests (about 30 s).

    Digits at n = 100, m = 16 (ranks 1, 2) and MiniLM at rank 1 (n = 24, m = 6), one thread.
    """
    from invhvp.cli import main

    out = tmp_path_factory.mktemp("validate_report")
    argv = ["validate", "--smoke", "--out", str(out), "--no-progress", "--seed", "3", "--threads", "1"]
    argv += ["--n-train", "100", "--n-test", "16", "--minilm-ranks", "1"]
    assert main(argv) == 0
    return out
