"""asv benchmarks of DataInf at LoRA-like sizes, next to the raw matrix products it needs.

Run from this directory (offline, in the current environment)::

    asv run --python=same --quick --bench bench_datainf

One block of ``d_l ∈ {8192, 32768}`` coordinates (a rank-8 LoRA pair on a 512- to
2048-wide layer), ``n = 4096`` training gradients, float32; the cost of ``L`` blocks is
``L`` times this.  ``time_*`` is wall time, ``peakmem_*`` peak resident memory (the
gradients themselves are ``n·d_l·4`` bytes: 128 MiB / 512 MiB; one ``d_l×d_l`` matrix
would be 256 MiB / 4 GiB).  ``*_products`` time the bare matrix products of the same
shapes, the lower bound DataInf is compared with (see ``datainf_ratio.py`` for the
4-block ratio reported in README.md).
"""

import os

import numpy as np

import invhvp as ih

#: ``INVHVP_ASV_SIZES=small`` (the history run, benchmarks/README.md): n = 1024, d_l = 4096, m = 64.
SMALL = os.environ.get("INVHVP_ASV_SIZES") == "small"
N = 1024 if SMALL else 4096
M = 64 if SMALL else 256
DIMS = [4096] if SMALL else [8192, 32768]


def _data(d, k, seed=0):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((N, d), dtype=np.float32)
    B = rng.standard_normal((k, d), dtype=np.float32)
    return U, B


class DataInfApply:
    """``solve(LowRankPlusIdentity(U), B, DataInf())``: R B with k right-hand sides (2 products)."""

    params = (DIMS, [1, 64])
    param_names = ["d_l", "k"]
    timeout = 300

    def setup(self, d, k):
        U, Bt = _data(d, k)
        self.U = U
        self.B = np.ascontiguousarray(Bt.T)
        self.op = ih.LowRankPlusIdentity(U)
        self.lam = ih.default_damping(self.op)

    def time_apply(self, d, k):
        ih.solve(self.op, self.B, ih.DataInf(), damping=self.lam)

    def peakmem_apply(self, d, k):
        ih.solve(self.op, self.B, ih.DataInf(), damping=self.lam)

    def time_products(self, d, k):
        self.U.T @ (self.U @ self.B)

    def track_rel_error_vs_float64(self, d, k):
        """float32 DataInf against the same formula evaluated in float64 (rounding, not the approximation)."""
        x = ih.solve(self.op, self.B, ih.DataInf(), damping=self.lam).x
        U, B = self.U.astype(np.float64), self.B.astype(np.float64)
        op = ih.LowRankPlusIdentity(U)
        ref = ih.solve(op, B, ih.DataInf(), damping=float(self.lam)).x
        return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))

    track_rel_error_vs_float64.unit = "relative error"


class DataInfInfluence:
    """Full ``m×n`` influence matrix (m = 256 test, n = 4096 train) on one block: 3 products."""

    params = DIMS
    param_names = ["d_l"]
    timeout = 300

    def setup(self, d):
        self.U, self.T = _data(d, M, seed=1)
        self.lam = ih.default_damping(self.U)

    def time_influence(self, d):
        ih.influence_matrix(self.U, self.T, ih.DataInf(), damping=self.lam)

    def peakmem_influence(self, d):
        ih.influence_matrix(self.U, self.T, ih.DataInf(), damping=self.lam)

    def time_three_products(self, d):
        for _ in range(3):
            self.T @ self.U.T


class DataInfSelfInfluence:
    """Self-influence of n = 1024 points without the n×n matrix: Gram rows in chunks (n²d)."""

    params = DIMS
    param_names = ["d_l"]

    def setup(self, d):
        self.U = np.random.default_rng(3).standard_normal((1024, d), dtype=np.float32)
        self.lam = ih.default_damping(self.U)

    def time_self_influence(self, d):
        ih.self_influence(self.U, ih.DataInf(), damping=self.lam)

    def time_gram(self, d):
        self.U @ self.U.T


class Certificates:
    """O(nd) certificates (solve default) vs the full set (exact λ_max, intermediate, true error)."""

    params = [64, 1024]
    param_names = ["d_l"]

    def setup(self, d):
        self.U = np.random.default_rng(2).standard_normal((128, d))
        self.lam = ih.default_damping(self.U)

    def time_cheap(self, d):
        ih.bounds.datainf_certificates(self.U, self.lam, full=False)

    def time_full(self, d):
        ih.bounds.datainf_certificates(self.U, self.lam, full=True)

    def peakmem_full(self, d):
        ih.bounds.datainf_certificates(self.U, self.lam, full=True)

    def track_certificate_over_true_error(self, d):
        c = ih.bounds.datainf_certificates(self.U, self.lam)
        return c["certificate"] / c["true_error"]
