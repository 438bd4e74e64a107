"""The operator protocol shared by every invhvp operator.

An operator holds data; solvers hold algorithms.  Besides products, an operator *declares*
what its structure lets it compute cheaply (docs/theory.md §10 lists where each formula
lives).  The defaults say "unknown", so a new operator is one file that overrides what it
knows, plus registrations in the solvers that factorize structure (``solvers/exact.py``).

Structure protocol (each optional):

- :meth:`Operator.trace` -- exact trace (mean eigenvalue for the damping rule);
- :meth:`Operator.spectrum` -- exact eigenvalues with multiplicities, when small;
- :meth:`Operator.matmat64` -- products in float64 from structure (float32 error estimates);
- :meth:`Operator.eig_lower` -- a lower bound on ``λ_min(A)`` (0 for PSD operators);
- mini-batches for stochastic solvers: :attr:`Operator.n_samples`,
  :attr:`Operator.supports_minibatch`, :meth:`Operator.minibatch`,
  :meth:`Operator.sample_second_moment_trace`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from .. import _backend as B
from ..errors import ShapeError, UnsupportedOperatorError

__all__ = ["Operator", "Spectrum"]


@dataclass(frozen=True)
class Spectrum:
    """Eigenvalues of a symmetric operator with multiplicities (float64, host).

    ``values[i]`` occurs ``counts[i]`` times; ``counts.sum() == d``.  Exact up to the
    rounding of a symmetric eigensolver, which :attr:`rounding` bounds (absolute).
    """

    values: np.ndarray
    counts: np.ndarray
    rounding: float

    @property
    def max(self) -> float:
        return float(np.max(self.values))

    @property
    def min(self) -> float:
        return float(np.min(self.values))


class Operator(abc.ABC):
    """A square, symmetric linear operator ``A`` of size ``d``.

    Subclasses set ``_xp`` (array-API namespace), ``_size``, ``_dtype``, ``_device`` and
    ``_psd`` in ``__init__`` and implement :meth:`_matmat` (no validation, ``V`` is
    ``(d, k)``) and :meth:`to_dense`.  The public :meth:`matvec` and :meth:`matmat`
    validate their argument; solvers call the unvalidated ``_matmat`` inside their loops.
    Damping is *not* part of the operator: solvers apply ``A + λI``.
    """

    _xp = None
    _size: int
    _dtype = None
    _device = None
    _psd: bool = True

    # ------------------------------------------------------------------ data protocol
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

    # ------------------------------------------------------------ structure protocol
    def trace(self) -> float:
        """``tr A`` from structure (no products); UnsupportedOperatorError when unknown."""
        try:
            diag = self.diagonal()
        except UnsupportedOperatorError:
            raise UnsupportedOperatorError(
                f"{type(self).__name__} does not know its trace: pass `diagonal=` when constructing it, "
                "estimate it with invhvp.trace(op, method='hutchpp'), or give damping explicitly"
            ) from None
        return float(self._xp.sum(diag))

    def spectrum(self, max_dim: int = 8192) -> Spectrum:
        """All eigenvalues from structure, when the eigenproblem is at most ``max_dim`` wide."""
        raise UnsupportedOperatorError(
            f"{type(self).__name__} has no structure that gives its eigenvalues; estimate them "
            "with invhvp.lambda_max(op, method='lanczos')"
        )

    def matmat64(self, V64):
        """``A V`` computed in float64 from structure (``V64`` float64, ``(d, k)``), or ``None``.

        Used to estimate the forward error of float32 solves (docs/theory.md §7.3): a residual
        in float64 and one correction with the float32 factor.  ``None``: not available.
        """
        return None

    def eig_lower(self) -> float | None:
        """A lower bound on ``λ_min(A)``: 0 for a PSD operator, ``None`` when unknown."""
        return 0.0 if self._psd else None

    @property
    def n_samples(self) -> int | None:
        """Number of samples ``n`` whose average the operator is (``None``: not an average)."""
        return None

    @property
    def supports_minibatch(self) -> bool:
        """Whether :meth:`minibatch` can produce unbiased mini-batch estimates."""
        return False

    def minibatch(self, batch_size: int, rng) -> Operator:
        """An independent unbiased estimate ``Ã_B`` from ``batch_size`` samples (with replacement)."""
        raise UnsupportedOperatorError(
            f"{type(self).__name__} cannot produce mini-batch estimates; use full-batch products"
        )

    def sample_second_moment_trace(self) -> float | None:
        """``tr E[Ã₁²]`` for a single-sample estimate, from structure (``None`` when unknown)."""
        return None

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


def eigvalsh_host(xp, M) -> np.ndarray:
    """Eigenvalues of symmetric ``M`` (computed on its device, float64 host result).

    A non-finite ``M`` (products out of the dtype's range) or a failed eigensolver is a
    NonFiniteError, never a library-specific exception.
    """
    from ..errors import NonFiniteError

    if not bool(xp.all(xp.isfinite(M))):
        raise NonFiniteError("operator: its small Gram / dense matrix is not finite (entries out of the dtype's range)")
    try:
        return B.to_host(xp.linalg.eigvalsh(M), np.float64)
    except Exception as exc:  # numpy LinAlgError, torch _LinAlgError
        raise NonFiniteError(f"operator: the symmetric eigensolver failed ({type(exc).__name__}: {exc})") from None


def rounding_allowance(values: np.ndarray, m: int, dtype) -> float:
    """Absolute rounding bound of a symmetric eigensolve of size ``m`` in ``dtype``."""
    scale = float(np.max(np.abs(values))) if values.size else 0.0
    return 10.0 * m * B.eps(dtype) * max(scale, 1e-300)
