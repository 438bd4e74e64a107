"""Measure DataInf's influence-matrix cost against raw matrix products, and its certificates.

Usage::

    python benchmarks/datainf_ratio.py            # both parts
    python benchmarks/datainf_ratio.py ratio      # timing ratio only
    python benchmarks/datainf_ratio.py table      # true error vs bounds only

Part 1 (``ratio``): the full ``m×n`` influence matrix for ``n = 4096`` training and
``m = 256`` test gradients over 4 blocks of ``d_l = 16384`` (float32) with
``invhvp.DataInf()``, against three ``(m×d_l)·(d_l×n)`` products per block in the same
dtype, same process; each timed ``REPEATS`` times, minimum taken.  Peak extra memory is
measured with ``tracemalloc`` (numpy reports its allocations to it) and compared with one
``d_l×d_l`` matrix.

Part 2 (``table``): true spectral error ``||S̄⁻¹ − R||₂`` vs the intermediate bound, the
computable certificate and the paper's ``2M²d²/λ³`` for ``d ∈ {16, 64, 256, 1024}``,
``n = 128``, paper's damping rule, for realistic (low-rank, heavy-tailed row norms) and
for iid Gaussian gradients.
"""

from __future__ import annotations

import sys
import time
import tracemalloc

import numpy as np

import invhvp as ih
from invhvp import bounds

REPEATS = 5


def _min_time(fn, repeats=REPEATS):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def ratio(n=4096, m=256, d=16384, blocks=4, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    train = [rng.standard_normal((n, d), dtype=dtype) for _ in range(blocks)]
    test = [rng.standard_normal((m, d), dtype=dtype) for _ in range(blocks)]
    lam = ih.default_damping(train)

    def products():
        for U, T in zip(train, test):
            for _ in range(3):
                T @ U.T

    def influence():
        return ih.influence_matrix(train, test, ih.DataInf(), damping=lam)

    influence()  # warm-up (BLAS threads, page faults)
    products()
    t_inf, t_prod = [], []
    for _ in range(REPEATS):  # interleave so load from other users hits both alike
        t_prod.append(_min_time(products, 1))
        t_inf.append(_min_time(influence, 1))
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    out = influence()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    itemsize = np.dtype(dtype).itemsize
    res = {
        "n": n,
        "m": m,
        "d_l": d,
        "blocks": blocks,
        "dtype": np.dtype(dtype).name,
        "t_influence_min_s": min(t_inf),
        "t_3_products_min_s": min(t_prod),
        "ratio": min(t_inf) / min(t_prod),
        "peak_extra_MiB": peak / 2**20,
        "output_MiB": out.nbytes / 2**20,
        "one_dxd_MiB": d * d * itemsize / 2**20,
    }
    return res


def realistic_gradients(rng, n, d, rank=8):
    """Low-rank-ish per-sample gradients with heavy-tailed (log-normal) row norms."""
    W = rng.standard_normal((rank, d)) * (1.0 / np.arange(1, rank + 1))[:, None]
    Z = rng.standard_normal((n, rank))
    U = Z @ W + 0.1 * rng.standard_normal((n, d))
    U *= rng.lognormal(0.0, 1.0, size=(n, 1))
    return U / np.sqrt(d)


def table(n=128, dims=(16, 64, 256, 1024), seed=0, kind="realistic"):
    """One row per ``d``; ``kind="realistic"`` (see above) or ``"gaussian"`` (iid N(0, 1/d))."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in dims:
        if kind == "realistic":
            U = realistic_gradients(rng, n, d)
        else:
            U = rng.standard_normal((n, d)) / np.sqrt(d)
        lam = ih.default_damping(U)
        c = bounds.datainf_certificates(U, lam)
        rows.append(
            {
                "d": d,
                "n": n,
                "lambda": lam,
                "true_error": c["true_error"],
                "intermediate": c["intermediate"],
                "certificate": c["certificate"],
                "paper_bound": c["paper_bound"],
            }
        )
    return rows


def main(argv):
    what = argv[1] if len(argv) > 1 else "all"
    for kind in ("realistic", "gaussian"):
        if what not in ("all", "table"):
            break
        print(f"\n{kind} gradients:\n")
        print(
            "| d_l | n | λ (0.1·mean eig) | true ‖S̄⁻¹−R‖₂ | intermediate | certificate | paper 2M²d²/λ³ | cert/true | paper/cert |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in table(kind=kind):
            print(
                f"| {r['d']} | {r['n']} | {r['lambda']:.3g} | {r['true_error']:.3g} | {r['intermediate']:.3g} | "
                f"{r['certificate']:.3g} | {r['paper_bound']:.3g} | {r['certificate'] / r['true_error']:.3g} | "
                f"{r['paper_bound'] / r['certificate']:.3g} |"
            )
    if what in ("all", "ratio"):
        r = ratio()
        for k, v in r.items():
            print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main(sys.argv)
