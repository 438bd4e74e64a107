"""Result types returned by solvers and estimators."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Status", "SolveResult"]


class Status(enum.Enum):
    """Outcome of a solve.

    ``SUCCESS``
        Exact solvers finished, or every column met the iterative stopping rule.
    ``MAX_ITER``
        The iteration budget ran out before every column met the stopping rule.
    ``NONPOSITIVE_CURVATURE``
        CG met a direction with ``pᵀ(A + λI)p <= 0``: the damped operator is not
        positive definite (increase ``damping`` or check the operator's ``psd``).
    ``DIVERGED``
        The iterates grew without bound (e.g. LiSSA with a step above ``1/(λ_max+λ)``
        or a batch below the variance threshold).
    ``NONFINITE``
        NaN or infinity appeared during the computation.
    """

    SUCCESS = "success"
    MAX_ITER = "max_iter"
    NONPOSITIVE_CURVATURE = "nonpositive_curvature"
    DIVERGED = "diverged"
    NONFINITE = "nonfinite"

    @property
    def ok(self) -> bool:
        return self is Status.SUCCESS


@dataclass(frozen=True)
class SolveResult:
    """What :func:`invhvp.solve` returns.

    Attributes
    ----------
    x : array
        The solution, same array type, device, dtype and shape as the right-hand side.
    status : Status
        Outcome; ``result.ok`` is ``status is Status.SUCCESS``.
    n_iter : int
        Iterations performed (0 for direct solvers).
    n_matvec : int
        Operator-vector products spent, counted by a wrapper around the operator
        (a product with a ``d×k`` block counts ``k``).  The final residual check
        done by :func:`solve` is not included.
    residual_norm : array
        True residual ``‖b − (A + λI)x‖₂`` per column (shape ``(k,)``; a 0-d array
        for a 1-D right-hand side), recomputed from the operator after the solve.
    info : dict
        Method used and why, chosen hyperparameters, bounds, diagnostics.
    """

    x: Any
    status: Status
    n_iter: int
    n_matvec: int
    residual_norm: Any
    info: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status is Status.SUCCESS
