"""The "Hessian-free" baseline: replace ``(A + λI)⁻¹`` by the identity."""

from __future__ import annotations

from dataclasses import dataclass

from .._arrays import row_sq_norms
from .base import Outcome, Solver
from .inverse import Inverse

__all__ = ["Identity"]


@dataclass(frozen=True)
class Identity(Solver):
    r"""Return the right-hand side unchanged: ``x = b`` (the Hessian-free baseline).

    Ignores the operator *and* the damping, so the influence of training point ``z`` on
    test point ``z_t`` becomes ``I(z_t, z) = −g_testᵀ g_train`` (a plain gradient inner
    product; Pruthi et al. 2020, "Hessian-free" in the DataInf paper).  Works with every
    operator, costs one copy of ``b`` and no operator products.  ``residual_norm`` is the
    (large) residual against ``A + λI``; the status is SUCCESS when it is finite (a baseline,
    not a solver of the system), with the a-posteriori ``error_bound`` in ``info``.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> res = ih.solve(ih.Dense(4.0 * np.eye(2)), np.array([1.0, 2.0]), ih.Identity(), damping=1.0)
    >>> res.x, res.info["method"]
    (array([1., 2.]), 'identity')
    """

    name = "identity"

    def _factor(self, counted, damping, rng=None):
        return IdentityInverse(self, counted, float(damping) if not isinstance(damping, tuple) else damping)


class IdentityInverse(Inverse):
    kind = "approximation"
    computes_x = False

    def __init__(self, solver, counted, damping):
        super().__init__(
            solver,
            counted,
            damping,
            {"method": "identity", "note": "Hessian-free baseline: x = b, the operator and the damping are ignored"},
        )

    def _apply(self, B):
        return Outcome(x=self.operator.xp.asarray(B, copy=True))

    def _quad_own(self, T, chunk_size):
        U = getattr(self.operator, "factor", None)
        return None if U is None else T @ U.T

    def _diag_own(self, chunk_size):
        U = getattr(self.operator, "factor", None)
        return None if U is None else row_sq_norms(U)
