r"""A lower end of the spectrum for indefinite operators (``psd=False``, e.g. a model's Hessian).

``A + λI`` is positive definite iff ``λ > −λ_min(A)``.  Iterative solvers need that, and their
error bounds need a positive lower bound on ``λ_min(A + λI)``.  For an operator that declares
no lower bound (``op.eig_lower()`` is ``None``):

- from structure when the eigenproblem is small (``op.spectrum``): exact, with its rounding
  allowance;
- otherwise ``k`` Lanczos steps: the smallest Ritz value ``θ`` is an *upper* bound on
  ``λ_min`` (interlacing), so the lower end is estimated with a margin,
  ``lower = min(θ − r, θ − (safety − 1)·|θ|)`` with ``r`` the Ritz residual (no margin when
  Lanczos exhausts the space).

"Certified" below means ``lower + λ > 0`` for this estimate; it is a bound only in the exact
cases, otherwise an estimate whose margin is stated in ``source``.  The same Lanczos run gives
the upper end (``upper``, the largest Ritz value plus its residual), which LiSSA reuses.
"""

from __future__ import annotations

import numpy as np

from ..errors import OperatorTooLargeError, UnsupportedOperatorError
from ..estimators import _lanczos_run

__all__ = ["lower_end", "nonpositive_advice"]


def lower_end(counted, damping: float, gen, *, steps: int = 30, safety: float = 1.25) -> dict:
    """Estimate ``λ_min(A)`` from below and say whether ``A + damping·I`` is positive definite.

    Parameters
    ----------
    counted : Counted
        The operator (its products are counted).
    damping : float
        ``λ`` (the smallest value, for per-block damping).
    gen : Generator
        Seed of the Lanczos start vector.
    steps : int
        Lanczos steps (products).
    safety : float
        Margin factor on the smallest Ritz value (``>= 1``).

    Returns
    -------
    dict
        ``lower`` (estimated lower bound on ``λ_min(A)``), ``ritz_min``, ``residual``,
        ``upper_ritz``/``upper`` (the largest Ritz value and ``θ_max + residual``),
        ``exact`` (bool), ``certified`` (``lower + damping > 0``), ``n_matvec``, ``source``.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> from invhvp.solvers.base import Counted
    >>> from invhvp.solvers.curvature import lower_end
    >>> M = np.diag(np.concatenate([np.linspace(1.0, 10.0, 98), [-0.4, -0.5]]))
    >>> op = ih.MatrixFree(lambda v: M @ v, 100, np.float64, psd=False)
    >>> est = lower_end(Counted(op), 1.0, np.random.default_rng(0))
    >>> est["ritz_min"] >= -0.5 - 1e-12 and -0.5 >= est["lower"], est["certified"]  # θ_min >= λ_min
    (True, True)
    >>> lower_end(Counted(op), 0.45, np.random.default_rng(0))["certified"]
    False
    """
    op = counted.op
    known = op.eig_lower()
    if known is not None:
        return {
            "lower": float(known),
            "exact": True,
            "certified": known + damping > 0,
            "n_matvec": 0,
            "source": "declared by the operator (eig_lower)",
        }
    try:
        sp = op.spectrum(max_dim=steps)
    except (UnsupportedOperatorError, OperatorTooLargeError):
        sp = None
    if sp is not None:
        counted.add(min(op.size, op.n_samples or op.size))
        lo, hi = sp.min - sp.rounding, sp.max + sp.rounding
        return {
            "lower": lo,
            "ritz_min": sp.min,
            "residual": 0.0,
            "upper_ritz": sp.max,
            "upper": hi,
            "exact": True,
            "certified": lo + damping > 0,
            "n_matvec": 0,
            "source": "exact eigenvalues from structure (− rounding allowance)",
        }
    run = _lanczos_run(op, steps, gen, counted.counter)
    theta, res = float(run.evals[0]), float(run.residuals[0])
    tol = 10 * run.evals.size * run.eps * max(float(np.max(np.abs(run.evals))), 1e-300)
    if run.exhausted:
        lower, how = (
            theta - tol,
            f"Lanczos exhausted the space ({run.n_matvec} products): exact up to rounding",
        )
    else:
        lower = min(theta - res, theta - (safety - 1.0) * abs(theta)) - tol
        how = (
            f"Lanczos ({run.n_matvec} products): smallest Ritz value θ = {theta:.4g} is an upper bound on "
            f"λ_min; lower end estimated as min(θ − residual, θ − {safety - 1:g}·|θ|)"
        )
    top = float(run.evals[-1])
    return {
        "lower": lower,
        "ritz_min": theta,
        "residual": res,
        "upper_ritz": top,
        "upper": top + float(run.residuals[-1]) + tol,
        "exact": run.exhausted,
        "certified": lower + damping > 0,
        "n_matvec": run.n_matvec,
        "source": how,
    }


def nonpositive_advice(est: dict, damping: float, who: str) -> str:
    """The advice of a NONPOSITIVE_CURVATURE status from a :func:`lower_end` estimate."""
    need = max(-est["lower"], 0.0)
    return (
        f"{who} could not certify that A + damping·I is positive definite: the lower end of the spectrum "
        f"of A is estimated at {est['lower']:.4g} ({est['source']}), and damping = {damping:.4g} does not "
        f"exceed {need:.4g}. Use damping > {need:.4g} (e.g. {2 * need:.3g}), more lanczos_steps for a sharper "
        "estimate, or a Gauss-Newton operator (psd=True) instead of an indefinite Hessian"
    )
