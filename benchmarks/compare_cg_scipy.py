"""Compare invhvp's block CG with scipy's CG, and Exact (Woodbury) with CG at LoRA scale.

Usage::

    python benchmarks/compare_cg_scipy.py

Part 1: one Dense SPD problem, d = 2000, eigenvalues log-spaced in [0.01, 10], damping 0.1
(κ ≈ 92); 64 right-hand sides.  ``invhvp.CG`` solves all 64 at once; the baseline is 64
separate ``scipy.sparse.linalg.cg`` calls with the same ``rtol`` (scipy's keyword) and
``atol=0``.  Prints both times, their ratio and the largest relative difference between
the solutions.

Part 2: ``LowRankPlusIdentity`` with n = 200, d = 200000 (a 320 MB factor; the d×d matrix
would be 320 GB), damping = 0.1 × mean eigenvalue (the DataInf rule), 8 right-hand sides:
``Exact`` (Woodbury) vs ``CG(rtol=1e-12)``: time, peak memory of the solve (tracemalloc,
which numpy reports to; measured in a second, untimed run) and their relative difference,
which must be ≤ 1e-8.

Times are the minimum over ``REPEATS`` runs in this process.
"""

from __future__ import annotations

import os
import platform
import time
import tracemalloc

import numpy as np
import scipy
import scipy.sparse.linalg

import invhvp as ih

REPEATS = 2


def best_time(fn, repeats=REPEATS):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def peak_mib(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def max_col_reldiff(X, Y):
    return float(np.max(np.linalg.norm(X - Y, axis=0) / np.linalg.norm(Y, axis=0)))


def part1(d=2000, k=64, damping=0.1, rtol=1e-8, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    ev = np.geomspace(1e-2, 10.0, d)
    M = (Q * ev) @ Q.T
    M = (M + M.T) / 2
    B = rng.standard_normal((d, k))
    Md = M + damping * np.eye(d)
    kappa = (ev[-1] + damping) / (ev[0] + damping)
    op = ih.Dense(M)

    t_ih, res = best_time(lambda: ih.solve(op, B, ih.CG(rtol=rtol), damping=damping))

    def scipy_loop():
        cols = []
        for j in range(k):
            x, info = scipy.sparse.linalg.cg(Md, B[:, j], rtol=rtol, atol=0.0)
            if info != 0:
                raise RuntimeError(f"scipy cg column {j}: info={info}")
            cols.append(x)
        return np.stack(cols, axis=1)

    t_sp, X_sp = best_time(scipy_loop)
    X_ref = np.linalg.solve(Md, B)
    print(f"Part 1: Dense SPD d={d}, κ={kappa:.1f} (damping {damping}), k={k} right-hand sides, rtol={rtol}")
    print(
        f"  invhvp CG, 64 rhs at once      : {t_ih:8.3f} s   ({res.n_iter} iterations, {res.n_matvec} matvecs)"
    )
    print(f"  scipy cg, 64 separate solves   : {t_sp:8.3f} s")
    print(f"  ratio scipy / invhvp           : {t_sp / t_ih:8.2f}x")
    print(f"  max rel. difference invhvp vs scipy  : {max_col_reldiff(res.x, X_sp):.2e}")
    print(
        f"  max rel. error invhvp / scipy vs LAPACK: {max_col_reldiff(res.x, X_ref):.2e} / "
        f"{max_col_reldiff(X_sp, X_ref):.2e}"
    )


def part2(n=200, d=200_000, k=8, seed=1):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((n, d))
    B = rng.standard_normal((d, k))
    op = ih.LowRankPlusIdentity(U)
    damping = 0.1 * float(np.sum(U * U)) / (n * d)  # 0.1 × tr(G)/d
    exact = ih.Exact()
    cg = ih.CG(rtol=1e-12)
    t_ex, r_ex = best_time(lambda: ih.solve(op, B, exact, damping=damping))
    t_cg, r_cg = best_time(lambda: ih.solve(op, B, cg, damping=damping))
    m_ex = peak_mib(lambda: ih.solve(op, B, exact, damping=damping))
    m_cg = peak_mib(lambda: ih.solve(op, B, cg, damping=damping))
    rel = max_col_reldiff(r_cg.x, r_ex.x)
    print(
        f"Part 2: LowRankPlusIdentity n={n}, d={d} (factor {U.nbytes / 2**20:.0f} MiB), damping={damping:.4f}, "
        f"k={k} rhs"
    )
    print(
        f"  {'Exact (' + r_ex.info['method'] + ')':20s}: {t_ex:7.3f} s, peak {m_ex:7.1f} MiB, "
        f"max residual {float(np.max(r_ex.residual_norm)):.1e}"
    )
    print(
        f"  {'CG (rtol=1e-12)':20s}: {t_cg:7.3f} s, peak {m_cg:7.1f} MiB, {r_cg.n_iter} iterations, "
        f"max residual {float(np.max(r_cg.residual_norm)):.1e}"
    )
    print(
        f"  max rel. difference Exact vs CG: {rel:.2e}  (required <= 1e-8: {'OK' if rel <= 1e-8 else 'FAIL'})"
    )
    if not rel <= 1e-8:
        raise SystemExit("relative difference above 1e-8")


def main():
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"invhvp {ih.__version__}, {os.cpu_count()} CPUs ({platform.machine()})"
    )
    part1()
    part2()


if __name__ == "__main__":
    main()
