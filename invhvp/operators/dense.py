"""Dense symmetric matrices."""

from __future__ import annotations

from .. import _backend as B
from ..errors import NotSymmetricError, ShapeError
from .base import Operator

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
        default ``1000 · eps(dtype)``.  The matrix is stored as given (not
        symmetrized).

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> A = ih.Dense(np.array([[2.0, 1.0], [1.0, 2.0]]))
    >>> A.matvec(np.array([1.0, 0.0]))
    array([2., 1.])
    """

    def __init__(self, matrix, *, psd: bool = True, symmetry_rtol: float | None = None):
        xp = B.namespace(matrix)
        B.check_float_dtype(matrix, "matrix")
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ShapeError(f"matrix: expected a square 2-D array, got shape {tuple(matrix.shape)}")
        if matrix.shape[0] == 0:
            raise ShapeError("matrix: expected a non-empty matrix, got shape (0, 0)")
        B.check_finite(xp, matrix, "matrix")
        tol = 1000 * B.eps(matrix.dtype) if symmetry_rtol is None else float(symmetry_rtol)
        scale = float(xp.max(xp.abs(matrix)))
        asym = float(xp.max(xp.abs(matrix - matrix.T)))
        if asym > tol * scale:
            raise NotSymmetricError(
                f"matrix: not symmetric: max|A - A^T| = {asym:.3g} exceeds "
                f"symmetry_rtol·max|A| = {tol * scale:.3g}"
            )
        self.matrix = matrix
        self._xp = xp
        self._size = int(matrix.shape[0])
        self._dtype = matrix.dtype
        self._device = B.device_of(matrix)
        self._psd = bool(psd)

    def _matmat(self, V):
        return self.matrix @ V

    def to_dense(self):
        return self.matrix

    def diagonal(self):
        return self._xp.linalg.diagonal(self.matrix)
