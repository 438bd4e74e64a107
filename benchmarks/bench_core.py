"""asv benchmarks of the core: operator products, exact solves, CG.

Run from this directory (offline, in the current environment)::

    asv run --python=same --quick --bench bench_core

``time_*`` is wall time, ``peakmem_*`` peak resident memory of the benchmark process,
``track_*`` the relative error ``‖x − x*‖/‖x*‖`` against a reference computed
independently of invhvp (``numpy.linalg.solve`` or an SVD of the factor).
Sizes are modest so that the suite runs in a few minutes on a 2-core CPU;
``INVHVP_ASV_SIZES=small`` (the history run, benchmarks/README.md) keeps the small sizes only.
"""

import os

import numpy as np
import scipy.linalg
import scipy.sparse.linalg

import invhvp as ih

SMALL = os.environ.get("INVHVP_ASV_SIZES") == "small"


def _rng(seed=0):
    return np.random.default_rng(seed)


def _wishart(d, seed=0):
    """SPD matrix (1/m) W Wᵀ with m = 2d: Marchenko-Pastur spectrum in about [0.09, 2.9]."""
    W = _rng(seed).standard_normal((d, 2 * d))
    M = W @ W.T / (2 * d)
    return (M + M.T) / 2


def _relerr(x, xstar):
    """``‖x − x*‖/‖x*‖``, NaN if not finite (asv's step detection cannot take inf)."""
    err = float(np.linalg.norm(x - xstar) / np.linalg.norm(xstar))
    return err if np.isfinite(err) else float("nan")


def _woodbury_free_reference(U, scale, c, B):
    """(cI + s UᵀU)⁻¹ B from a thin SVD of U (no Woodbury identity, no d×d matrix)."""
    _, sv, Qt = scipy.linalg.svd(U, full_matrices=False)
    coef = scale * sv**2 / (c * (c + scale * sv**2))
    return B / c - Qt.T @ (coef[:, None] * (Qt @ B))


# ---------------------------------------------------------------------- products


class MatVec:
    """One product with k vectors: Dense d×d, LowRank (n=200), BlockDiagonal of 4 blocks."""

    params = (["dense", "lowrank", "block"], [1, 64])
    param_names = ["operator", "k"]

    def setup(self, kind, k):
        d = 2000
        rng = _rng(1)
        if kind == "dense":
            self.op = ih.Dense(_wishart(d))
        elif kind == "lowrank":
            self.op = ih.LowRankPlusIdentity(rng.standard_normal((200, d)), shift=0.1)
        else:
            blocks = [ih.Dense(_wishart(250, s)) for s in range(2)]
            blocks += [ih.LowRankPlusIdentity(rng.standard_normal((50, 750))) for _ in range(2)]
            self.op = ih.BlockDiagonal(blocks)
        self.V = rng.standard_normal((d, k))

    def time_matmat(self, kind, k):
        self.op.matmat(self.V)

    def peakmem_matmat(self, kind, k):
        self.op.matmat(self.V)


# ---------------------------------------------------------------------- exact


class ExactLowRank:
    """Exact on LowRankPlusIdentity (1/n)UᵀU: Woodbury (O(n²d)) vs dense Cholesky (O(d³)).

    Dense Cholesky at d = 20000 (a 3.2 GB matrix, ~3·10¹² flops) is skipped.
    """

    params = ([50, 200], [2000], ["woodbury", "cholesky"]) if SMALL else ([50, 200, 1000], [2000, 20000], ["woodbury", "cholesky"])
    param_names = ["n", "d", "method"]
    timeout = 300

    def setup(self, n, d, method):
        if method == "cholesky" and d > 5000:
            raise NotImplementedError("dense Cholesky of a 20000×20000 matrix: skipped")
        self.U = _rng(2).standard_normal((n, d))
        self.B = _rng(3).standard_normal((d, 4))
        self.damping = 0.1  # 0.1 × mean eigenvalue of (1/n)UᵀU, the DataInf default rule
        self.op = ih.LowRankPlusIdentity(self.U)
        self.solver = ih.Exact(woodbury=(method == "woodbury"))

    def _solve(self):
        return ih.solve(self.op, self.B, self.solver, damping=self.damping).x

    def time_solve(self, n, d, method):
        self._solve()

    def peakmem_solve(self, n, d, method):
        self._solve()

    def track_relerr(self, n, d, method):
        ref = _woodbury_free_reference(self.U, 1.0 / n, self.damping, self.B)
        return _relerr(self._solve(), ref)

    track_relerr.unit = "relative error"


class ExactDense:
    """Cholesky on Dense SPD."""

    params = [500] if SMALL else [500, 2000]
    param_names = ["d"]

    def setup(self, d):
        self.M = _wishart(d)
        self.B = _rng(4).standard_normal((d, 4))
        self.op = ih.Dense(self.M)

    def time_cholesky(self, d):
        ih.solve(self.op, self.B, ih.Exact(), damping=0.05)

    def peakmem_cholesky(self, d):
        ih.solve(self.op, self.B, ih.Exact(), damping=0.05)

    def track_relerr(self, d):
        x = ih.solve(self.op, self.B, ih.Exact(), damping=0.05).x
        return _relerr(x, np.linalg.solve(self.M + 0.05 * np.eye(d), self.B))

    track_relerr.unit = "relative error"


# ---------------------------------------------------------------------- CG


class CGManyRHS:
    """CG on Dense SPD d=500 with k=64 right-hand sides: one block solve vs 64 single solves,
    vs 64 calls of scipy.sparse.linalg.cg (same rtol)."""

    rtol = 1e-8
    k = 64
    timeout = 300

    def setup(self):
        d = 500
        self.M = _wishart(d, seed=5)
        self.damping = 0.05
        self.Md = self.M + self.damping * np.eye(d)
        self.B = _rng(6).standard_normal((d, self.k))
        self.op = ih.Dense(self.M)
        self.cg = ih.CG(rtol=self.rtol)

    def _block(self):
        return ih.solve(self.op, self.B, self.cg, damping=self.damping).x

    def time_invhvp_block(self):
        self._block()

    def time_invhvp_one_at_a_time(self):
        for j in range(self.k):
            ih.solve(self.op, self.B[:, j], self.cg, damping=self.damping)

    def time_scipy_one_at_a_time(self):
        for j in range(self.k):
            scipy.sparse.linalg.cg(self.Md, self.B[:, j], rtol=self.rtol, atol=0.0)

    def peakmem_invhvp_block(self):
        self._block()

    def track_relerr_invhvp_block(self):
        return _relerr(self._block(), np.linalg.solve(self.Md, self.B))

    track_relerr_invhvp_block.unit = "relative error"

    def track_relerr_scipy(self):
        X = np.stack(
            [
                scipy.sparse.linalg.cg(self.Md, self.B[:, j], rtol=self.rtol, atol=0.0)[0]
                for j in range(self.k)
            ],
            axis=1,
        )
        return _relerr(X, np.linalg.solve(self.Md, self.B))

    track_relerr_scipy.unit = "relative error"
