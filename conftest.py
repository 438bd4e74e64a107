"""Collection without optional dependencies: with no torch, its modules and tests are skipped."""

import importlib.util

collect_ignore_glob = []
if importlib.util.find_spec("torch") is None:  # pragma: no cover - CI installs torch
    collect_ignore_glob += [
        "invhvp/adapters/*",
        "invhvp/validate/*",
        "invhvp/interop/_pydvl_curvature.py",
        "invhvp/interop/_torchfunc.py",
        "tests/test_adapter_*.py",
        "tests/test_validate.py",
    ]
