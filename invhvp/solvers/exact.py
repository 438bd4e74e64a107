"""Exact (direct) solves: Cholesky, Woodbury, per block."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .. import _backend as Bk
from ..errors import (
    InputError,
    NonFiniteError,
    NotPositiveDefiniteError,
    NotSymmetricError,
    OperatorTooLargeError,
)
from ..operators import BlockDiagonal, Dense, LowRankPlusIdentity, MatrixFree, Operator
from .base import Counted, Outcome, Solver, damping_for_blocks

__all__ = ["Exact"]


@dataclass(frozen=True)
class Exact(Solver):
    r"""Direct solve of ``(A + λI) X = B`` that uses the operator's structure.

    - :class:`~invhvp.Dense`: Cholesky of ``A + λI`` (``O(d³)``); failure raises
      :class:`~invhvp.errors.NotPositiveDefiniteError` (no jitter is added).
    - :class:`~invhvp.LowRankPlusIdentity` ``μI + s·UᵀU`` (``U`` is ``n×d``), with ``c = μ + λ``:
      when ``n < d``, Woodbury

      .. math:: (cI + sU^TU)^{-1} b = \tfrac1c\,[\,b - U^T (\tfrac{c}{s} I_n + UU^T)^{-1} U b\,]

      costing ``O(n²d + n³ + ndk)`` and never forming a ``d×d`` matrix; otherwise
      Cholesky of the ``d×d`` matrix (``O(nd² + d³)``).
    - :class:`~invhvp.BlockDiagonal`: each block on its own, with its own damping.
    - :class:`~invhvp.MatrixFree`: materialized with ``d`` matvecs and factorized, only
      when ``d <= max_dense_size``; larger operators are refused (use :class:`~invhvp.CG`).

    Parameters
    ----------
    max_dense_size : int, default 4096
        Largest ``d`` for which a matrix-free operator may be materialized.
    woodbury : bool or None, default None
        Force (True) or forbid (False) Woodbury for low-rank operators; ``None`` picks
        Woodbury exactly when ``n < d``.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> U = np.random.default_rng(0).standard_normal((5, 1000))
    >>> res = ih.solve(ih.LowRankPlusIdentity(U), np.ones(1000), ih.Exact(), damping=0.1)
    >>> res.info["method"], bool(res.residual_norm < 1e-10)
    ('woodbury', True)
    """

    max_dense_size: int = 4096
    woodbury: bool | None = None
    name = "exact"

    def __post_init__(self):
        if isinstance(self.max_dense_size, bool) or not isinstance(self.max_dense_size, int) or self.max_dense_size < 1:
            raise InputError(f"max_dense_size: expected a positive int, got {self.max_dense_size!r}")
        if self.woodbury not in (None, True, False):
            raise InputError(f"woodbury: expected None, True or False, got {self.woodbury!r}")

    def _check_supported(self, op: Operator) -> None:
        if isinstance(op, BlockDiagonal):
            for b in op.blocks:
                self._check_supported(b)
        elif isinstance(op, MatrixFree) and op.size > self.max_dense_size:
            raise OperatorTooLargeError(
                f"Exact would materialize a {op.size}×{op.size} matrix from a matrix-free operator "
                f"(max_dense_size={self.max_dense_size}); use invhvp.CG() instead, or raise "
                "max_dense_size if that much memory is acceptable"
            )

    def _run(self, counted: Counted, B, damping) -> Outcome:
        info: dict = {}
        X = _exact(counted.op, B, damping, counted, self, info)
        return Outcome(x=X, n_iter=0, info=info)


@functools.singledispatch
def _exact(op, B, damping, counted, cfg, info):
    raise OperatorTooLargeError(  # pragma: no cover - every concrete operator is registered
        f"Exact does not know how to solve with {type(op).__name__}; use invhvp.CG()"
    )


def _cholesky_solve(xp, M, B, what):
    L = Bk.cholesky(xp, M, what)
    return Bk.cho_solve(xp, L, B)


def _shifted(xp, M, lam):
    if lam == 0.0:
        return M
    d = M.shape[0]
    return M + lam * xp.eye(d, dtype=M.dtype, device=Bk.device_of(M))


@_exact.register
def _(op: Dense, B, damping, counted, cfg, info):
    xp = op.xp
    info["method"] = "cholesky"
    return _cholesky_solve(xp, _shifted(xp, op.matrix, float(damping)), B, "matrix A + damping·I")


@_exact.register
def _(op: LowRankPlusIdentity, B, damping, counted, cfg, info):
    xp, U = op.xp, op.factor
    n, d = U.shape
    c = op.shift + float(damping)
    use_woodbury = (n < d) if cfg.woodbury is None else cfg.woodbury
    if use_woodbury:
        if c <= 0.0:
            raise NotPositiveDefiniteError(
                f"LowRankPlusIdentity has rank <= n = {n} < d = {d} and shift + damping = {c}: "
                "the matrix is singular; pass damping > 0"
            )
        info["method"] = "woodbury"
        K = _shifted(xp, U @ U.T, c / op.scale)
        Y = _cholesky_solve(xp, K, U @ B, "n×n capacitance matrix (c/s)·I + U Uᵀ")
        return (B - U.T @ Y) / c
    info["method"] = "cholesky"
    return _cholesky_solve(xp, _shifted(xp, op.scale * (U.T @ U), c), B, "matrix A + damping·I")


@_exact.register
def _(op: BlockDiagonal, B, damping, counted, cfg, info):
    xp = op.xp
    lams = damping_for_blocks(op, damping)
    parts, methods = [], []
    for blk, Bi, lam in zip(op.blocks, op.split(B), lams):
        sub: dict = {}
        parts.append(_exact(blk, Bi, lam, counted.wrap(blk), cfg, sub))
        methods.append(sub)
    info["method"] = "block-diagonal"
    info["blocks"] = methods
    return xp.concat(parts, axis=0)


@_exact.register
def _(op: MatrixFree, B, damping, counted, cfg, info):
    cfg._check_supported(op)
    xp = op.xp
    M = counted.matmat(xp.eye(op.size, dtype=op.dtype, device=op.device))
    if not bool(xp.all(xp.isfinite(M))):
        raise NonFiniteError("the matrix-free operator's matvec returned NaN or infinite values")
    scale = float(xp.max(xp.abs(M)))
    asym = float(xp.max(xp.abs(M - M.T)))
    if asym > 1000 * Bk.eps(op.dtype) * max(scale, 1e-300) * op.size**0.5:
        raise NotSymmetricError(
            f"the matrix-free operator is not symmetric: max|A - A^T| = {asym:.3g} "
            f"(max|A| = {scale:.3g}); check its matvec"
        )
    info["method"] = "materialized-cholesky"
    return _cholesky_solve(xp, _shifted(xp, M, float(damping)), B, "materialized matrix A + damping·I")
