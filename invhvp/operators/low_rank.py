"""Low-rank plus identity operators: ``shift·I + scale·UᵀU``."""

from __future__ import annotations

from .. import _backend as B
from ..errors import ShapeError
from .base import Operator

__all__ = ["LowRankPlusIdentity"]


class LowRankPlusIdentity(Operator):
    r"""``A = shift·I + scale·UᵀU`` with ``U`` an ``n×d`` factor (rows = per-sample gradients).

    With the default ``scale = 1/n`` this is the (empirical Fisher / Gauss-Newton)
    Gram matrix ``G = (1/n) Σ_i g_i g_iᵀ`` plus ``shift·I``.  A solve's
    ``damping`` is added on top of ``shift``.

    No ``d×d`` matrix is ever formed except by :meth:`to_dense`: a product costs
    ``O(n d k)`` for ``k`` vectors.

    Parameters
    ----------
    factor : array, shape (n, d)
        float32/float64 numpy array or torch tensor, finite, ``n, d >= 1``.
    shift : float, default 0.0
        Non-negative multiple of the identity.
    scale : float, optional
        Positive weight of ``UᵀU``; default ``1/n``.  When the rows are one shard of a
        larger training set, pass ``scale=1/n_total`` so that shard operators add up.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> U = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    >>> A = ih.LowRankPlusIdentity(U, shift=1.0)   # I + (1/2) UᵀU
    >>> A.matvec(np.array([1.0, 1.0, 1.0]))
    array([1.5, 3. , 1. ])
    """

    def __init__(self, factor, shift: float = 0.0, scale: float | None = None):
        xp = B.namespace(factor)
        B.check_float_dtype(factor, "factor")
        if factor.ndim != 2:
            raise ShapeError(f"factor: expected a 2-D (n, d) array, got shape {tuple(factor.shape)}")
        n, d = (int(s) for s in factor.shape)
        if n == 0 or d == 0:
            raise ShapeError(f"factor: expected at least one row and one column, got shape ({n}, {d})")
        B.check_finite(xp, factor, "factor")
        self.shift = B.finite_scalar(shift, "shift", minimum=0.0)
        if scale is None:
            scale = 1.0 / n
        self.scale = B.finite_scalar(scale, "scale", minimum=0.0, strict=True)
        self.factor = factor
        self._xp = xp
        self._size = d
        self._dtype = factor.dtype
        self._device = B.device_of(factor)
        self._psd = True

    @property
    def n_rows(self) -> int:
        """Number of rows ``n`` of the factor (training points)."""
        return int(self.factor.shape[0])

    def _matmat(self, V):
        U = self.factor
        out = U.T @ (U @ V)
        out = self.scale * out
        if self.shift != 0.0:
            out = out + self.shift * V
        return out

    def to_dense(self):
        xp, U = self._xp, self.factor
        G = self.scale * (U.T @ U)
        if self.shift != 0.0:
            G = G + self.shift * xp.eye(self._size, dtype=self._dtype, device=self._device)
        return G

    def diagonal(self):
        xp = self._xp
        return self.shift + self.scale * xp.sum(self.factor * self.factor, axis=0)

    def gram(self):
        """The ``n×n`` matrix ``U Uᵀ`` (costs ``O(n² d)``)."""
        U = self.factor
        return U @ U.T

    def with_shift(self, shift: float) -> "LowRankPlusIdentity":
        """The same factor with another ``shift`` (no copy of the factor)."""
        return LowRankPlusIdentity(self.factor, shift=shift, scale=self.scale)


