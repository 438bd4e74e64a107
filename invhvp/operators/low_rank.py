"""Low-rank plus identity operators: ``shift·I + scale·UᵀU``."""

from __future__ import annotations

from .. import _backend as B
from ..errors import InputError, ShapeError
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
        xp, n, d = B.check_factor(factor, "factor")
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
        from .._arrays import row_sq_norms

        # column sums of squares as a fused reduction: no n×d temporary
        return self.shift + self.scale * row_sq_norms(self.factor.T)

    def gram(self):
        """The ``n×n`` matrix ``U Uᵀ`` (costs ``O(n² d)``)."""
        U = self.factor
        return U @ U.T

    def with_shift(self, shift: float) -> LowRankPlusIdentity:
        """The same factor with another ``shift`` (no copy of the factor)."""
        return LowRankPlusIdentity(self.factor, shift=shift, scale=self.scale)

    # ------------------------------------------------------------ mini-batches (LiSSA)
    @property
    def supports_minibatch(self) -> bool:
        """Whether :meth:`minibatch` is available (always, for a low-rank factor)."""
        return True

    @property
    def n_samples(self) -> int:
        """Number of samples ``n`` whose average the operator is (``n_rows``)."""
        return self.n_rows

    def minibatch_indices(self, batch_size: int, rng):
        """``batch_size`` row indices drawn uniformly *with replacement* (numpy int64, host).

        Drawn on the host from the numpy ``rng`` so that numpy and torch operators
        see the same rows for the same seed; only ``batch_size`` integers are moved
        to the device.
        """
        import numpy as np

        from .._arrays import as_generator

        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        return as_generator(rng).integers(0, self.n_rows, size=int(batch_size))

    def minibatch(self, batch_size: int, rng, *, indices=None) -> LowRankPlusIdentity:
        r"""An independent, unbiased mini-batch estimate ``Ã`` of this operator.

        .. math:: Ã = μI + \frac{s\,n}{B} \sum_{j \in \text{batch}} u_j u_j^T,
                  \qquad E\,Ã = μI + s\,U^TU,

        with the ``B`` rows drawn uniformly with replacement (``indices`` overrides the
        draw, e.g. to route global indices to shards: the product is a sum over rows,
        so shard operators holding disjoint rows add up).  Costs ``O(B d)`` to gather
        the rows; a product then costs ``O(B d k)``.
        """
        xp = self._xp
        idx = self.minibatch_indices(batch_size, rng) if indices is None else indices
        nb = int(len(idx))
        if nb < 1:
            raise ShapeError("indices: expected at least one row index")
        if B.is_torch(xp):
            import torch

            rows = self.factor[torch.as_tensor(idx, device=self._device)]
        else:
            rows = self.factor[idx]
        return LowRankPlusIdentity(rows, shift=self.shift, scale=self.scale * self.n_rows / nb)
