"""Dense symmetric matrices."""

from __future__ import annotations

import numpy as np

from .. import _backend as B
from .. import _checks as C
from ..errors import NotSymmetricError, OperatorTooLargeError, ShapeError
from .base import Operator, Spectrum, eigvalsh_host, rounding_allowance

__all__ = ["Dense"]


class Dense(Operator):
    """A dense symmetric ``d×d`` matrix.

    Parameters
    ----------
    matrix : array, shape (d, d)
        float32 or float64 numpy array or torch tensor (any device).
    psd : bool, default True
        Whether ``matrix`` is positive semidefinite (a Gauss-Newton or Fisher
        matrix is; a Hessian of a non-convex loss may not be).  Solvers that need
        positive definiteness of ``A + λI`` still detect failure themselves.
    symmetry_rtol : float, optional
        Symmetry is checked as ``max|A − Aᵀ| <= symmetry_rtol · max|A|``;
        default ``1000 · eps(dtype)``; must be a finite number in ``[0, 1)``.  The
        matrix is stored as given (not symmetrized).

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> A = ih.Dense(np.array([[2.0, 1.0], [1.0, 2.0]]))
    >>> A.matvec(np.array([1.0, 0.0]))
    array([2., 1.])
    """

    def __init__(self, matrix, *, psd: bool = True, symmetry_rtol: float | None = None):
        xp = B.check_array(matrix, "matrix")
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ShapeError(f"matrix: expected a square 2-D array, got shape {tuple(matrix.shape)}")
        if matrix.shape[0] == 0:
            raise ShapeError("matrix: expected a non-empty matrix, got shape (0, 0)")
        psd = C.flag(psd, "psd")
        tol = C.real(symmetry_rtol, "symmetry_rtol", minimum=0.0, maximum=1.0, strict_max=True, optional=True)
        B.check_finite(xp, matrix, "matrix")
        tol = 1000 * B.eps(matrix.dtype) if tol is None else tol
        scale = float(xp.max(xp.abs(matrix)))
        asym = float(xp.max(xp.abs(matrix - matrix.T)))
        if not asym <= tol * scale:
            raise NotSymmetricError(
                f"matrix: not symmetric: max|A - A^T| = {asym:.3g} exceeds "
                f"symmetry_rtol·max|A| = {tol * scale:.3g}"
            )
        self.matrix = matrix
        self._xp = xp
        self._size = int(matrix.shape[0])
        self._dtype = matrix.dtype
        self._device = B.device_of(matrix)
        self._psd = psd

    def _matmat(self, V):
        return self.matrix @ V

    def to_dense(self):
        return self.matrix

    def diagonal(self):
        return self._xp.linalg.diagonal(self.matrix)

    def spectrum(self, max_dim: int = 8192) -> Spectrum:
        if self._size > max_dim:
            raise OperatorTooLargeError(f"spectrum: the {self._size}×{self._size} eigenproblem exceeds max_dim={max_dim}")
        ev = eigvalsh_host(self._xp, self.matrix)
        return Spectrum(ev, np.ones_like(ev), rounding_allowance(ev, self._size, self._dtype))

    def matmat64(self, V64):
        from .._arrays import row_chunks, rows_per_chunk

        xp = self._xp
        parts = [xp.astype(self.matrix[sl, :], xp.float64) @ V64 for sl in row_chunks(self._size, rows_per_chunk(self._size))]
        return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
