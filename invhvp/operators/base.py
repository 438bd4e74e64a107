"""The operator protocol shared by every invhvp operator."""

from __future__ import annotations

import abc

from .. import _backend as B
from ..errors import ShapeError, UnsupportedOperatorError

__all__ = ["Operator"]


class Operator(abc.ABC):
    """A square, symmetric linear operator ``A`` of size ``d``.

    Subclasses set ``_xp`` (array-API namespace), ``_size``, ``_dtype``,
    ``_device`` and ``_psd`` in ``__init__`` and implement :meth:`_matmat`
    (no validation, ``V`` is ``(d, k)``) and :meth:`to_dense`.

    The public :meth:`matvec` and :meth:`matmat` validate their argument;
    solvers call the unvalidated ``_matmat`` inside their loops.  Damping is
    *not* part of the operator: solvers apply ``A + λI``.
    """

    _xp = None
    _size: int
    _dtype = None
    _device = None
    _psd: bool = True

    # ------------------------------------------------------------------ protocol
    @property
    def shape(self) -> tuple[int, int]:
        return (self._size, self._size)

    @property
    def size(self) -> int:
        return self._size

    @property
    def dtype(self):
        return self._dtype

    @property
    def device(self):
        return self._device

    @property
    def psd(self) -> bool:
        """Whether the operator is known to be positive semidefinite."""
        return self._psd

    @property
    def xp(self):
        """Array-API namespace of the operator's arrays (numpy or torch)."""
        return self._xp

    @abc.abstractmethod
    def _matmat(self, V):
        """``A @ V`` for ``V`` of shape ``(d, k)``; no validation."""

    @abc.abstractmethod
    def to_dense(self):
        """The ``d×d`` matrix. Costs ``O(d²)`` memory: only call it when ``d`` is small."""

    def diagonal(self):
        """The diagonal of ``A`` as a length-``d`` array (used by Jacobi preconditioning)."""
        raise UnsupportedOperatorError(
            f"{type(self).__name__} does not know its diagonal; pass `diagonal=` when "
            "constructing it, or use a different preconditioner"
        )

    # ------------------------------------------------------------ validated API
    def matvec(self, v):
        """``A @ v`` for a vector ``v`` of shape ``(d,)``."""
        self._check_operand(v, "v", ndim=1)
        return self._matmat(v[:, None])[:, 0]

    def matmat(self, V):
        """``A @ V`` for ``V`` of shape ``(d, k)``."""
        self._check_operand(V, "V", ndim=2)
        return self._matmat(V)

    def __matmul__(self, other):
        if getattr(other, "ndim", None) == 1:
            return self.matvec(other)
        return self.matmat(other)

    def _check_operand(self, x, name, ndim=None):
        B.check_compatible(x, xp=self._xp, dtype=self._dtype, device=self._device, name=name)
        ok_ndim = (1, 2) if ndim is None else (ndim,)
        if x.ndim not in ok_ndim or x.shape[0] != self._size:
            want = " or ".join({1: f"({self._size},)", 2: f"({self._size}, k)"}[n] for n in ok_ndim)
            raise ShapeError(f"{name}: expected shape {want}, got {tuple(x.shape)}")

    def __repr__(self) -> str:
        lib = self._xp.__name__.split(".")[-1] if self._xp is not None else "?"
        return (
            f"{type(self).__name__}(size={self._size}, dtype={self._dtype}, "
            f"device={self._device}, backend={lib})"
        )
