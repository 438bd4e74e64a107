"""Low-rank plus identity operators: ``shift·I + scale·UᵀU``."""

from __future__ import annotations

import numpy as np

from .. import _backend as B
from .. import _checks as C
from .._arrays import as_generator, gram64, row_sq_norms
from ..errors import OperatorTooLargeError, ShapeError
from .base import Operator, Spectrum, eigvalsh_host, rounding_allowance

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
        float32/float64 numpy array (a memory map works) or torch tensor, finite, ``n, d >= 1``.
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
        self.shift = C.real(shift, "shift", minimum=0.0)
        self.scale = 1.0 / n if scale is None else C.real(scale, "scale", minimum=0.0, strict=True)
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
        out = self.scale * (U.T @ (U @ V))
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
        # column sums of squares as a fused reduction: no n×d temporary
        return self.shift + self.scale * row_sq_norms(self.factor.T)

    # ------------------------------------------------------------ structure protocol
    def trace(self) -> float:
        return self.shift * self._size + self.scale * float(self._xp.sum(row_sq_norms(self.factor, dtype=self._xp.float64)))

    def matmat64(self, V64):
        from .._arrays import row_chunks, rows_per_chunk

        xp, U = self._xp, self.factor
        acc = None
        for sl in row_chunks(self.n_rows, rows_per_chunk(self._size)):
            Uc = xp.astype(U[sl, :], xp.float64)
            term = Uc.T @ (Uc @ V64)
            acc = term if acc is None else acc + term
        out = self.scale * acc
        return out + self.shift * V64 if self.shift != 0.0 else out

    def eig_lower(self) -> float:
        return self.shift

    def spectrum(self, max_dim: int = 8192) -> Spectrum:
        """Eigenvalues from the smaller Gram side: ``n×n`` ``sUUᵀ`` or ``d×d`` ``sUᵀU``.

        Cost ``O(min(n, d)² max(n, d))``; when ``n < d`` the remaining ``d − n``
        eigenvalues equal ``shift``.
        """
        U = self.factor
        n, d = (int(v) for v in U.shape)
        m = min(n, d)
        if m > max_dim:
            raise OperatorTooLargeError(f"spectrum: the {m}×{m} eigenproblem exceeds max_dim={max_dim}")
        ev = self.scale * eigvalsh_host(self._xp, gram64(U) if n <= d else gram64(U.T))
        values = np.concatenate([ev + self.shift, [self.shift]]) if n < d else ev + self.shift
        counts = np.concatenate([np.ones(m), [d - n]]) if n < d else np.ones(m)
        return Spectrum(values, counts, rounding_allowance(ev, m, self._dtype))

    # ------------------------------------------------------------ mini-batches (LiSSA)
    @property
    def n_samples(self) -> int:
        return self.n_rows

    @property
    def supports_minibatch(self) -> bool:
        return True

    def sample_second_moment_trace(self) -> float:
        """``tr E[(g gᵀ)²] = mean_i ‖g̃_i‖⁴`` with ``g̃_i = sqrt(n·scale)·u_i`` (shift excluded)."""
        r = (self.scale * self.n_rows) * row_sq_norms(self.factor, dtype=self._xp.float64)
        return float(self._xp.mean(r * r))

    def minibatch_indices(self, batch_size: int, rng):
        """``batch_size`` row indices drawn uniformly *with replacement* (numpy int64, host).

        Drawn on the host from the numpy ``rng`` so that numpy and torch operators see the
        same rows for the same seed; only ``batch_size`` integers move to the device.
        """
        b = C.integer(batch_size, "batch_size", minimum=1)
        return as_generator(rng).integers(0, self.n_rows, size=b)

    def minibatch(self, batch_size: int, rng, *, indices=None) -> LowRankPlusIdentity:
        r"""An independent, unbiased mini-batch estimate ``Ã`` of this operator.

        .. math:: Ã = μI + \frac{s\,n}{B} \sum_{j \in \text{batch}} u_j u_j^T,
                  \qquad E\,Ã = μI + s\,U^TU,

        with the ``B`` rows drawn uniformly with replacement (``indices`` overrides the
        draw).  Costs ``O(B d)`` to gather the rows; a product then costs ``O(B d k)``.
        """
        idx = self.minibatch_indices(batch_size, rng) if indices is None else np.asarray(indices)
        nb = int(idx.size)
        if nb < 1:
            raise ShapeError("indices: expected at least one row index")
        if B.is_torch(self._xp):
            import torch

            rows = self.factor[torch.as_tensor(idx, device=self._device)]
        else:
            rows = self.factor[idx]
        return self._rows_of(rows, self.scale * self.n_rows / nb)

    def _rows_of(self, rows, scale) -> LowRankPlusIdentity:
        """An operator over rows of this (already validated) factor: no second pass over the data."""
        out = object.__new__(LowRankPlusIdentity)
        out.factor, out.shift, out.scale = rows, self.shift, float(scale)
        out._xp, out._size, out._dtype, out._device, out._psd = self._xp, self._size, self._dtype, self._device, True
        return out
