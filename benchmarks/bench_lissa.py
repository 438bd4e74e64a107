"""asv benchmarks: spectral estimators and LiSSA (fixed and automatic); time, matvecs, error."""

import numpy as np

import invhvp as ih


def _gram(n, d, seed=0, decay=0.5, tail=0.3):
    rng = np.random.default_rng(seed)
    scales = np.exp(-decay * np.linspace(0, 3, d))
    U = rng.standard_normal((n, d)) * scales * np.exp(tail * rng.standard_normal((n, 1)))
    return U, rng.standard_normal(d)


class Estimators:
    """λ_max (Lanczos, power) and trace (Hutchinson, Hutch++) on a low-rank operator."""

    params = (["lanczos", "power", "hutchinson", "hutchpp"],)
    param_names = ["method"]

    def setup(self, method):
        U, _ = _gram(2000, 300)
        self.op = ih.LowRankPlusIdentity(U)
        self.true_lmax = float(np.linalg.eigvalsh(U.T @ U / 2000)[-1])
        self.true_tr = float(np.sum(U * U) / 2000)

    def _run(self, method):
        if method in ("lanczos", "power"):
            return ih.lambda_max(self.op, method=method, k=30, maxiter=100, rng=0)
        return ih.trace(self.op, method=method, n_matvec=60, rng=0)

    def time_estimate(self, method):
        self._run(method)

    def peakmem_estimate(self, method):
        self._run(method)

    def track_rel_error(self, method):
        est = self._run(method)
        true = self.true_lmax if method in ("lanczos", "power") else self.true_tr
        return abs(est.value - true) / true

    def track_n_matvec(self, method):
        return self._run(method).n_matvec


class LiSSASolve:
    """LiSSA: automatic plan (mini-batch regime, n = 50000) and a fixed classic setting."""

    params = (["automatic", "fixed-scale10-depth1000-B64", "full-batch-exact-step"],)
    param_names = ["config"]

    def setup(self, config):
        U, v = _gram(50000, 8)
        self.lam = 0.2 * float(np.sum(U * U)) / U.size
        self.op = ih.LowRankPlusIdentity(U)
        self.v = v
        self.xs = ih.solve(self.op, v, ih.Exact(), damping=self.lam).x
        lmax = float(np.linalg.eigvalsh(U.T @ U / U.shape[0])[-1])
        self.solvers = {
            "automatic": ih.LiSSA(rng=0),
            "fixed-scale10-depth1000-B64": ih.LiSSA.from_scale(10, 1000, 64, rng=0),
            "full-batch-exact-step": ih.LiSSA(step=1 / (lmax + self.lam), batch_size="full", steps=60),
        }

    def _solve(self, config):
        return ih.solve(self.op, self.v, self.solvers[config], damping=self.lam, on_failure="ignore")

    def time_solve(self, config):
        self._solve(config)

    def peakmem_solve(self, config):
        self._solve(config)

    def track_n_matvec(self, config):
        return self._solve(config).n_matvec

    def track_rel_error(self, config):
        res = self._solve(config)
        err = float(np.linalg.norm(res.x - self.xs) / np.linalg.norm(self.xs))
        return err if np.isfinite(err) else float("nan")  # a diverged run: asv cannot publish inf

    def track_predicted_bound(self, config):
        p = self._solve(config).info.get("plan", {}).get("predicted_error")
        return float(p) if p is not None and np.isfinite(p) else float("nan")  # asv cannot publish inf
