"""Helpers shared by the DataInf bound modules: argument checks and float64 accumulations."""

from __future__ import annotations

from .. import _backend as Bk
from .. import _checks as C
from .._arrays import row_sq_norms
from ..errors import DampingError


def _validate(factor, damping, scale, *, name="factor"):
    xp, n, d = Bk.check_factor(factor, name)
    lam = C.real(damping, "damping")
    if lam <= 0.0:
        raise DampingError(
            f"damping: DataInf needs λ = shift + damping > 0 (every rank-one term is g gᵀ + λI), got {lam}"
        )
    s = 1.0 / n if scale is None else C.real(scale, "scale", minimum=0.0, strict=True)
    return xp, n, d, lam, s


def _scaled_norms64(xp, U, n, s):
    """``||g̃_i||² = n·s·||u_i||²`` in float64."""
    return (n * s) * row_sq_norms(U, dtype=xp.float64)


def _eye64(xp, r, like):
    return xp.eye(r, dtype=xp.float64, device=Bk.device_of(like))


def datainf_weights(sq_norms, lam: float, scale: float, n_total: int):
    """Row weights ``w_i = s/(λ + n s‖u_i‖²)`` from squared row norms (any subset of the rows)."""
    return scale / (lam + (n_total * scale) * sq_norms)
