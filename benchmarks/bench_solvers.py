"""asv benchmarks: every solver on one LoRA-like problem — time, peak memory, accuracy, status.

The problem: a block-diagonal Gram operator of 3 blocks (n = 400 per-sample gradients of
d_l = 1024, 1024, 512 coordinates, decaying spectrum, float64), the paper's damping
``λ_l = 0.1 · tr(G_l)/d_l``, 8 right-hand sides.  Every solver of invhvp runs on it; the
accuracy track is the relative error ``‖x − x*‖/‖x*‖`` against the per-block Woodbury solve
(``Exact``), the status track 1 when the solver verified its target (``success``).  Small enough
for a history run over many commits (about 30 s for the whole suite on 2 cores).

Run from this directory::

    asv --config asv.existing.conf.json run --python=same --quick --bench bench_solvers
"""

import numpy as np

import invhvp as ih

DIMS = (1024, 1024, 512)
N, K = 400, 8


def _solvers():
    """Name → solver factory; a solver missing from an older commit raises (asv records a failure)."""
    return {
        "exact": lambda: ih.Exact(),
        "cg": lambda: ih.CG(rtol=1e-6, maxiter=2000),
        "cg-nystrom": lambda: ih.CG(rtol=1e-6, maxiter=2000, preconditioner="nystrom"),
        "datainf": lambda: ih.DataInf(),
        "identity": lambda: ih.Identity(),
        "lissa": lambda: ih.LiSSA(rng=0, preconditioner=None),
        "lissa-nystrom": lambda: ih.LiSSA(rng=0, preconditioner="nystrom"),
        "nystrom-256": lambda: ih.Nystrom(rank=256),
    }


def problem(seed=0):
    rng = np.random.default_rng(seed)
    blocks = []
    for d in DIMS:
        U = rng.standard_normal((N, d)) / np.arange(1, d + 1) ** 1.0
        U *= np.exp(0.5 * rng.standard_normal((N, 1)))  # heavy-tailed per-sample norms
        blocks.append(ih.LowRankPlusIdentity(U))
    op = ih.BlockDiagonal(blocks)
    lam = ih.default_damping(op)
    B = rng.standard_normal((sum(DIMS), K))
    return op, lam, B


class EverySolver:
    """``ih.solve`` with each solver on the same block-diagonal Gram problem."""

    params = (list(_solvers()),)
    param_names = ["solver"]
    timeout = 300

    def setup(self, solver):
        self.op, self.lam, self.B = problem()
        self.make = _solvers()[solver]
        self.xs = ih.solve(self.op, self.B, ih.Exact(), damping=self.lam).x

    def _solve(self):
        return ih.solve(self.op, self.B, self.make(), damping=self.lam, on_failure="ignore")

    def time_solve(self, solver):
        self._solve()

    def peakmem_solve(self, solver):
        self._solve()

    def track_rel_error(self, solver):
        """NaN when the solver returned non-finite values: asv's step detection cannot take inf."""
        x = self._solve().x
        err = float(np.linalg.norm(x - self.xs) / np.linalg.norm(self.xs))
        return err if np.isfinite(err) else float("nan")

    track_rel_error.unit = "relative error"

    def track_status_success(self, solver):
        return float(self._solve().status.value == "success")

    track_status_success.unit = "1 = success"
