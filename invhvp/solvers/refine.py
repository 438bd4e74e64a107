"""A realistic forward-error estimate for float32 direct solves (docs/theory.md §7.3).

The worst-case estimate ``κ·u`` of a float32 Cholesky solve is often 10–100× the actual error.
One step of mixed-precision iterative refinement *measures* it instead: the residual
``r = b − (A + λI)x`` computed in float64 from the operator's structure (``Operator.matmat64``)
is accurate, and one correction ``e = (A + λI)⁻¹r`` with the working-precision factor
approximates the error ``x* − x`` to first order (relative accuracy about ``κ·u`` of itself,
so the estimate is sound while ``κ·u < 1/2``).  Costs one float64 product and one apply.
"""

from __future__ import annotations

import numpy as np

from .. import _backend as Bk
from .._arrays import col_norms64, row_chunks

__all__ = ["refined_errors", "residual64", "SAFETY", "EPS64"]

#: unit roundoff of float64: the precision of a residual from :func:`residual64`
EPS64 = 2.0**-53

#: factor on the first-order estimate (the correction is itself computed with relative error ~κu)
SAFETY = 2.0


def refined_errors(op, apply, R64, X, *, max_columns: int = 256):
    """Estimated relative forward error ``‖x − x*‖/‖x‖`` per column, from the float64 residual
    ``R64`` of ``X`` (:func:`residual64`): one correction with the working-precision ``apply``,
    ``max_columns`` columns at a time."""
    xp = op.xp
    out = []
    for sl in row_chunks(int(X.shape[1]), max_columns):
        R = R64[:, sl]
        rn = col_norms64(R)
        sc = np.where(rn > 0, rn, 1.0)
        scale = xp.asarray(sc, dtype=xp.float64, device=Bk.device_of(X))[None, :]
        E = apply(xp.astype(R / scale, op.dtype))  # unit columns: no float32 underflow
        en = col_norms64(E) * sc
        xn = col_norms64(X[:, sl])
        out.append(SAFETY * en / np.maximum(xn, 1e-300) + Bk.eps(op.dtype))
    return np.concatenate(out)


def residual64(op, lam, B, X, *, max_columns: int = 256):
    """The true residual ``B − (A + λI)X`` computed in float64 from the operator's structure.

    ``lam``: a float or a float64 ``(d, 1)`` column of per-coordinate damping.  ``None`` when
    ``op`` has no float64 products (``Operator.matmat64``).  For a float32 solve its rounding
    error is about ``2⁻⁵³·‖A + λI‖·‖x‖`` instead of ``2⁻²⁴·…``, so a check against it can verify
    tolerances near float32's own precision (docs/theory.md §7.2).  Costs one float64 product.
    """
    xp = op.xp
    parts = []
    for sl in row_chunks(int(B.shape[1]), max_columns):
        X64 = xp.astype(X[:, sl], xp.float64)
        AX = op.matmat64(X64)
        if AX is None:
            return None
        parts.append(xp.astype(B[:, sl], xp.float64) - (AX + lam * X64))
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=1)
