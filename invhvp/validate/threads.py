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

__all__ = [
    "physical_cores",
    "limit_threads",
    "thread_report",
    "passive_openmp",
    "other_runnable",
    "ThreadLimit",
]


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


def other_runnable(samples: int = 3, interval: float = 0.005) -> int:
    """Runnable threads of other processes right now (median of ``samples`` readings; Linux).

    ``procs_running`` of ``/proc/stat`` minus this process's threads in state ``R``.  A job that
    wants a core counts even when it is niced or momentarily descheduled, which CPU-time
    shares would miss.  0 where ``/proc`` is not available.
    """
    import time

    vals = []
    for i in range(samples):
        try:
            with open("/proc/stat", encoding="ascii") as f:
                total = next(int(line.split()[1]) for line in f if line.startswith("procs_running"))
            own = 0
            for tid in os.listdir("/proc/self/task"):
                try:
                    with open(f"/proc/self/task/{tid}/stat", encoding="ascii", errors="replace") as f:
                        own += f.read().rsplit(")", 1)[1].split()[0] == "R"
                except OSError:  # the thread ended meanwhile
                    pass
        except (OSError, StopIteration, ValueError, IndexError):  # pragma: no cover - not Linux
            return 0
        vals.append(max(total - own, 0))
        if i + 1 < samples:
            time.sleep(interval)
    return int(sorted(vals)[len(vals) // 2])


class ThreadLimit:
    """The thread limit of a run: fixed, or adapted to the load before each work item.

    Attributes
    ----------
    limit : int
        The most threads ever used (``--threads``, or the physical cores).
    adaptive : bool
        Re-check the load before each item (:meth:`adapt`): use ``limit`` minus the other
        processes' runnable threads, at least 1.
    current : int
        Threads in force now.
    report : list of dict
        :func:`thread_report` when the limit was first applied.
    """

    def __init__(self, limit: int, adaptive: bool, torch, limiter):
        self.limit, self.adaptive, self._torch, self._limiter = limit, adaptive, torch, limiter
        self.current = limit
        self.report: list = []
        self.changes: list = []  # the thread counts in force, in order (each change once)
        self._checked = float("-inf")

    def set(self, n: int) -> int:
        """Limit torch and every BLAS/OpenMP pool to ``n`` threads now; return ``n``."""
        from threadpoolctl import threadpool_limits

        n = max(1, min(int(n), self.limit))
        if n != self.current:
            threadpool_limits(limits=n)  # applies at once; the outer limiter restores at the end
            if self._torch is not None:
                self._torch.set_num_threads(n)
            self.current = n
        return n

    def adapt(self, min_interval: float = 1.0) -> int:
        """With ``adaptive``: ``limit`` minus the other runnable threads (at least 1); the threads in force.

        The load is read at most once per ``min_interval`` seconds (a reading takes ~10 ms).
        """
        import time

        if not self.adaptive or time.monotonic() - self._checked < min_interval:
            return self.current
        self._checked = time.monotonic()
        n = self.set(self.limit - other_runnable())
        if not self.changes or self.changes[-1] != n:
            self.changes.append(n)
        return n


@contextmanager
def limit_threads(n: int, adaptive: bool = False):
    """Run the body with at most ``n`` compute threads in torch and in every BLAS/OpenMP pool.

    numpy, scipy and torch are imported first, so that the pools they load are limited too
    (threadpoolctl only sees libraries already loaded).  With ``adaptive`` the body may lower
    (and raise again, up to ``n``) the limit through the yielded :class:`ThreadLimit`: beside
    one CPU-bound job on 2 cores, 2000 products of a 512×512 by 512×21 matrix took 5.2–6.5 s
    with 2 OpenBLAS threads and 0.6 s with one (threads waiting on a descheduled partner).

    Parameters
    ----------
    n : int
        Thread count, at least 1.
    adaptive : bool

    Yields
    ------
    ThreadLimit
        ``report`` is :func:`thread_report` taken inside the limit (recorded in ``settings.json``).
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
        with threadpool_limits(limits=n) as limiter:
            lim = ThreadLimit(n, adaptive, torch, limiter)
            lim.report = thread_report()
            lim.adapt()
            yield lim
    finally:
        if torch is not None and old is not None:
            torch.set_num_threads(old)
