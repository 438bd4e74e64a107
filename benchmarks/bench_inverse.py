"""Factor once, apply many: a second ``inv.solve`` against a fresh ``ih.solve`` (Core v2 issue).

Problem: 4 LoRA-like blocks, n = 2000 per-sample gradients of d_l = 3072 each (rank-limited
with a decaying spectrum), float32, damping = 0.1 × mean eigenvalue per block, 64 right-hand
sides.  A fresh ``ih.solve`` factors every block (Woodbury: the n×n Gram and its Cholesky,
plus the condition estimate) and then applies; ``inv.solve`` on new right-hand sides only
applies (and checks the residual).

Standalone (interleaved repeats, minimum reported, threads set explicitly)::

    python benchmarks/bench_inverse.py --threads 1 --repeats 3

asv: ``asv run --python=same --quick --bench bench_inverse``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import invhvp as ih

#: ``INVHVP_ASV_SIZES=small`` (the history run, benchmarks/README.md): n = 500, d_l = 1024, 2 blocks.
SMALL = os.environ.get("INVHVP_ASV_SIZES") == "small"
N, D, BLOCKS, K = (500, 1024, 2, 64) if SMALL else (2000, 3072, 4, 64)


def problem(seed=0, n=N, d=D, blocks=BLOCKS, k=K, dtype=np.float32):
    rng = np.random.default_rng(seed)
    grads = []
    for _ in range(blocks):
        r = 256  # gradients of a LoRA block live near a low-dimensional subspace
        U = (rng.standard_normal((n, r)) * np.geomspace(1.0, 1e-2, r)) @ rng.standard_normal((r, d)) / np.sqrt(r)
        U += 1e-3 * rng.standard_normal((n, d))
        grads.append(U.astype(dtype))
    op = ih.BlockDiagonal([ih.LowRankPlusIdentity(U) for U in grads])
    lam = ih.default_damping(op)
    rhs = [rng.standard_normal((blocks * d, k)).astype(dtype) for _ in range(2)]
    return op, lam, rhs


class Reuse:
    """``time_fresh_solve``: factor + apply; ``time_second_solve``: apply on an existing inverse."""

    timeout = 600

    def setup(self):
        self.op, self.lam, (self.b1, self.b2) = problem()
        self.inv = ih.inverse(self.op, ih.Exact(), damping=self.lam)
        self.inv.solve(self.b1)

    def time_fresh_solve(self):
        ih.solve(self.op, self.b2, ih.Exact(), damping=self.lam)

    def time_second_solve(self):
        self.inv.solve(self.b2)

    def peakmem_second_solve(self):
        self.inv.solve(self.b2)

    def track_second_solve_status_ok(self):
        return float(self.inv.solve(self.b2).ok)

    def track_second_vs_fresh_rel_diff(self):
        """The reused factorization against a fresh solve (should be rounding only)."""
        a = self.inv.solve(self.b2).x
        b = ih.solve(self.op, self.b2, ih.Exact(), damping=self.lam).x
        return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))

    track_second_vs_fresh_rel_diff.unit = "relative difference"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(args.threads):
        op, lam, (b1, b2) = problem()
        fresh, second = [], []
        inv = ih.inverse(op, ih.Exact(), damping=lam)
        inv.solve(b1)  # warm
        for _ in range(args.repeats):  # interleaved
            t = time.perf_counter()
            r_fresh = ih.solve(op, b2, ih.Exact(), damping=lam)
            fresh.append(time.perf_counter() - t)
            t = time.perf_counter()
            r_second = inv.solve(b2)
            second.append(time.perf_counter() - t)
        diff = float(np.max(np.abs(r_fresh.x - r_second.x)) / np.max(np.abs(r_fresh.x)))
    print(f"problem: {BLOCKS} blocks, n={N}, d_l={D}, {K} right-hand sides, float32; threads={args.threads}")
    print(f"fresh ih.solve : min {min(fresh):.3f} s  (all: {', '.join(f'{t:.3f}' for t in fresh)})")
    print(f"second inv.solve: min {min(second):.3f} s  (all: {', '.join(f'{t:.3f}' for t in second)})")
    print(f"ratio second/fresh = {min(second) / min(fresh):.3f}; status {r_second.status.value}; "
          f"max relative difference {diff:.2e}; condition estimates "
          f"{[round(b['condition_estimate']) for b in inv.info['blocks']]}")
    print(f"(load average at the end: {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
