"""Pieces of :func:`invhvp.scale.influence_scores`: the solver choice, timed passes, the output file."""

from __future__ import annotations

import os
import time

import numpy as np

from .. import _checks as C
from ..distributed import all_gather_rows, all_reduce_sum, world
from ..errors import InputError, OperatorTooLargeError, UnsupportedOperatorError
from ..solvers.base import Solver
from ..solvers.datainf import DataInf
from ..solvers.exact import Exact
from ._blocks import route_for
from ._source import place

__all__ = ["choose", "too_large", "passer", "open_out", "gathered"]


def choose(solver, n, sizes, max_dense):
    """``(kind, Exact instance or None, reason)``."""
    fits = all(route_for(n, d, max_dense) is not None for d in sizes)
    if solver is None:
        if fits:
            return (
                "exact",
                Exact(),
                "Exact: every block has a primal (d×d) or dual (n×n) route within max_dense",
            )
        return "datainf", None, "DataInf: a block is too wide for an exact route (see max_dense)"
    if isinstance(solver, str):
        C.choice(solver, "solver", ("exact", "datainf"))
        return solver, (Exact() if solver == "exact" else None), None
    if isinstance(solver, Exact):
        return "exact", solver, None
    if isinstance(solver, DataInf):
        return "datainf", None, None
    if isinstance(solver, Solver):
        raise UnsupportedOperatorError(
            f"solver: influence_scores streams sums over rows, which Exact and DataInf need; {solver.name} "
            "does not reduce to such sums. Use 'exact' or 'datainf', or invhvp.influence_matrix on in-memory data"
        )
    raise InputError(
        f"solver: expected None, 'exact', 'datainf', invhvp.Exact() or invhvp.DataInf(), got {solver!r}"
    )


def too_large(sizes, n, max_dense):
    bad = [(j, d) for j, d in enumerate(sizes) if route_for(n, d, max_dense) is None]
    j, d = bad[0]
    return OperatorTooLargeError(
        f"solver: no exact route fits block {j} (d = {d}, n = {n}, max_dense = {max_dense}): the primal "
        f"route needs d <= n and a {d}×{d} Gram, the dual route n < d, an {n}×{n} Gram and the {n}×{d} rows "
        f"in memory. Use solver='datainf' (memory d·m per block), or raise max_dense if {d}×{d} float64 "
        f"({d * d * 8 / 2**20:.0f} MiB per block) fits"
    )


def passer(src, chunk_rows, progress, log):
    rank, _ = world()

    def run(name, fn):
        bar = None
        if progress and rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=src.n_chunks(chunk_rows), desc=f"invhvp {name}", unit="chunk")
        t0, rows = time.perf_counter(), 0
        for sl, blocks in src.chunks(chunk_rows):
            fn(sl, blocks)
            rows += sl.stop - sl.start
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        log.append(
            {
                "name": name,
                "seconds": time.perf_counter() - t0,
                "rows": rows,
                "bytes_read": rows * src.row_bytes,
            }
        )

    return run


def open_out(out, m, n, dtype):
    path = os.fspath(out)
    rank, _ = world()
    if all_reduce_sum(int(os.path.exists(path))):
        raise InputError(f"out: {path!r} already exists; remove it or choose another path")
    if rank == 0:
        np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(m, n)).flush()
    all_reduce_sum(0)  # barrier: the header is written before the other ranks open the file
    return np.load(path, mmap_mode="r+")


def gathered(xp, local, src, gather):
    if not gather:
        return local
    return place(xp, all_gather_rows(local), src.spans, src.first)
