r"""A low-rank inverse: the randomized Nyström approximation inverted exactly.

With ``H = A − sI ⪰ 0`` (``s = op.eig_lower()``), ``μ = s + λ`` and ``Ĥ = VΛ̂Vᵀ ⪯ H``
(:mod:`invhvp.solvers.sketch`, ``ℓ = rank`` columns):

.. math:: x = (\hat H + μI)^{-1} b = V(\hat Λ + μI)^{-1}V^T b + \frac{1}{μ}(I − VV^T)\,b .

Error (docs/theory.md §8.6–8.11): ``x − x* = (H + μI)⁻¹ r`` with the true residual
``r = b − (A + λI)x``, and ``Ĥ + (μ − ν)I ⪯ H + μI`` gives the a-posteriori bound

.. math:: \|x − x^*\| \le \sqrt{r^T(\hat H + (μ − ν)I)^{-1} r\,/\,μ} =: β,

never larger than the generic ``‖r‖/μ`` (the energy norm of the error, converted with
``λ_min(H + μI) >= μ``), and usually much smaller.  ``β/(‖x‖ − β)`` bounds the relative error
``‖x − x*‖/‖x*‖``: that is the ``error_estimate`` each solve reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _checks as C
from .._arrays import as_generator, col_dots64, col_norms64, random_matrix
from ..errors import DampingError, UnsupportedOperatorError
from ..result import Status
from .base import Counted, Outcome, Solver
from .inverse import Inverse
from .products import fast_operator
from .sketch import nystrom

__all__ = ["Nystrom", "NystromInverse"]


@dataclass(frozen=True, eq=False)
class Nystrom(Solver):
    r"""Low-rank inverse ``(Ĥ + μI)⁻¹`` from a rank-``rank`` randomized Nyström sketch.

    An approximation by design: directions the sketch did not capture are inverted as if
    their eigenvalue were ``s`` (the operator's lower bound, 0 for a Gram matrix).  It is
    exact when ``rank`` covers the spectrum (``rank >= rank(A − sI)``, or ``rank >= d``).

    **Cost**: ``rank`` operator products and ``O(d·rank²)`` float64 work once (the sketch),
    ``error_steps + n_probes`` products for the setup's error estimates, then ``4d·rank·k``
    flops per solve of ``k`` columns (no operator product) plus the ``k`` products of the
    residual check.

    **Status** (what SUCCESS means): each solve computes the true residual and reports
    ``info["error_estimate"]``, per column the bound ``β/(‖x‖ − β)`` on the relative error
    (module docstring), next to the generic ``info["error_bound"] = (‖r‖ + δ)/μ``.
    With ``rtol=None`` (default) the solve is SUCCESS whenever it is finite -- like DataInf,
    the accuracy is reported, not promised.  With ``rtol`` set, SUCCESS only when every
    column's ``error_estimate <= rtol``; otherwise INACCURATE with advice (raise ``rank``, add
    damping, or use CG with this sketch as preconditioner).  The setup also reports
    ``info["relative_error_bound"]`` ``= ‖E‖/μ`` (a-priori, any right-hand side; ``‖E‖`` by
    Lanczos) and ``info["probe_error_estimate"]`` (the largest ``error_estimate`` of
    ``n_probes`` Gaussian right-hand sides).

    Parameters
    ----------
    rank : int, default 128
        Sketch size ``ℓ`` (capped at ``d``).
    rtol : float, optional
        Relative-error target that SUCCESS certifies (see above).
    n_probes : int, default 4
        Gaussian probe right-hand sides of the setup's estimate (``0``: none).
    error_steps : int, default 10
        Lanczos steps of the ``‖E‖`` estimate (``0``: none).
    rng : Generator, int or None, default 0
        Seed of the sketch and the probes.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> U = np.random.default_rng(0).standard_normal((20, 200))   # rank 20
    >>> A, b = ih.LowRankPlusIdentity(U), np.ones(200)
    >>> res = ih.solve(A, b, ih.Nystrom(rank=32, rtol=1e-6), damping=0.1)
    >>> x = ih.solve(A, b, ih.Exact(), damping=0.1).x
    >>> bool(np.linalg.norm(res.x - x) <= 1e-9 * np.linalg.norm(x)), res.status.value
    (True, 'success')
    """

    rank: int = 128
    rtol: float | None = None
    n_probes: int = 4
    error_steps: int = 10
    rng: Any = 0
    name = "nystrom"

    def __post_init__(self):
        C.integer(self.rank, "rank", minimum=1)
        C.real(self.rtol, "rtol", minimum=0.0, strict=True, optional=True)
        C.integer(self.n_probes, "n_probes", minimum=0)
        C.integer(self.error_steps, "error_steps", minimum=0)
        as_generator(self.rng)  # validates the seed

    def check_supported(self, op) -> None:
        if not op.psd:
            raise UnsupportedOperatorError(
                f"Nystrom needs a positive semidefinite operator ({type(op).__name__} has psd=False): its "
                "sketch and error bound assume it; use invhvp.CG() for an indefinite operator"
            )

    def _factor(self, counted, damping, rng=None):
        self.check_supported(counted.op)
        return NystromInverse(self, counted, float(damping), as_generator(self.rng if rng is None else rng))


class NystromInverse(Inverse):
    """The sketch made once; each solve is ``O(d·rank·k)`` plus its residual check."""

    kind = "approximation"

    def __init__(self, solver: Nystrom, counted, lam: float, gen):
        super().__init__(solver, counted, lam, {"method": "nystrom", "rank_requested": solver.rank})
        op = counted.op
        self.mu = float(op.eig_lower() or 0.0) + lam
        if not self.mu > 0.0:
            raise DampingError(
                "damping: the Nyström low-rank inverse needs damping > 0 (the complement of the sketch is "
                "inverted as 1/(shift + damping))"
            )
        fast, how = fast_operator(op, counted)
        self.approx = a = nystrom(
            Counted(fast, counted.counter),
            solver.rank,
            gen,
            shift=float(op.eig_lower() or 0.0),
            mu=self.mu,
            error_steps=solver.error_steps,
        )
        self._inv = 1.0 / (a.values_dev + self.mu)
        self._bound_mu = self.mu - a.nu
        err = a.error
        self.info.update(
            rank=a.rank,
            products=how,
            nu=a.nu,
            lambda_hat_1=a.top,
            truncated=a.truncated,
            lambda_hat_tail=a.tail,
            sketch_matvec=a.n_matvec,
            sketch_seconds=a.seconds,
            memory_bytes=a.memory_bytes(),
            error_norm_upper=None if err is None else err["upper"],
            relative_error_bound=None if err is None else err["upper"] / self.mu,
        )
        if solver.n_probes:
            Z = random_matrix(op.xp, (op.size, solver.n_probes), op.dtype, op.device, gen, kind="normal")
            X = self._x(Z)
            R = Z - (counted.matmat(X) + lam * X)
            self.info["probe_error_estimate"] = float(np.max(self._relative(X, R)))

    def _x(self, B):
        return self.approx.apply_function(B, self._inv, 1.0 / self.mu)

    def _energy_bound(self, R):
        """``β = sqrt(rᵀ(Ĥ + (μ − ν)I)⁻¹r/μ)`` per column (float64 host), or ``‖r‖/μ`` when ``μ <= ν``."""
        if not self._bound_mu > 0.0:
            return col_norms64(R) / self.mu
        a = self.approx
        S = a.apply_function(R, 1.0 / (a.values_dev + self._bound_mu), 1.0 / self._bound_mu)
        q = col_dots64(R, S)
        return np.sqrt(np.maximum(q, 0.0) / self.mu)

    def _relative(self, X, R, beta=None):
        beta = self._energy_bound(R) if beta is None else beta
        xn = col_norms64(X)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.where(beta < xn, beta / np.maximum(xn - beta, 1e-300), np.inf)

    def _solve2d(self, B, check: bool):
        self._check = check  # the residual is the check's product: skipped with check=False
        return super()._solve2d(B, check)

    def _apply(self, B):
        op = self.operator
        X = self._x(B)
        if not getattr(self, "_check", True):
            return Outcome(x=X)
        R = B - (op._matmat(X) + float(self.damping) * X)  # the true residual (the check's product)
        beta = self._energy_bound(R)
        info = {"error_estimate": self._relative(X, R, beta), "energy_bound": beta}
        return Outcome(x=X, info=info, residual=R, check_matvec=int(B.shape[1]))

    def _verify(self, out, chk):
        rtol = self.solver.rtol
        rel = out.info["error_estimate"]
        if rtol is None or np.all(rel <= rtol):
            return Status.SUCCESS, {}
        worst = float(np.max(rel))
        return Status.INACCURATE, {
            "advice": (
                f"estimated relative error {worst:.3g} > rtol={rtol:g} with rank {self.approx.rank}: raise rank "
                f"(the sketch's tail λ̂_ℓ = {self.approx.tail:.3g}, damping + shift = {self.mu:.3g}), add damping, "
                "or use CG(preconditioner='nystrom')"
                + ("" if math.isfinite(worst) else "; the bound exceeds ‖x‖, so it says nothing")
            )
        }
