"""The "Hessian-free" baseline: replace ``(A + λI)⁻¹`` by the identity."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Counted, Outcome, Solver

__all__ = ["Identity"]


@dataclass(frozen=True)
class Identity(Solver):
    r"""Return the right-hand side unchanged: ``x = b`` (the Hessian-free baseline).

    Ignores the operator *and* the damping, so the influence of training point ``z`` on
    test point ``z_t`` becomes ``I(z_t, z) = −g_testᵀ g_train`` (a plain gradient inner
    product; Pruthi et al. 2020, "Hessian-free" in the DataInf paper).  Works with every
    operator, costs one copy of ``b`` and no operator products.  ``result.residual_norm`` is
    the (large) residual of ``b`` against ``A + λI``; the status is still ``SUCCESS``:
    this is a baseline, not a solver of the system.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> res = ih.solve(ih.Dense(4.0 * np.eye(2)), np.array([1.0, 2.0]), ih.Identity(), damping=1.0)
    >>> res.x, res.info["method"]
    (array([1., 2.]), 'identity')
    """

    name = "identity"

    def _run(self, counted: Counted, B, damping) -> Outcome:
        xp = counted.op.xp
        info = {
            "method": "identity",
            "note": "Hessian-free baseline: x = b, the operator and the damping are ignored",
        }
        return Outcome(x=xp.asarray(B, copy=True), n_iter=0, info=info)
