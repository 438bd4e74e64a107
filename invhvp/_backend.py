"""The one place that knows numpy from torch.

Everything else in invhvp does arithmetic through the array-API namespace
returned by :func:`namespace` (``array_api_compat``).  The few operations the
standard lacks -- a Cholesky factorization that reports failure instead of
raising library-specific errors, and triangular/Cholesky solves -- live here.

Torch is imported lazily: invhvp works without it.
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np

from .errors import DeviceError, DTypeError, NonFiniteError, NotPositiveDefiniteError, ShapeError

__all__ = [
    "namespace",
    "is_torch",
    "device_of",
    "check_float_dtype",
    "check_finite",
    "check_compatible",
    "check_factor",
    "to_host",
    "cholesky",
    "cho_solve",
    "solve_triangular",
]


def namespace(*arrays):
    """Array-API namespace of ``arrays`` (numpy or torch); a clear TypeError otherwise."""
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as exc:  # mixed libraries or unsupported types
        kinds = sorted({type(a).__module__ + "." + type(a).__name__ for a in arrays})
        raise DTypeError(f"expected numpy arrays or torch tensors from one library, got {kinds}") from exc


def is_torch(xp) -> bool:
    return array_api_compat.is_torch_namespace(xp)


def device_of(x):
    return array_api_compat.device(x)


def eps(dtype) -> float:
    """Machine epsilon of a numpy or torch floating dtype."""
    if _is_torch_dtype(dtype):
        import torch

        return float(torch.finfo(dtype).eps)
    return float(np.finfo(dtype).eps)


def tiny(dtype) -> float:
    """Smallest positive normal number of a numpy or torch floating dtype."""
    if _is_torch_dtype(dtype):
        import torch

        return float(torch.finfo(dtype).tiny)
    return float(np.finfo(dtype).tiny)


def _is_torch_dtype(dtype) -> bool:
    return type(dtype).__module__.startswith("torch")


def namespace_of_dtype(dtype):
    """Namespace for arrays of ``dtype`` (torch.dtype -> torch, anything else -> numpy)."""
    if _is_torch_dtype(dtype):
        import torch

        return array_api_compat.array_namespace(torch.empty(0, dtype=dtype))
    return array_api_compat.array_namespace(np.empty(0, dtype=dtype))


def normalize_dtype(dtype):
    """Return a canonical float32/float64 dtype object, or raise DTypeError."""
    if _is_torch_dtype(dtype):
        import torch

        if dtype in (torch.float32, torch.float64):
            return dtype
    else:
        try:
            d = np.dtype(dtype)
        except TypeError as exc:
            raise DTypeError(f"dtype: expected float32 or float64, got {dtype!r}") from exc
        if d in (np.dtype(np.float32), np.dtype(np.float64)):
            return d
    raise DTypeError(f"dtype: expected float32 or float64, got {dtype!r}")


def check_float_dtype(x, name: str):
    """Raise DTypeError unless ``x`` is a float32/float64 numpy array or torch tensor."""
    try:
        normalize_dtype(x.dtype)
    except DTypeError:
        raise DTypeError(f"{name}: expected a float32 or float64 array, got dtype {x.dtype}") from None


def check_array(x, name: str):
    """Namespace of a float32/float64 numpy array or torch tensor holding data; typed errors otherwise.

    Refuses other types (lists, scipy objects, ...) with DTypeError and torch tensors on the
    ``meta`` device (no data to compute with) with DeviceError, naming ``name``.
    """
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise DTypeError(
            f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}"
            + ("; convert it with numpy.asarray(...)" if isinstance(x, (list, tuple)) else "")
        )
    xp = namespace(x)
    check_float_dtype(x, name)
    if is_torch(xp) and x.device.type == "meta":
        raise DeviceError(f"{name}: is a torch tensor on the 'meta' device (no data); move it to a real device")
    return xp


def check_finite(xp, x, name: str):
    """Raise NonFiniteError if ``x`` contains NaN or infinity (one scalar sync on GPU)."""
    # Fast path: a finite sum implies every entry is finite (NaN and ±inf propagate);
    # only an overflowing sum needs the element-wise test.
    if math.isfinite(float(xp.sum(x))) or bool(xp.all(xp.isfinite(x))):
        return
    n_bad = int(xp.sum(xp.astype(~xp.isfinite(x), xp.int64)))
    raise NonFiniteError(f"{name}: contains {n_bad} NaN or infinite value(s)")


def check_compatible(x, *, xp, dtype, device, name: str):
    """Check that array ``x`` belongs to namespace ``xp`` with ``dtype`` on ``device``."""
    try:
        x_xp = array_api_compat.array_namespace(x)
    except TypeError:
        raise DTypeError(
            f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}"
            + ("; convert it with numpy.asarray(...)" if isinstance(x, (list, tuple)) else "")
        ) from None
    if x_xp is not xp:
        raise DTypeError(
            f"{name}: array library mismatch: operator uses {xp.__name__.split('.')[-1]}, "
            f"{name} is {x_xp.__name__.split('.')[-1]}"
        )
    if x.dtype != dtype:
        raise DTypeError(f"{name}: dtype {x.dtype} does not match the operator's dtype {dtype}")
    if device_of(x) != device:
        raise DeviceError(f"{name}: on device {device_of(x)} but the operator is on device {device}")


def check_matrix(x, name: str):
    if getattr(x, "ndim", None) != 2:
        raise ShapeError(f"{name}: expected a 2-D array, got shape {tuple(getattr(x, 'shape', ()))}")


def check_factor(x, name: str):
    """Validate an ``(n, d)`` float32/float64 array with ``n, d >= 1``; return ``(xp, n, d)``.

    The common check of per-sample gradient matrices and low-rank factors (finiteness is
    left to the caller, which may have a cheaper way to check it).
    """
    xp = check_array(x, name)
    check_matrix(x, name)
    n, d = (int(s) for s in x.shape)
    if n == 0 or d == 0:
        raise ShapeError(f"{name}: expected at least one row and one column, got shape ({n}, {d})")
    return xp, n, d


def to_host(x, dtype=None) -> np.ndarray:
    """A numpy copy of ``x`` (numpy array or torch tensor), optionally cast to ``dtype``.

    Inside a solve only for small arrays (``k`` column norms, probe values, ``min(n, d)``
    eigenvalues): never a ``d``-sized vector or matrix.
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


# --------------------------------------------------------------------- factorizations


def cholesky(xp, A, what: str = "matrix"):
    """Lower Cholesky factor of symmetric ``A``; NotPositiveDefiniteError on failure.

    Only the lower triangle of ``A`` is read.  No jitter is ever added.
    """
    if is_torch(xp):
        import torch

        L, info = torch.linalg.cholesky_ex(A)
        if int(info) != 0:  # one scalar sync
            raise NotPositiveDefiniteError(
                f"Cholesky factorization of the {what} failed: it is not positive definite "
                f"(leading minor {int(info)} is not positive). invhvp adds no jitter; "
                "increase `damping`."
            )
        return L
    try:
        L = np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        raise NotPositiveDefiniteError(
            f"Cholesky factorization of the {what} failed: it is not positive definite. "
            "invhvp adds no jitter; increase `damping`."
        ) from None
    if not np.all(np.isfinite(L)):
        raise NotPositiveDefiniteError(f"Cholesky factorization of the {what} produced non-finite values")
    return L


def cho_solve(xp, L, B):
    """Solve ``(L Lᵀ) X = B`` for a lower Cholesky factor ``L`` and 2-D ``B``."""
    if is_torch(xp):
        import torch

        return torch.cholesky_solve(B, L, upper=False)
    import scipy.linalg

    return scipy.linalg.cho_solve((L, True), B, check_finite=False)


def solve_triangular(xp, L, B, *, trans: bool = False):
    """Solve ``L X = B`` (``trans=True``: ``Lᵀ X = B``) for lower-triangular ``L`` and 2-D ``B``."""
    if is_torch(xp):
        import torch

        if trans:
            return torch.linalg.solve_triangular(L.mT, B, upper=True)
        return torch.linalg.solve_triangular(L, B, upper=False)
    import scipy.linalg

    return scipy.linalg.solve_triangular(L, B, lower=True, trans=1 if trans else 0, check_finite=False)
