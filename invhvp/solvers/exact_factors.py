"""Exact factorizations by operator type: Cholesky, Woodbury and its push-through forms (docs/theory.md §3).

One home for the exact formulas.  ``factorize`` dispatches on the operator type
(``functools.singledispatch``): a new operator registers its factorization here, and
``exact_cost`` tells the automatic choice whether a direct solve is cheap.
"""

from __future__ import annotations

import functools

from .. import _backend as Bk
from .._arrays import random_matrix, row_chunks, rows_per_chunk
from ..errors import (
    InputError,
    NonFiniteError,
    NotPositiveDefiniteError,
    NotSymmetricError,
    UnsupportedOperatorError,
)
from ..operators import BlockDiagonal, Dense, LowRankPlusIdentity, MatrixFree

__all__ = ["factorize", "exact_cost", "AUTO_DENSE_MAX"]

#: Largest dense / small-side dimension the automatic choice factorizes (Cholesky is O(m³)).
AUTO_DENSE_MAX = 4096


# ----------------------------------------------------------------------------- factors
class _Cholesky:
    """``M = A + λI`` held dense with its lower Cholesky factor (primal route)."""

    def __init__(self, M, what: str):
        self.xp = Bk.namespace(M)
        self.M = M
        self.L = Bk.cholesky(self.xp, M, what)
        self.method = "cholesky"

    def apply(self, B):
        return Bk.cho_solve(self.xp, self.L, B)

    def apply_matrix(self, V):
        return self.M @ V

    def quad_own(self, T, chunk_size):
        return None

    def diag_own(self, chunk_size):
        return None


class _Woodbury:
    """``M = cI + sUᵀU`` with ``n < d``, through the ``n×n`` capacitance ``c/s·I + UUᵀ`` (dual route)."""

    def __init__(self, op: LowRankPlusIdentity, c: float):
        xp, U = op.xp, op.factor
        self.xp, self.U, self.c, self.s = xp, U, c, op.scale
        self.K = U @ U.T
        n = int(U.shape[0])
        C_ = self.K + (c / self.s) * xp.eye(n, dtype=U.dtype, device=Bk.device_of(U))
        self.L = Bk.cholesky(xp, C_, "n×n capacitance matrix (c/s)·I + U Uᵀ")
        self.method = "woodbury"

    def apply(self, B):
        Y = Bk.cho_solve(self.xp, self.L, self.U @ B)
        return (B - self.U.T @ Y) / self.c

    def apply_matrix(self, V):
        return self.s * (self.U.T @ (self.U @ V)) + self.c * V

    def quad_own(self, T, chunk_size):
        # T (cI + sUᵀU)⁻¹ Uᵀ = (1/s) · T Uᵀ (c/s·I + UUᵀ)⁻¹   (push-through identity)
        xp, U = self.xp, self.U
        m, n = int(T.shape[0]), int(U.shape[0])
        out = xp.zeros((m, n), dtype=T.dtype, device=Bk.device_of(T))
        for sl in row_chunks(m, rows_per_chunk(max(n, int(U.shape[1])), chunk_size)):
            P = T[sl, :] @ U.T
            out[sl, :] = Bk.cho_solve(xp, self.L, P.T).T / self.s
        return out

    def diag_own(self, chunk_size):
        # u_iᵀ (cI + sUᵀU)⁻¹ u_i = (1/s) [K (c/s·I + K)⁻¹]_ii
        Y = Bk.cho_solve(self.xp, self.L, self.K)
        return self.xp.linalg.diagonal(Y) / self.s


def _shifted(M, lam):
    if lam == 0.0:
        return M
    xp = Bk.namespace(M)
    return M + lam * xp.eye(int(M.shape[0]), dtype=M.dtype, device=Bk.device_of(M))


@functools.singledispatch
def factorize(op, lam, counted, cfg):
    """Factor ``op + lam·I`` for :class:`Exact`; register a new operator type here."""
    raise UnsupportedOperatorError(f"Exact has no factorization for {type(op).__name__}; use invhvp.CG()")


@factorize.register
def _(op: Dense, lam, counted, cfg):
    return _Cholesky(_shifted(op.matrix, lam), "matrix A + damping·I")


@factorize.register
def _(op: LowRankPlusIdentity, lam, counted, cfg):
    n, d = op.factor.shape
    c = op.shift + lam
    if (n < d) if cfg.woodbury is None else cfg.woodbury:
        if c <= 0.0:
            raise NotPositiveDefiniteError(
                f"LowRankPlusIdentity has rank <= n = {n} < d = {d} and shift + damping = {c}: "
                "the matrix is singular; pass damping > 0"
            )
        counted.add(n)  # forming UUᵀ costs about n products with the operator
        return _Woodbury(op, c)
    counted.add(d)
    U = op.factor
    return _Cholesky(_shifted(op.scale * (U.T @ U), c), "matrix A + damping·I")


@factorize.register
def _(op: MatrixFree, lam, counted, cfg):
    xp = op.xp
    M = counted.matmat(xp.eye(op.size, dtype=op.dtype, device=op.device))
    if not bool(xp.all(xp.isfinite(M))):
        raise NonFiniteError("operator: the matrix-free operator's products returned NaN or infinite values")
    scale = float(xp.max(xp.abs(M)))
    asym = float(xp.max(xp.abs(M - M.T)))
    if asym > 1000 * Bk.eps(op.dtype) * max(scale, 1e-300) * op.size**0.5:
        raise NotSymmetricError(
            f"operator: the matrix-free operator is not symmetric: max|A - A^T| = {asym:.3g} "
            f"(max|A| = {scale:.3g}); check its matvec"
        )
    if op._user_matmat is not None:  # matvec and matmat must describe the same matrix
        z = random_matrix(xp, (op.size,), op.dtype, op.device, 7, kind="normal")
        counted.add(1)
        y = op._user_matvec(z)
        op._check_output(y, (op.size,))
        gap = float(xp.linalg.vector_norm(y - M @ z))
        if not gap <= 1e3 * Bk.eps(op.dtype) * op.size**0.5 * max(float(xp.linalg.vector_norm(M @ z)), scale):
            raise InputError(
                f"operator: its matvec and matmat disagree (‖matvec(z) − matmat(z)‖ = {gap:.3g} for a random z)"
            )
    fac = _Cholesky(_shifted(M, lam), "materialized matrix A + damping·I")
    fac.method = "materialized-cholesky"
    return fac


@functools.singledispatch
def exact_cost(op) -> float | None:
    """Flops of a direct solve of ``op`` when the automatic choice should take it, else ``None``."""
    return None


@exact_cost.register
def _(op: Dense):
    return op.size**3 / 3 if op.size <= AUTO_DENSE_MAX else None


@exact_cost.register
def _(op: LowRankPlusIdentity):
    n, d = (int(v) for v in op.factor.shape)
    m = min(n, d)
    return n * d * m + m**3 / 3 if m <= AUTO_DENSE_MAX else None


@exact_cost.register
def _(op: BlockDiagonal):
    costs = [exact_cost(b) for b in op.blocks]
    return None if any(c is None for c in costs) else sum(costs)
