"""Operators from other libraries' objects: scipy in (re-exported as ``invhvp.interop.from_scipy``)."""

from __future__ import annotations

import numpy as np

from .. import _backend as Bk
from .. import _checks as C
from ..errors import DTypeError, NonFiniteError, NotSymmetricError, ShapeError
from .base import Operator
from .dense import Dense
from .matrix_free import MatrixFree

__all__ = ["from_scipy"]


def _is_sparse(x) -> bool:
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover - scipy is a dependency
        return False
    return sp.issparse(x)


def _is_linear_operator(x) -> bool:
    from scipy.sparse.linalg import LinearOperator

    return isinstance(x, LinearOperator)


def from_scipy(A, *, psd: bool = True, name: str = "operator") -> Operator:
    """An invhvp operator for ``A``: a scipy ``LinearOperator``, a scipy sparse matrix/array, or a
    2-D numpy array / torch tensor (as :class:`~invhvp.Dense`).

    ``A`` must be square and symmetric (a sparse matrix is checked: ``‖A − Aᵀ‖_max`` against
    ``1000·eps·‖A‖_max``; a ``LinearOperator`` is taken on trust, and the status of a solve
    reports a residual that contradicts it).  ``psd`` declares positive semidefiniteness, as for
    :class:`~invhvp.Dense`.  A sparse matrix keeps its sparsity: products are sparse products,
    Jacobi preconditioning uses its diagonal; its dtype must be float32 or float64.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, invhvp as ih
    >>> A = sp.diags([2.0, 3.0, 4.0]).tocsr()
    >>> ih.solve(A, np.ones(3), ih.CG(rtol=1e-12), damping=1.0).x
    array([0.33333333, 0.25      , 0.2       ])
    """
    psd = C.flag(psd, "psd")
    if isinstance(A, Operator):
        return A
    if _is_sparse(A):
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ShapeError(f"{name}: expected a square sparse matrix, got shape {A.shape}")
        dtype = Bk.normalize_dtype(A.dtype)
        A = A.tocsr()
        if A.nnz and not np.all(np.isfinite(A.data)):
            raise NonFiniteError(f"{name}: the sparse matrix has NaN or infinite entries")
        scale = float(abs(A).max()) if A.nnz else 0.0
        asym = float(abs(A - A.T).max()) if A.nnz else 0.0
        if asym > 1000 * Bk.eps(dtype) * scale:
            raise NotSymmetricError(f"{name}: the sparse matrix is not symmetric (max|A − Aᵀ| = {asym:.3g})")
        return MatrixFree(
            lambda v: np.asarray(A @ v, dtype=dtype),
            A.shape[0],
            dtype,
            matmat=lambda V: np.asarray(A @ V, dtype=dtype),
            diagonal=np.asarray(A.diagonal(), dtype=dtype),
            psd=psd,
        )
    if _is_linear_operator(A):
        if len(A.shape) != 2 or A.shape[0] != A.shape[1]:
            raise ShapeError(f"{name}: expected a square LinearOperator, got shape {A.shape}")
        if A.dtype is None:
            raise DTypeError(f"{name}: the LinearOperator has no dtype; construct it with dtype=np.float64")
        dtype = Bk.normalize_dtype(A.dtype)
        return MatrixFree(
            lambda v: np.asarray(A.matvec(v), dtype=dtype).reshape(-1),
            A.shape[0],
            dtype,
            matmat=lambda V: np.asarray(A.matmat(V), dtype=dtype),
            psd=psd,
        )
    if hasattr(A, "shape") and hasattr(A, "dtype") and getattr(A, "ndim", None) == 2:
        return Dense(A, psd=psd)
    raise DTypeError(
        f"{name}: expected an invhvp operator, a scipy LinearOperator or sparse matrix, or a 2-D numpy "
        f"array / torch tensor, got {type(A).__name__}"
    )
