r"""The default damping rule of DataInf (Kwon et al. 2023, §4; Grosse et al. 2023).

.. math:: \lambda_l = \text{factor}\cdot \frac{\operatorname{tr} G_l}{d_l}
          = \text{factor}\cdot\frac{1}{n\,d_l}\sum_i \|g_{i,l}\|^2

``factor = 0.1`` gives the paper's "0.1 × mean eigenvalue" per block.
"""

from __future__ import annotations

import math

from . import _backend as Bk
from ._arrays import row_sq_norms
from .errors import InputError, UnsupportedOperatorError
from .operators import BlockDiagonal, Dense, LowRankPlusIdentity, Operator

__all__ = ["default_damping"]


def _mean_eig(op) -> float:
    xp = op.xp
    if isinstance(op, LowRankPlusIdentity):
        return op.scale * float(xp.sum(row_sq_norms(op.factor))) / op.size
    if isinstance(op, Dense):
        return float(xp.sum(xp.linalg.diagonal(op.matrix))) / op.size
    if isinstance(op, BlockDiagonal):
        return sum(_mean_eig(b) * b.size for b in op.blocks) / op.size
    try:
        return float(xp.sum(op.diagonal())) / op.size
    except UnsupportedOperatorError:
        raise UnsupportedOperatorError(
            f"default_damping: {type(op).__name__} does not know its trace; pass `diagonal=` when "
            "constructing it or give an explicit damping value"
        ) from None


def _grads_mean_eig(g, name) -> float:
    xp, n, d = Bk.check_factor(g, name)
    v = float(xp.sum(row_sq_norms(g))) / (n * d)
    if not math.isfinite(v):
        Bk.check_finite(xp, g, name)  # NaN/inf entries: raise NonFiniteError naming the argument
    return v


def default_damping(op, factor: float = 0.1):
    r"""The paper's damping ``λ_l = factor · tr(G_l)/d_l`` (``factor`` × mean eigenvalue of ``G_l``).

    Parameters
    ----------
    op : operator, array or sequence of arrays
        - :class:`~invhvp.LowRankPlusIdentity` ``shift·I + scale·UᵀU``: ``G = scale·UᵀU`` (the
          shift is *not* counted); computed from the row norms, ``O(nd)``, never forming ``G``.
        - :class:`~invhvp.BlockDiagonal`: one value per block (a tuple), ready to pass as the
          per-block ``damping`` of :func:`invhvp.solve`; a nested block gets its overall mean.
        - :class:`~invhvp.Dense` (its trace) or any operator that knows its ``diagonal()``.
        - an ``n×d`` array of per-sample gradients (``G = UᵀU/n``), or a list/tuple of them
          (one per block, returns a tuple).
    factor : float, default 0.1
        Positive multiplier.

    Returns
    -------
    float or tuple of float
        A float for a single operator or array; a tuple for ``BlockDiagonal`` or a sequence.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> U = np.array([[1.0, 1.0], [1.0, -1.0]])           # tr(UᵀU/2)/2 = 1
    >>> round(ih.default_damping(ih.LowRankPlusIdentity(U)), 12)
    0.1
    >>> op = ih.BlockDiagonal([ih.LowRankPlusIdentity(U), ih.LowRankPlusIdentity(3 * U)])
    >>> tuple(round(v, 12) for v in ih.default_damping(op, factor=1.0))
    (1.0, 9.0)
    """
    f = Bk.finite_scalar(factor, "factor")
    if not f > 0.0 or not math.isfinite(f):
        raise InputError(f"factor: expected a positive number, got {f}")
    if isinstance(op, BlockDiagonal):
        return tuple(f * _mean_eig(b) for b in op.blocks)
    if isinstance(op, Operator):
        return f * _mean_eig(op)
    if isinstance(op, (list, tuple)):
        if not op:
            raise InputError("op: expected a non-empty sequence of gradient arrays")
        return tuple(f * _grads_mean_eig(g, f"op[{i}]") for i, g in enumerate(op))
    if hasattr(op, "shape") and hasattr(op, "dtype"):
        return f * _grads_mean_eig(op, "op")
    raise InputError(
        f"op: expected an invhvp operator, an (n, d) gradient array or a sequence of them, "
        f"got {type(op).__name__}"
    )
