r"""Cheaper products for the iterative solvers, formed in their one-time work (never by an operator).

:func:`fast_operator` dispatches on the operator type (``functools.singledispatch``) and returns
an operator with the same matrix and cheaper products, or the operator itself:

- :class:`~invhvp.LowRankPlusIdentity` ``A = μI + sUᵀU`` with ``U`` ``n×d``: when ``d <= n`` and
  the ``d×d`` Gram fits (``d² <= max_elements``), ``G = sUᵀU`` is formed once (``n·d²`` flops,
  counted as ``d`` products, as :class:`~invhvp.Exact` counts it) and each product costs
  ``2d²k`` instead of ``4ndk``.  With ``d > n`` the factor products are already the cheaper
  ones and are kept.

Solvers use the result for their iterations and preconditioners, and the original operator
for the true residual behind every status (so a status never rests on the Gram alone).
"""

from __future__ import annotations

import functools

from .. import _backend as Bk
from .._arrays import row_sq_norms
from ..operators import LowRankPlusIdentity, Operator

__all__ = ["fast_operator", "GramProducts", "MAX_GRAM_ELEMENTS"]

#: Largest Gram (entries) formed for faster products: 2**26 (256 MiB in float32).
MAX_GRAM_ELEMENTS = 1 << 26


class GramProducts(Operator):
    """``μI + G`` with the ``d×d`` Gram ``G = sUᵀU`` of a :class:`~invhvp.LowRankPlusIdentity` held dense."""

    def __init__(self, op: LowRankPlusIdentity):
        U = op.factor
        self.source = op
        self.gram = op.scale * (U.T @ U)
        self.shift = op.shift
        self._xp, self._size, self._dtype, self._device = op.xp, op.size, op.dtype, op.device
        self._psd = True

    def _matmat(self, V):
        out = self.gram @ V
        return out + self.shift * V if self.shift != 0.0 else out

    def to_dense(self):
        xp = self._xp
        return self.gram + self.shift * xp.eye(self._size, dtype=self._dtype, device=self._device)

    def diagonal(self):
        return self.shift + self.source.scale * row_sq_norms(self.source.factor.T)

    def eig_lower(self) -> float:
        return self.shift

    @property
    def n_samples(self) -> int:
        return self.source.n_samples


@functools.singledispatch
def fast_operator(op, counted, max_elements: int = MAX_GRAM_ELEMENTS) -> tuple[Operator, str]:
    """``(operator with cheaper products, description)``; ``op`` itself when nothing is cheaper.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> from invhvp.solvers.base import Counted
    >>> U = np.random.default_rng(0).standard_normal((500, 20))
    >>> c = Counted(ih.LowRankPlusIdentity(U))
    >>> fast, how = fast_operator(c.op, c)
    >>> how.startswith("d×d Gram"), c.n, bool(np.allclose(fast.matvec(np.ones(20)), c.op.matvec(np.ones(20))))
    (True, 20, True)
    """
    return op, "operator products"


@fast_operator.register
def _(op: LowRankPlusIdentity, counted, max_elements: int = MAX_GRAM_ELEMENTS):
    n, d = (int(v) for v in op.factor.shape)
    if d > n or d * d > max_elements:
        why = "d > n" if d > n else f"the {d}×{d} Gram exceeds {max_elements} entries"
        return op, f"factor products Uᵀ(UV) ({why})"
    counted.add(d)
    fast = GramProducts(op)
    itemsize = 4 if Bk.eps(op.dtype) > 1e-10 else 8
    return fast, f"d×d Gram UᵀU formed once (d = {d} <= n = {n}, {d * d * itemsize / 2**20:.3g} MiB)"
