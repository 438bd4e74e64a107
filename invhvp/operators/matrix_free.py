"""Matrix-free operators (Hessian-vector products from autograd, or any callable)."""

from __future__ import annotations

from .. import _backend as B
from .. import _checks as C
from .._arrays import as_generator
from ..errors import DeviceError, DTypeError, InputError, ShapeError, UnsupportedOperatorError
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
    sampler : callable, optional
        Mini-batch estimates for stochastic solvers (:class:`~invhvp.LiSSA`).  Protocol:
        ``sampler(batch_size: int, rng: numpy.random.Generator)`` returns an *independent,
        unbiased* estimate ``Ã_B`` of ``A`` from ``batch_size`` samples drawn with
        replacement (``E Ã_B = A``), either as an invhvp operator of the same size, dtype
        and device, or as a ``matmat`` callable ``V (d, k) -> Ã_B V (d, k)``.  Each call
        must draw a fresh batch using only ``rng`` for randomness (so results are seeded).
        For a loss average ``A = (1/n) Σ_i H_i`` this is ``(1/B) Σ_{j∈batch} H_j``; it is
        a sum over samples, so shards may compute partial sums.
    n_samples : int, optional
        Data-set size ``n`` behind ``sampler``: a batch-``B`` product is counted as
        ``B/n`` of a full matvec, and ``B >= n`` is served by full products.  Without it
        each mini-batch product counts as a full matvec.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> A = ih.MatrixFree(lambda v: 2.0 * v, size=3, dtype=np.float64)
    >>> A.matvec(np.ones(3))
    array([2., 2., 2.])
    """

    def __init__(
        self,
        matvec,
        size,
        dtype,
        *,
        device=None,
        psd=True,
        matmat=None,
        diagonal=None,
        sampler=None,
        n_samples=None,
    ):
        if not callable(matvec):
            raise InputError(f"matvec: expected a callable, got {type(matvec).__name__}")
        if matmat is not None and not callable(matmat):
            raise InputError(f"matmat: expected a callable or None, got {type(matmat).__name__}")
        size = C.integer(size, "size", minimum=1)
        psd = C.flag(psd, "psd")
        dtype = B.normalize_dtype(dtype)
        xp = B.namespace_of_dtype(dtype)
        if B.is_torch(xp):
            import torch

            try:
                device = torch.device("cpu") if device is None else torch.device(device)
            except (TypeError, RuntimeError) as exc:
                raise DeviceError(f"device: not a torch device: {device!r}") from exc
            if device.type == "meta":
                raise DeviceError("device: the 'meta' device holds no data; use a real device")
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
        if sampler is not None and not callable(sampler):
            raise InputError(f"sampler: expected a callable or None, got {type(sampler).__name__}")
        self.sampler = sampler
        self._n_samples = C.integer(n_samples, "n_samples", minimum=1, optional=True)

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
                f"matvec/matmat callable returned shape {tuple(getattr(out, 'shape', ()))}, expected {want}"
            )
        if out.dtype != self._dtype:
            raise DTypeError(f"matvec/matmat callable returned dtype {out.dtype}, expected {self._dtype}")
        if B.device_of(out) != self._device:
            raise DeviceError(
                f"matvec/matmat callable returned an array on device {B.device_of(out)}, expected {self._device}"
            )

    def to_dense(self):
        xp = self._xp
        return self._matmat(xp.eye(self._size, dtype=self._dtype, device=self._device))

    def diagonal(self):
        if self._diag is None:
            return super().diagonal()
        return self._diag

    # ------------------------------------------------------------ mini-batches (LiSSA)
    @property
    def n_samples(self) -> int | None:
        return self._n_samples

    @property
    def supports_minibatch(self) -> bool:
        """Whether a ``sampler`` was given (needed for mini-batch LiSSA)."""
        return self.sampler is not None

    def minibatch(self, batch_size: int, rng) -> Operator:
        """An independent mini-batch estimate from the user's ``sampler`` (see the class doc).

        The result is an invhvp operator; a returned ``matmat`` callable is wrapped in a
        :class:`MatrixFree` whose outputs are checked for shape and dtype.
        """
        if self.sampler is None:
            raise UnsupportedOperatorError(
                "this MatrixFree operator has no `sampler`: pass MatrixFree(..., sampler=...) "
                "for mini-batch products, or use full-batch products"
            )
        b = C.integer(batch_size, "batch_size", minimum=1)
        # like LowRankPlusIdentity.minibatch: the sampler always gets a numpy Generator
        est = self.sampler(b, as_generator(rng))
        if isinstance(est, Operator):
            if (
                est.size != self._size
                or est.dtype != self._dtype
                or est.xp is not self._xp
                or est.device != self._device
            ):
                raise ShapeError(
                    f"sampler: returned {est!r}; expected an operator of size {self._size}, "
                    f"dtype {self._dtype} on device {self._device} from the same array library"
                )
            return est
        if not callable(est):
            raise InputError(
                f"sampler: expected it to return an invhvp operator or a matmat callable, "
                f"got {type(est).__name__}"
            )
        return MatrixFree(
            lambda v: est(v[:, None])[:, 0],
            self._size,
            self._dtype,
            device=self._device,
            psd=self._psd,
            matmat=est,
        )
