"""Matrix-free operators (Hessian-vector products from autograd, or any callable)."""

from __future__ import annotations

from .. import _backend as B
from ..errors import DTypeError, InputError, ShapeError
from .base import Operator

__all__ = ["MatrixFree"]


class MatrixFree(Operator):
    """An operator known only through products ``v ↦ A v`` (e.g. an HVP from autograd).

    Parameters
    ----------
    matvec : callable
        ``matvec(v)`` for ``v`` of shape ``(size,)`` returns ``A v`` of the same shape,
        dtype and device.  ``A`` must be symmetric.
    size : int
        Dimension ``d``.
    dtype : numpy or torch dtype
        float32 or float64.  A torch dtype makes this a torch operator.
    device : optional
        Torch device (ignored for numpy; default CPU).
    psd : bool, default True
        Whether ``A`` is positive semidefinite (a Gauss-Newton product is; a Hessian may not be).
    matmat : callable, optional
        ``matmat(V)`` for ``V`` of shape ``(size, k)``.  Without it, a product with ``k``
        vectors calls ``matvec`` ``k`` times: supply it (e.g. with ``torch.func.vmap``)
        for speed.
    diagonal : array, optional
        The diagonal of ``A``, if known (enables Jacobi preconditioning).

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> A = ih.MatrixFree(lambda v: 2.0 * v, size=3, dtype=np.float64)
    >>> A.matvec(np.ones(3))
    array([2., 2., 2.])
    """

    def __init__(self, matvec, size, dtype, *, device=None, psd=True, matmat=None, diagonal=None):
        if not callable(matvec):
            raise InputError(f"matvec: expected a callable, got {type(matvec).__name__}")
        if matmat is not None and not callable(matmat):
            raise InputError(f"matmat: expected a callable or None, got {type(matmat).__name__}")
        if isinstance(size, bool) or not hasattr(size, "__index__"):
            raise InputError(f"size: expected a positive int, got {size!r}")
        size = int(size.__index__())
        if size < 1:
            raise InputError(f"size: expected a positive int, got {size}")
        dtype = B.normalize_dtype(dtype)
        xp = B.namespace_of_dtype(dtype)
        if B.is_torch(xp):
            import torch

            device = torch.device("cpu") if device is None else torch.device(device)
        else:
            if device not in (None, "cpu"):
                raise InputError(f"device: numpy operators live on the CPU, got {device!r}")
            device = "cpu"
        self._user_matvec = matvec
        self._user_matmat = matmat
        self._xp = xp
        self._size = size
        self._dtype = dtype
        self._device = device
        self._psd = bool(psd)
        if diagonal is not None:
            self._check_operand(diagonal, "diagonal", ndim=1)
        self._diag = diagonal

    def _matmat(self, V):
        k = V.shape[1]
        if self._user_matmat is not None:
            out = self._user_matmat(V)
            want = (self._size, k)
        elif k == 1:
            out = self._user_matvec(V[:, 0])
            want = (self._size,)
            self._check_output(out, want)
            return out[:, None]
        else:
            out = self._xp.stack([self._user_matvec(V[:, j]) for j in range(k)], axis=1)
            want = (self._size, k)
        self._check_output(out, want)
        return out

    def _check_output(self, out, want):
        if tuple(getattr(out, "shape", ())) != want:
            raise ShapeError(
                f"matvec/matmat callable returned shape {tuple(getattr(out, 'shape', ()))}, "
                f"expected {want}"
            )
        if out.dtype != self._dtype:
            raise DTypeError(
                f"matvec/matmat callable returned dtype {out.dtype}, expected {self._dtype}"
            )

    def to_dense(self):
        xp = self._xp
        return self._matmat(xp.eye(self._size, dtype=self._dtype, device=self._device))

    def diagonal(self):
        if self._diag is None:
            return super().diagonal()
        return self._diag
