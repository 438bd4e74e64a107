r"""The default damping rule of DataInf (Kwon et al. 2023, §4; Grosse et al. 2023), docs/theory.md §2.

.. math:: \lambda_l = \text{factor}\cdot \frac{\operatorname{tr} G_l}{d_l}
          = \text{factor}\cdot\frac{1}{n\,d_l}\sum_i \|g_{i,l}\|^2

``factor = 0.1`` (:data:`DEFAULT_FACTOR`) gives the paper's "0.1 × mean eigenvalue" per block.
"""

from __future__ import annotations

import math

from . import _backend as Bk
from . import _checks as C
from ._arrays import row_sq_norms
from .errors import DampingError, InputError
from .operators import BlockDiagonal, Operator

__all__ = ["default_damping", "damping_from_sums", "DEFAULT_FACTOR"]

#: The paper's multiplier of the mean eigenvalue (the one place this default lives).
DEFAULT_FACTOR = 0.1


def _positive(v: float, what: str) -> float:
    if not (v > 0.0 and math.isfinite(v)):
        raise DampingError(
            f"default damping: the mean eigenvalue of {what} is {v}; the rule 'factor × mean eigenvalue' needs "
            "a positive semidefinite operator with a positive finite trace. Pass damping explicitly"
        )
    return v


def _op_mean_eig(op: Operator, what: str) -> float:
    floor = op.eig_lower() or 0.0  # a LowRankPlusIdentity's shift is not part of G
    return _positive(op.trace() / op.size - floor, what)


def _grads_mean_eig(g, name) -> float:
    xp, n, d = Bk.check_factor(g, name)
    total = float(xp.sum(row_sq_norms(g, dtype=xp.float64)))  # float32 squares can overflow
    if not math.isfinite(total):
        Bk.check_finite(xp, g, name)  # NaN/inf entries: raise NonFiniteError naming the argument
    return damping_from_sums(total, n, d, 1.0, what=name)


def damping_from_sums(sq_norm_sum: float, n: int, d: int, factor: float = DEFAULT_FACTOR, *, what="block"):
    r"""The rule from a sum over rows: ``factor · Σ_i ‖g_i‖² / (n·d)`` (docs/theory.md §2).

    For gradients that are never in memory at once (chunks of a
    :class:`~invhvp.GradientStore`, shards on several processes): add ``‖g_i‖²`` over the
    chunks (and over the ranks, :func:`invhvp.distributed.all_reduce_sum`), then call this
    with the total row count ``n`` and the block width ``d``.

    Examples
    --------
    >>> from invhvp.damping import damping_from_sums
    >>> round(damping_from_sums(8.0, n=2, d=2), 12)       # mean eigenvalue 2, times 0.1
    0.2
    """
    return factor * _positive(float(sq_norm_sum) / (int(n) * int(d)), what)


def default_damping(op, factor: float = DEFAULT_FACTOR):
    r"""The paper's damping ``λ_l = factor · tr(G_l)/d_l`` (``factor`` × mean eigenvalue of ``G_l``).

    Parameters
    ----------
    op : operator, array or sequence of arrays
        - an invhvp operator that knows its trace (``Operator.trace``): ``LowRankPlusIdentity``
          ``shift·I + scale·UᵀU`` gives ``G = scale·UᵀU`` (the shift is not counted), ``O(nd)``;
          ``Dense`` its trace; ``MatrixFree`` with a ``diagonal``;
        - :class:`~invhvp.BlockDiagonal`: one value per block (a tuple), ready to pass as the
          per-block ``damping`` of :func:`invhvp.solve`;
        - an ``n×d`` array of per-sample gradients (``G = UᵀU/n``), or a list/tuple of them
          (one per block, returns a tuple).
    factor : float, default 0.1
        Positive multiplier.

    Raises DampingError when a mean eigenvalue is not positive (e.g. an indefinite operator
    or all-zero gradients): the rule has no meaning there.

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
    f = C.real(factor, "factor", minimum=0.0, strict=True)
    if isinstance(op, BlockDiagonal):
        return tuple(f * _op_mean_eig(b, f"block {i}") for i, b in enumerate(op.blocks))
    if isinstance(op, Operator):
        return f * _op_mean_eig(op, "the operator")
    if isinstance(op, (list, tuple)):
        if not op:
            raise InputError("op: expected a non-empty sequence of gradient arrays")
        return tuple(f * _grads_mean_eig(g, f"op[{i}]") for i, g in enumerate(op))
    if hasattr(op, "shape") and hasattr(op, "dtype"):
        return f * _grads_mean_eig(op, "op")
    raise InputError(
        f"op: expected an invhvp operator, an (n, d) gradient array or a sequence of them, got {type(op).__name__}"
    )
