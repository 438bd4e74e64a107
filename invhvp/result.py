"""Result types returned by solvers and estimators."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Status", "SolveResult"]


class Status(enum.Enum):
    """Outcome of a solve; every value other than ``SUCCESS`` is a reported failure.

    What SUCCESS means is a checked claim, per solver (docs/theory.md §7):

    ``SUCCESS``
        The solver's documented accuracy contract was verified against the true residual
        ``r = b − (A + λI)x`` (exact solvers: estimated forward error ``<= rtol``; CG: the
        true residual meets ``rtol``/``atol``; LiSSA: a valid plan whose bound meets ``rtol``
        and no residual evidence against it; DataInf/Identity: applied as specified, with a
        finite a-posteriori bound).
    ``INACCURATE``
        The computation finished but its accuracy cannot be vouched for: an ill-conditioned
        exact solve (use float64 or more damping), a residual that contradicts the claimed
        accuracy (e.g. a random or inconsistent operator), a LiSSA step above ``1/(λ_max+λ)``.
    ``MAX_ITER``
        The iteration or matvec budget ran out before the target was met.
    ``DIVERGED``
        The iterates grew without bound (LiSSA with a step or batch outside the theory).
    ``NONPOSITIVE_CURVATURE``
        ``A + λI`` is not positive definite (CG met ``pᵀ(A + λI)p <= 0``, or a certified
        lower end of the spectrum is not positive).
    ``NONFINITE``
        NaN or infinity appeared in the solution or the residual.
    """

    SUCCESS = "success"
    INACCURATE = "inaccurate"
    MAX_ITER = "max_iter"
    DIVERGED = "diverged"
    NONPOSITIVE_CURVATURE = "nonpositive_curvature"
    NONFINITE = "nonfinite"

    @property
    def ok(self) -> bool:
        return self is Status.SUCCESS

    @property
    def severity(self) -> int:
        """Order used to combine statuses (blocks, columns): the worst one wins."""
        return _SEVERITY[self]

    @staticmethod
    def worst(statuses) -> Status:
        """The most severe of ``statuses`` (``SUCCESS`` for an empty collection)."""
        return max(statuses, key=lambda s: _SEVERITY[s], default=Status.SUCCESS)


_SEVERITY = {
    Status.SUCCESS: 0,
    Status.INACCURATE: 1,
    Status.MAX_ITER: 2,
    Status.DIVERGED: 3,
    Status.NONPOSITIVE_CURVATURE: 4,
    Status.NONFINITE: 5,
}


@dataclass(frozen=True)
class SolveResult:
    """What :func:`invhvp.solve` and :meth:`invhvp.Inverse.solve` return.

    Attributes
    ----------
    x : array
        The solution, same array type, device, dtype and shape as the right-hand side.
    status : Status
        Outcome, checked against the true residual (docs/theory.md §7).
    n_iter : int
        Iterations performed (0 for direct solvers).
    n_matvec : int
        Operator-vector products spent by this solve, counted by a wrapper around the
        operator (a product with a ``d×k`` block counts ``k``).  The residual check is
        counted separately in ``info["check_matvec"]``; one-time setup work of an
        :class:`~invhvp.Inverse` in ``info["setup_matvec"]``.
    residual_norm : array
        True residual ``‖b − (A + λI)x‖₂`` per column (float64 numpy, shape ``(k,)``; a
        float64 scalar for a 1-D right-hand side, as every per-column entry of ``info``), or ``None``
        when the check was skipped.
    info : dict
        Method used and why, chosen hyperparameters, bounds (``error_bound``: an upper
        bound on ``‖x − x*‖`` per column where one is known), ``advice`` when not SUCCESS.
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
