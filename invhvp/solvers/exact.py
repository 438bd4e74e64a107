"""The Exact solver and its inverse: factorization, condition estimate, verified status (docs/theory.md §3, §7.3).

The factorizations themselves (Cholesky, Woodbury, push-through) live in :mod:`.exact_factors`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _backend as Bk
from .. import _checks as C
from .._arrays import power_norm, row_chunks, rows_per_chunk
from ..errors import (
    NonFiniteError,
    OperatorTooLargeError,
    UnsupportedOperatorError,
)
from ..operators import MatrixFree
from ..operators.base import Operator
from ..result import SolveResult, Status
from .base import Solver
from .exact_factors import AUTO_DENSE_MAX, _Cholesky, exact_cost, factorize
from .inverse import Inverse
from .refine import refined_errors, residual64

__all__ = ["Exact", "ExactInverse", "factorize", "exact_cost", "AUTO_DENSE_MAX"]

#: Default forward-error tolerance of an exact solve, by precision (flags exhausted precision).
DEFAULT_RTOL = {4: 1e-2, 8: 1e-6}


@dataclass(frozen=True)
class Exact(Solver):
    r"""Direct solve of ``(A + λI) X = B`` that uses the operator's structure.

    - :class:`~invhvp.Dense`: Cholesky of ``A + λI`` (``d³/3``); failure raises
      :class:`~invhvp.errors.NotPositiveDefiniteError` (no jitter is added).
    - :class:`~invhvp.LowRankPlusIdentity` ``μI + s·UᵀU`` (``U`` is ``n×d``), ``c = μ + λ``:
      when ``n < d`` Woodbury (dual route), ``(cI + sUᵀU)⁻¹b = (1/c)[b − Uᵀ(c/s·I + UUᵀ)⁻¹Ub]``,
      ``n²d + n³/3`` once and ``2ndk`` per apply; otherwise Cholesky of the ``d×d`` matrix
      (primal route, ``nd² + d³/3`` once, ``d²k`` per apply).
    - :class:`~invhvp.MatrixFree`: materialized with ``d`` products and factorized, only when
      ``d <= max_dense_size``.
    - :class:`~invhvp.BlockDiagonal`: each block on its own (:func:`invhvp.inverse`).

    **Status** (docs/theory.md §7.3): the setup estimates ``‖(A+λI)⁻¹‖`` by inverse power
    iteration with the factor and ``κ`` with a few products.  Each solve (and each closed form)
    reports a forward-error estimate per column and is SUCCESS only when it is ``<= rtol``, else
    INACCURATE (use float64 or more damping): in float32 with float64 products from structure
    (dense, low-rank) and ``3uκ <= 1/2``, the error *measured* by one step of mixed-precision
    refinement; otherwise ``‖(A+λI)⁻¹‖·(‖r‖ + δ)/‖x‖`` from the true residual.

    Parameters
    ----------
    rtol : float, optional
        Relative forward-error tolerance; default ``1e-6`` (float64), ``1e-2`` (float32):
        only solves whose working precision is exhausted are flagged.
    max_dense_size : int, default 4096
        Largest ``d`` for which a matrix-free operator may be materialized.
    woodbury : bool or None
        Force (True) or forbid (False) Woodbury for low-rank operators; ``None``: when ``n < d``.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> U = np.random.default_rng(0).standard_normal((5, 1000))
    >>> res = ih.solve(ih.LowRankPlusIdentity(U), np.ones(1000), ih.Exact(), damping=0.1)
    >>> res.info["method"], res.status.value, bool(res.info["error_estimate"] < 1e-10)
    ('woodbury', 'success', True)
    """

    rtol: float | None = None
    max_dense_size: int = 4096
    woodbury: bool | None = None
    name = "exact"

    def __post_init__(self):
        C.real(self.rtol, "rtol", minimum=0.0, strict=True, optional=True)
        C.integer(self.max_dense_size, "max_dense_size", minimum=1)
        if self.woodbury is not None:
            C.flag(self.woodbury, "woodbury")

    def check_supported(self, op) -> None:
        if isinstance(op, MatrixFree) and op.size > self.max_dense_size:
            raise OperatorTooLargeError(
                f"Exact would materialize a {op.size}×{op.size} matrix from a matrix-free operator "
                f"(max_dense_size={self.max_dense_size}); use invhvp.CG() instead, or raise "
                "max_dense_size if that much memory is acceptable"
            )
        if factorize.dispatch(type(op)) is factorize.dispatch(object):
            raise UnsupportedOperatorError(
                f"Exact has no factorization registered for {type(op).__name__}; use invhvp.CG()"
            )

    def _factor(self, counted, damping, rng=None):
        self.check_supported(counted.op)
        fac = factorize(counted.op, float(damping), counted, self)
        return ExactInverse(self, counted, float(damping), fac)


class ExactInverse(Inverse):
    """A factorization of ``A + λI`` with a condition estimate (see :class:`Exact`)."""

    kind = "direct"

    def __init__(self, solver: Exact, counted, lam: float, fac):
        super().__init__(solver, counted, lam, {"method": fac.method})
        self.fac = fac
        op = counted.op
        u = Bk.eps(op.dtype)
        self.rtol = solver.rtol if solver.rtol is not None else DEFAULT_RTOL[8 if u < 1e-10 else 4]
        norm = power_norm(op.xp, fac.apply_matrix, op.size, op.dtype, op.device)
        self.norm_estimate = norm  # before lam_lower(), which would otherwise estimate it again
        inv_norm = power_norm(op.xp, fac.apply, op.size, op.dtype, op.device)
        lo = self.lam_lower()
        if lo is not None and lo > 0:
            inv_norm = min(2.0 * inv_norm, 1.0 / lo)  # 2× safety on a Rayleigh (lower) estimate
        else:
            inv_norm = 2.0 * inv_norm
        if not (np.isfinite(inv_norm) and np.isfinite(norm)) or inv_norm == 0.0 or norm == 0.0:
            raise NonFiniteError(
                "the factorization or the operator produced non-finite or zero products; check the operator "
                "and the damping (the problem may be out of the dtype's range)"
            )
        self.inv_norm = inv_norm
        cond = norm * inv_norm
        # float32 with float64 products from structure: the error is measured per right-hand side
        # (refine.py); otherwise the worst case 3·u·κ decides the setup status
        # (sound while κ·u < 1/2: the correction is computed with relative error about κ·u)
        self.refined = u > 1e-10 and type(op).matmat64 is not Operator.matmat64 and 3.0 * u * cond <= 0.5
        self.info.update(
            condition_estimate=cond,
            inverse_norm_estimate=inv_norm,
            rtol=self.rtol,
            predicted_error=3.0 * u * cond,
            error_estimate_method=(
                "float64 residual + one correction with the factor" if self.refined else "‖(A+λI)⁻¹‖·(‖r‖+δ)/‖x‖"
            ),
        )
        self._form = None
        if not self.refined and not 3.0 * u * cond <= self.rtol:
            self.setup_status = Status.INACCURATE
            self.info["advice"] = (
                f"condition estimate {cond:.3g} in {op.dtype} (unit roundoff {u:.2g}) allows a relative error "
                f"up to about {3 * u * cond:.2g} > rtol={self.rtol:g}: use float64 or more damping"
            )

    def _apply(self, B):
        from .base import Outcome

        X = self.fac.apply(B)
        if not self.refined:
            return Outcome(x=X)
        R = residual64(self.operator, float(self.damping), B, X)
        if R is None:  # a composite whose parts lack float64 products: the front end's check decides
            return Outcome(x=X)
        est = refined_errors(self.operator, self.fac.apply, R, X)
        info = {"error_estimate": est}
        # the float64 residual is the check's residual too (more accurate than one in float32)
        k = int(B.shape[1])
        # the measured estimate decides even when the caller skips the residual check
        if np.all(est <= self.rtol):
            return Outcome(x=X, info=info, residual=R, check_matvec=k)
        info["advice"] = (
            f"estimated relative error {float(np.max(est)):.3g} > rtol={self.rtol:g} (condition estimate "
            f"{self.info['condition_estimate']:.3g}): use float64 or more damping"
        )
        return Outcome(x=X, status=Status.INACCURATE, info=info, residual=R, check_matvec=k)

    def _verify(self, out, chk):
        est = out.info.get("error_estimate")
        if est is None:
            est = self.inv_norm * (chk.r + chk.delta) / np.maximum(chk.x, 1e-300)
        info = {"error_estimate": est, "rtol": self.rtol}
        if np.all(est <= self.rtol):
            return Status.SUCCESS, info
        worst = float(np.max(est))
        info["advice"] = (
            f"estimated relative error {worst:.3g} > rtol={self.rtol:g} "
            f"(condition estimate {self.info['condition_estimate']:.3g}"
            + (
                "; the residual is far above rounding: the operator's products may be random "
                "(dropout in train mode?) or inconsistent"
                if float(np.max(chk.r / np.maximum(chk.b, 1e-300))) > 1e3 * chk.u * self.info["condition_estimate"]
                else "; use float64 or more damping"
            )
            + ")"
        )
        return Status.INACCURATE, info

    def _quad_own(self, T, chunk_size):
        out = self.fac.quad_own(T, chunk_size)
        if out is not None and self.refined:  # measured on (a spread of at most 64 of) its own rows
            self._measure(_spread(T).T)
        return out

    def _diag_own(self, chunk_size):
        out = self.fac.diag_own(chunk_size)
        if out is not None and self.refined:  # a spread of at most 64 of the rows
            self._measure(_spread(self.operator.factor).T)
        return out

    def _measure(self, B):
        X = self.fac.apply(B)
        est = refined_errors(self.operator, self.fac.apply, residual64(self.operator, float(self.damping), B, X), X)
        worst = float(np.max(est))
        if worst <= self.rtol:
            self._form = (Status.SUCCESS, {"error_estimate": est})
        else:
            self._form = (Status.INACCURATE, {
                "error_estimate": est,
                "advice": f"estimated relative error {worst:.3g} > rtol={self.rtol:g} on these rows "
                f"(condition estimate {self.info['condition_estimate']:.3g}): use float64 or more damping",
            })

    def _closed_form_policy(self, policy, results, what):
        if self._form is None:
            return super()._closed_form_policy(policy, results, what)
        status, extra = self._form
        self._form = None
        from .inverse import _apply_policy

        if results is not None:
            results.append(SolveResult(None, status, 0, 0, None, {**self.info, **extra, "closed_form": what}))
        _apply_policy(status, f"exact: {status.value}: {extra.get('advice', '')}", policy)

    def quad_diag(self, rows=None, *, chunk_size=None, on_failure=None, results=None, progress=None):
        """``diag(G (A + λI)⁻¹ Gᵀ)``; with a Cholesky factor ``LLᵀ`` and explicit rows this is
        ``‖L⁻¹ g_i‖²``: one triangular solve per chunk of rows instead of two."""
        own = getattr(self.operator, "factor", None) if rows is None else None
        if not isinstance(self.fac, _Cholesky) or (rows is None and own is None):
            return super().quad_diag(rows, chunk_size=chunk_size, on_failure=on_failure, results=results, progress=progress)
        from .inverse import FAILURE_POLICIES, _done

        policy = self.on_failure if on_failure is None else C.choice(on_failure, "on_failure", FAILURE_POLICIES)
        G = own if rows is None else self._rows_arg(rows, "rows")
        if self.refined:
            self._measure(_spread(G).T)
        xp = self.operator.xp
        parts = []
        for sl in row_chunks(int(G.shape[0]), rows_per_chunk(self.size, chunk_size)):
            Y = Bk.solve_triangular(xp, self.fac.L, G[sl, :].T)
            parts.append(xp.sum(Y * Y, axis=0))
        self._closed_form_policy(policy, results, "quad_diag")
        return _done(xp.concat(parts, axis=0), progress)


def _spread(U, at_most: int = 64):
    """At most ``at_most`` rows of ``U``, evenly spread (for measuring a closed form's accuracy)."""
    n = int(U.shape[0])
    if n <= at_most:
        return U
    idx = np.unique(np.linspace(0, n - 1, at_most).astype(np.int64))
    if Bk.is_torch(Bk.namespace(U)):
        import torch

        return U[torch.as_tensor(idx, device=U.device)]
    return U[idx]
