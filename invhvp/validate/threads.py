"""Thread limits for a validation run: torch intra-op threads and every BLAS/OpenMP pool.

On a machine shared with other jobs, more compute threads than free cores make BLAS and OpenMP
threads spin-wait on each other (a quick run once took 1,574 s instead of 130 s on 2 cores
beside one other job).  :func:`limit_threads` applies one limit to torch
(``torch.set_num_threads``) and, through :mod:`threadpoolctl`, to every BLAS and OpenMP library
loaded in the process, for the whole run, and restores the previous settings afterwards.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

__all__ = ["physical_cores", "limit_threads", "thread_report", "passive_openmp"]


def passive_openmp() -> bool:
    """Make idle OpenMP threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``), if still possible.

    libgomp (torch's OpenMP) reads the variable when it is loaded, so this acts only before
    torch is imported and only if the user has not set it.  Beside one CPU-bound job on 2 cores,
    150 Adam steps of the digits MLP took 36–47 s with 2 spinning threads, 0.5 s with
    ``PASSIVE`` (0.45 s with 1 thread).

    Returns
    -------
    bool
        Whether ``OMP_WAIT_POLICY`` is ``PASSIVE`` (in force if set before torch was imported).
    """
    import sys

    if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


def physical_cores() -> int:
    """Physical cores available to this process (logical CPUs when that cannot be told).

    Counts distinct ``(physical id, core id)`` pairs of ``/proc/cpuinfo`` among the CPUs of
    this process's affinity mask; falls back to ``psutil.cpu_count(logical=False)`` and then
    to the number of usable logical CPUs.

    Returns
    -------
    int
        At least 1.
    """
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        allowed = None
    n_logical = len(allowed) if allowed else (os.cpu_count() or 1)
    try:
        cores, cpu, phys = set(), None, "0"
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, val = line.partition(":")
                key, val = key.strip(), val.strip()
                if key == "processor":
                    cpu, phys = int(val), "0"
                elif key == "physical id":
                    phys = val
                elif key == "core id" and (allowed is None or cpu in allowed):
                    cores.add((phys, val))
        if cores:
            return max(1, min(len(cores), n_logical))
    except (OSError, ValueError):  # pragma: no cover - no /proc
        pass
    try:  # pragma: no cover - depends on the platform
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return max(1, min(int(n), n_logical))
    except ImportError:  # pragma: no cover
        pass
    return max(1, n_logical)  # pragma: no cover


def thread_report() -> list[dict]:
    """The thread pools loaded in this process and their current sizes (threadpoolctl), plus torch.

    Returns
    -------
    list of dict
        ``{"library", "api", "num_threads"}`` per pool; torch's intra-op pool is
        ``{"library": "torch", "api": "torch", ...}`` when torch is imported.
    """
    import sys

    out = []
    try:
        from threadpoolctl import threadpool_info

        for p in threadpool_info():
            out.append(
                {
                    "library": p.get("prefix") or os.path.basename(p.get("filepath", "")),
                    "api": p.get("user_api"),
                    "num_threads": int(p.get("num_threads", 0)),
                }
            )
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency of scikit-learn
        pass
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        out.append({"library": "torch", "api": "torch", "num_threads": int(torch.get_num_threads())})
    return out


@contextmanager
def limit_threads(n: int):
    """Run the body with at most ``n`` compute threads in torch and in every BLAS/OpenMP pool.

    numpy, scipy and torch are imported first, so that the pools they load are limited too
    (threadpoolctl only sees libraries already loaded).

    Parameters
    ----------
    n : int
        Thread count, at least 1.

    Yields
    ------
    list of dict
        :func:`thread_report` taken inside the limit (recorded in ``settings.json``).
    """
    from invhvp.errors import InputError

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"threads: expected a positive int, got {n!r}")
    import numpy  # noqa: F401 - load OpenBLAS before limiting it
    import scipy.linalg  # noqa: F401

    try:
        import torch
    except ImportError:  # pragma: no cover - the validate extra needs torch
        torch = None
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield thread_report()
    finally:
        if torch is not None and old is not None:
            torch.set_num_threads(old)
