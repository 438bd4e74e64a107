"""Array helpers shared by every layer (base layer: imports only ``_backend`` and ``errors``).

- :data:`CHUNK_ELEMENTS`, :func:`row_chunks`: how temporaries are bounded.
- :func:`row_sq_norms`: squared row norms without an ``n×d`` temporary.
- :func:`col_norms64`: column norms in float64 (no overflow or underflow for float32 data).
- :func:`as_generator`, :func:`random_matrix`: seeded randomness on any device.
"""

from __future__ import annotations

import numpy as np

from . import _backend as Bk
from .errors import InputError

__all__ = [
    "CHUNK_ELEMENTS",
    "row_chunks",
    "row_sq_norms",
    "col_norms64",
    "as_generator",
    "random_matrix",
]

#: Temporaries are bounded by about this many elements (chunked over rows or columns).
CHUNK_ELEMENTS = 1 << 24


def row_chunks(n: int, rows: int):
    """Slices ``[i, i+rows)`` covering ``range(n)``."""
    rows = max(1, int(rows))
    return [slice(i, min(i + rows, n)) for i in range(0, n, rows)]


def rows_per_chunk(width: int, chunk_size=None) -> int:
    """Rows of width ``width`` per chunk: ``chunk_size`` if given, else ``CHUNK_ELEMENTS // width``."""
    if chunk_size is not None:
        return int(chunk_size)
    return max(1, CHUNK_ELEMENTS // max(int(width), 1))


def row_sq_norms(U, *, dtype=None, chunk_rows=None):
    """Squared row norms ``||u_i||²`` of a 2-D ``U`` (length ``n``).

    In ``U``'s dtype this is one fused pass without temporaries; with ``dtype`` (e.g.
    float64 for certificates) chunks of ``chunk_rows`` rows (default: ``CHUNK_ELEMENTS``
    elements) are cast first, so the temporary stays bounded.
    """
    xp = Bk.namespace(U)
    n, d = U.shape
    if dtype is None or dtype == U.dtype:
        # no temporary: a fused reduction (numpy's vecdot ufunc, torch's vector_norm)
        if Bk.is_torch(xp):
            return xp.linalg.vector_norm(U, axis=1) ** 2
        return xp.linalg.vecdot(U, U, axis=1)
    c = rows_per_chunk(d, chunk_rows)
    parts = []
    for sl in row_chunks(int(n), c):
        V = xp.astype(U[sl, :], dtype)
        parts.append(xp.sum(V * V, axis=1))
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


def col_dots64(X, Y) -> np.ndarray:
    """Column dot products ``Σ_i X_ij Y_ij`` of two 2-D arrays as a float64 host array (length ``k``).

    Computed in float64 over row chunks (no full float64 copy of ``X`` or ``Y``), so float32
    entries near 1e±30 neither overflow nor underflow; only the ``k`` sums leave the device.
    """
    xp = Bk.namespace(X)
    acc = None
    for sl in row_chunks(int(X.shape[0]), rows_per_chunk(2 * int(X.shape[1]))):
        V = xp.astype(X[sl, :], xp.float64)
        W = V if Y is X else xp.astype(Y[sl, :], xp.float64)
        s = xp.sum(V * W, axis=0)
        acc = s if acc is None else acc + s
    return Bk.to_host(acc, np.float64)


def col_norms64(X) -> np.ndarray:
    """Column norms of a 2-D ``X`` as a float64 host array (length ``k``): ``sqrt(col_dots64(X, X))``."""
    return np.sqrt(col_dots64(X, X))


def as_generator(rng) -> np.random.Generator:
    """``numpy.random.Generator`` from ``None``, an int seed, a SeedSequence or a Generator."""
    if isinstance(rng, np.random.Generator):
        return rng
    if (
        rng is None
        or isinstance(rng, (int, np.integer, np.random.SeedSequence))
        and not isinstance(rng, bool)
    ):
        return np.random.default_rng(rng)
    raise InputError(f"rng: expected a numpy Generator, an int seed or None, got {type(rng).__name__}")


def random_matrix(xp, shape, dtype, device, rng, kind="rademacher"):
    """Random ``shape`` array on ``device``: Rademacher (±1) or standard normal."""
    gen = as_generator(rng)
    if Bk.is_torch(xp):
        import torch

        g = torch.Generator(device=device)
        g.manual_seed(int(gen.integers(0, 2**62)))
        if kind == "rademacher":
            z = torch.randint(0, 2, shape, generator=g, device=device).to(dtype)
            return 2 * z - 1
        return torch.randn(shape, generator=g, device=device, dtype=dtype)
    if kind == "rademacher":
        return (2 * gen.integers(0, 2, size=shape) - 1).astype(dtype)
    return gen.standard_normal(shape).astype(dtype)


def gram64(U):
    """``U Uᵀ`` (``n×n``) accumulated in float64 over column chunks of ``U`` (no float32 overflow)."""
    xp = Bk.namespace(U)
    n, d = (int(v) for v in U.shape)
    c = max(1, CHUNK_ELEMENTS // max(n, 1))
    K = None
    for j in range(0, d, c):
        V = xp.astype(U[:, j : j + c], xp.float64)
        P = V @ V.T
        K = P if K is None else K + P
    return K


def scaled_unit(xp, w):
    """``(w/‖w‖, ‖w‖)`` for a ``(d, 1)`` array, with ``‖w‖`` a Python float computed in float64.

    ``w`` is first divided by its largest magnitude (an element, so representable in its
    dtype): neither the scaling nor the norm can overflow or underflow in float32.  Returns
    ``(None, 0.0)`` for a zero vector and ``(None, nan)`` for a non-finite one.
    """
    s = float(xp.max(xp.abs(w)))
    if not np.isfinite(s):
        return None, float("nan")
    if s == 0.0:
        return None, 0.0
    ws = w / s
    nrm = float(col_norms64(ws)[0])
    return ws / nrm, s * nrm


def power_norm(xp, apply, size, dtype, device, steps=6, seed=12345) -> float:
    """Power-iteration (Rayleigh-type, i.e. lower) estimate of ``‖M‖₂`` for a symmetric ``apply``.

    Deterministic start; every normalization goes through :func:`scaled_unit`, so float32
    operators with entries near 1e±30 give a finite estimate (a Python float, float64).
    """
    q, _ = scaled_unit(xp, random_matrix(xp, (size, 1), dtype, device, seed, kind="normal"))
    est = 0.0
    for _ in range(steps):
        q, est = scaled_unit(xp, apply(q))
        if q is None:
            break
    return est
