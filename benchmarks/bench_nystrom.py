"""asv benchmarks: Nyström-preconditioned CG, the low-rank inverse and preconditioned LiSSA.

Synthetic Gram blocks with a decaying spectrum (rows scaled by ``i^{-0.8}``), so the suite runs
without cached gradients; ``benchmarks/bench_precond.py`` runs the same solvers on real MiniLM
and digits gradients.
"""

import os

import numpy as np

import invhvp as ih

#: ``INVHVP_ASV_SIZES=small`` (the history run): CG at damping factors 1e-1 and 1e-2 only.
SMALL = os.environ.get("INVHVP_ASV_SIZES") == "small"


def _gram(n, d, seed=0, decay=0.8):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((n, d)) / np.arange(1, d + 1) ** decay
    return U, rng.standard_normal((d, 16))


class NystromCG:
    """CG with and without the adaptive Nyström preconditioner across the damping (n = 1000, d = 2000)."""

    params = ([None, "nystrom"], [1e-1, 1e-2] if SMALL else [1e-1, 1e-2, 1e-3])
    param_names = ["preconditioner", "damping_factor"]
    timeout = 300

    def setup(self, preconditioner, factor):
        U, self.B = _gram(1000, 2000)
        self.op = ih.LowRankPlusIdentity(U.astype(np.float32))
        self.B = self.B.astype(np.float32)
        self.lam = factor * self.op.trace() / self.op.size
        self.solver = ih.CG(rtol=1e-4, preconditioner=preconditioner, maxiter=5000)

    def _solve(self):
        return ih.solve(self.op, self.B, self.solver, damping=self.lam, on_failure="ignore")

    def time_solve(self, preconditioner, factor):
        self._solve()

    def peakmem_solve(self, preconditioner, factor):
        self._solve()

    def track_n_iter(self, preconditioner, factor):
        return self._solve().n_iter

    def track_total_matvec(self, preconditioner, factor):
        res = self._solve()
        return res.n_matvec + res.info["setup_matvec"]


class NystromLowRank:
    """``Nystrom(rank)``: setup + apply time and the reported error estimate against the true error."""

    params = ([64, 256],)
    param_names = ["rank"]

    def setup(self, rank):
        U, B = _gram(1000, 2000, seed=1, decay=1.2)
        self.op, self.B = ih.LowRankPlusIdentity(U), B
        self.lam = 1e-2 * self.op.trace() / self.op.size
        self.xs = ih.solve(self.op, B, ih.Exact(), damping=self.lam).x

    def time_inverse_and_apply(self, rank):
        ih.solve(self.op, self.B, ih.Nystrom(rank=rank), damping=self.lam)

    def peakmem_inverse_and_apply(self, rank):
        ih.solve(self.op, self.B, ih.Nystrom(rank=rank), damping=self.lam)

    def track_rel_error(self, rank):
        x = ih.solve(self.op, self.B, ih.Nystrom(rank=rank), damping=self.lam).x
        return float(np.max(np.linalg.norm(x - self.xs, axis=0) / np.linalg.norm(self.xs, axis=0)))

    def track_error_estimate(self, rank):
        """The reported error estimate; NaN when it is infinite (asv's step detection cannot take inf)."""
        res = ih.solve(self.op, self.B, ih.Nystrom(rank=rank), damping=self.lam)
        v = float(np.max(res.info["error_estimate"]))
        return v if np.isfinite(v) else float("nan")


class PreconditionedLiSSA:
    """Automatic LiSSA with and without the preconditioner (full-batch regime, n = 2000, d = 300)."""

    params = ([None, "auto"],)
    param_names = ["preconditioner"]
    timeout = 300

    def setup(self, preconditioner):
        U, B = _gram(2000, 300, seed=2)
        self.op, self.v = ih.LowRankPlusIdentity(U), B[:, 0]
        self.lam = 1e-2 * self.op.trace() / self.op.size
        self.xs = ih.solve(self.op, self.v, ih.Exact(), damping=self.lam).x
        self.solver = ih.LiSSA(rng=0, preconditioner=preconditioner, max_matvec=100_000)

    def _solve(self):
        return ih.solve(self.op, self.v, self.solver, damping=self.lam, on_failure="ignore")

    def time_solve(self, preconditioner):
        self._solve()

    def peakmem_solve(self, preconditioner):
        self._solve()

    def track_total_matvec(self, preconditioner):
        res = self._solve()
        return res.n_matvec + res.info["setup_matvec"]

    def track_rel_error(self, preconditioner):
        err = float(np.linalg.norm(self._solve().x - self.xs) / np.linalg.norm(self.xs))
        return err if np.isfinite(err) else float("nan")  # asv cannot publish inf
