r"""The randomized Nyström preconditioner (Frangella, Tropp & Udell, SIMAX 2023).

For ``A + λI`` with ``A − sI ⪰ 0`` (``s = op.eig_lower()``, or a certified lower end for an
indefinite operator) let ``H = A − sI``, ``μ = s + λ`` and ``Ĥ = V Λ̂ Vᵀ ⪯ H`` a rank-``ℓ``
Nyström approximation (:mod:`invhvp.solvers.sketch`).  Then

.. math:: P = \frac{V(\hat Λ + μI)V^T}{\hat λ_ℓ + μ} + (I − VV^T),\qquad
          P^{-1} = V\Big(\frac{\hat λ_ℓ + μ}{\hat Λ + μI} − I\Big)V^T + I ,

applied in ``O(dℓ)`` per column.  ``I ⪯ P ⪯ κ_P I`` with ``κ_P = (λ̂_1 + μ)/(λ̂_ℓ + μ)``, and the
preconditioned matrix ``M = P^{-1/2}(A + λI)P^{-1/2}`` satisfies

.. math:: μ − ν \le λ_{min}(M),\qquad λ_{max}(M) \le \hat λ_ℓ + μ + \|H − \hat H\| ,

(the lower end from ``Ĥ ⪯ H + νI``, the upper from ``P⁻¹ ⪯ I``), so
``κ(M) <= (λ̂_ℓ + μ + ‖E‖)/μ``: a few CG iterations once ``ℓ`` exceeds about twice the number of
eigenvalues above ``μ``, whatever ``μ`` is.  The same numbers give preconditioned LiSSA its
step bound (docs/theory.md §8.6–8.11).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .. import _backend as Bk
from .. import _checks as C
from .._arrays import as_generator
from ..errors import UnsupportedOperatorError
from .base import Counted
from .inverse import smallest_damping
from .precond import Applied, Preconditioner
from .sketch import MAX_MEMORY, default_max_rank, nystrom

__all__ = ["NystromPreconditioner", "NystromApplied"]


class NystromApplied(Applied):
    """A built Nyström preconditioner; ``approx``, ``mu`` and ``bounds`` describe it.

    ``bounds``: ``m_lower`` (``μ − ν <= λ_min(M)``; ``λ̂_ℓ + μ − ν`` when the sketch spans the
    whole space, which leaves no complement), ``m_upper`` (estimated upper bound on
    ``λ_max(M)``), ``p_max`` (``κ_P = λ_max(P)``, ``λ_min(P) = 1``), ``lambda_max_upper``
    (``λ̂_1 + ‖E‖``: an estimated upper bound on ``λ_max(A − sI)``), or ``None`` where ``‖E‖``
    was not estimated.
    """

    def __init__(self, fn, size, info, n_matvec, approx, mu, bounds):
        super().__init__(fn, "nystrom", size, info, n_matvec)
        self.approx, self.mu, self.bounds = approx, mu, bounds


@dataclass(frozen=True, eq=False)
class NystromPreconditioner(Preconditioner):
    r"""Randomized Nyström preconditioner for ``A + λI``, built once per block.

    ``CG(preconditioner="nystrom")`` uses the adaptive default; this class gives control.

    **Construction** (:func:`invhvp.solvers.sketch.nystrom`): a Gaussian sketch of
    ``initial_rank`` columns, doubled (only the new columns are multiplied by the operator)
    until the estimated preconditioned condition number ``(λ̂_ℓ + μ + ‖E‖)/μ`` is at most
    ``kappa_target`` -- ``‖E‖ = ‖H − Ĥ‖`` by ``error_steps`` Lanczos steps -- or the budget
    (``max_rank``, ``max_memory``, ``max_matvec``) is spent.  With ``rank`` set, exactly
    ``rank`` columns and no growth.  Stable in float32 (shift ``ν``, float64 small factors).

    **Cost**: ``ℓ`` operator products plus ``error_steps`` per growth check, ``O(dℓ²)``
    float64 work, ``dℓ`` numbers of memory; ``4dℓ`` flops per column per application.  All of
    it is reported in ``applied.info`` (rank, growth history, ``ν``, ``‖E‖`` estimate, condition
    estimate, products, seconds, bytes).

    Parameters
    ----------
    rank : int, optional
        Fixed sketch size (no growth).
    initial_rank : int, default 64
        First sketch size of the adaptive growth.
    kappa_target : float, default 10
        Target of the estimated condition number of the preconditioned system.
    max_rank : int, optional
        Largest sketch; default ``min(d, 2048)``, further capped by ``max_memory``.
    max_memory : float, default 2 GiB
        Bytes the construction may hold (about ``4·d·ℓ`` numbers).
    max_matvec : int, optional
        Largest number of operator products for the construction.
    error_steps : int, default 10
        Lanczos steps of the ``‖E‖`` estimate (``0``: skip it; the growth then uses
        ``λ̂_ℓ`` alone and preconditioned LiSSA cannot use the preconditioner).
    safety : float, default 1.25
        Safety factor of the ``‖E‖`` upper estimate.
    rng : Generator, int or None, default 0
        Seed of the sketch.  Fixed by default: the sketch is a numerical device, and a fixed
        seed makes iteration counts reproducible; ``None`` draws fresh entropy.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> rng = np.random.default_rng(0)
    >>> U = rng.standard_normal((500, 1000)) / np.arange(1, 1001)   # decaying spectrum
    >>> A, b = ih.LowRankPlusIdentity(U), rng.standard_normal(1000)
    >>> plain = ih.solve(A, b, ih.CG(rtol=1e-8), damping=1e-4)
    >>> pre = ih.solve(A, b, ih.CG(rtol=1e-8, preconditioner=ih.NystromPreconditioner()), damping=1e-4)
    >>> plain.n_iter > 5 * pre.n_iter, pre.info["preconditioner_info"]["rank"]   # 111 vs 14 iterations
    (True, 128)
    """

    rank: int | None = None
    initial_rank: int = 64
    kappa_target: float = 10.0
    max_rank: int | None = None
    max_memory: float = MAX_MEMORY
    max_matvec: int | None = None
    error_steps: int = 10
    safety: float = 1.25
    rng: Any = 0

    def __post_init__(self):
        C.integer(self.rank, "rank", minimum=1, optional=True)
        C.integer(self.initial_rank, "initial_rank", minimum=1)
        C.real(self.kappa_target, "kappa_target", minimum=1.0, strict=True)
        C.integer(self.max_rank, "max_rank", minimum=1, optional=True)
        C.real(self.max_memory, "max_memory", minimum=0.0, strict=True)
        C.integer(self.max_matvec, "max_matvec", minimum=1, optional=True)
        C.integer(self.error_steps, "error_steps", minimum=0)
        C.real(self.safety, "safety", minimum=1.0)
        as_generator(self.rng)  # validates the seed

    def build(self, op, damping, rng=None) -> NystromApplied:
        return self.build_with_lower(op, damping, rng, None)

    def build_with_lower(self, op, damping, rng=None, eig_lower=None) -> NystromApplied:
        """Build for ``op + damping·I``; ``eig_lower`` is required when ``op.psd`` is False."""
        lam = smallest_damping(damping)
        if op.psd:
            s = float(op.eig_lower() or 0.0)
        elif eig_lower is not None:
            s = float(eig_lower)
        else:
            raise UnsupportedOperatorError(
                f"preconditioner='nystrom' needs a positive semidefinite operator or a certified lower end of "
                f"its spectrum ({type(op).__name__} has psd=False); invhvp.CG certifies one itself"
            )
        mu = s + lam
        gen = as_generator(self.rng if rng is None else rng)
        counted = Counted(op)
        cap = default_max_rank(op.size, op.dtype, self.max_memory)
        if self.max_rank is not None:
            cap = min(cap, self.max_rank)
        fixed = self.rank is not None
        approx = nystrom(
            counted,
            min(self.rank, op.size) if fixed else min(self.initial_rank, cap),
            gen,
            shift=s,
            mu=mu,
            kappa_target=None if fixed else self.kappa_target,
            max_rank=self.rank if fixed else cap,
            max_matvec=self.max_matvec,
            error_steps=self.error_steps,
            safety=self.safety,
        )
        return _applied(approx, mu, op.size, counted.n, fixed, self)


def _applied(approx, mu, size, n_mv, fixed, cfg) -> NystromApplied:
    xp = Bk.namespace(approx.V)
    vals, tail = approx.values_dev, approx.tail
    if mu > 0:
        f = (tail + mu) / (vals + mu)
    elif tail > 0:  # μ = 0 with a positive tail: P = VΛ̂Vᵀ/λ̂_ℓ + (I − VVᵀ)
        f = tail / vals
    else:  # nothing positive to scale by (A ≈ 0 or no damping on a singular sketch): no preconditioning
        f = xp.ones_like(vals)

    def apply(R):
        return approx.apply_function(R, f, 1.0)

    err = approx.error
    lam1 = approx.top
    bounds = None
    if err is not None and mu > 0:
        # M ⪰ P^{-1/2}(Ĥ + μI)P^{-1/2} - ν: eigenvalue λ̂_ℓ + μ on range(V), μ on its complement
        full = approx.rank == size and not approx.truncated
        bounds = {
            "m_lower": (tail if full else 0.0) + mu - approx.nu,
            "m_upper": tail + mu + err["upper"],
            "p_max": (lam1 + mu) / (tail + mu),
            "lambda_max_upper": lam1 + err["upper"],
        }
    info = {
        "rank": approx.rank,
        "sketch_columns": approx.history[-1]["rank"],
        "truncated": approx.truncated,
        "adaptive": not fixed,
        "growth": approx.history,
        "kappa_target": None if fixed else cfg.kappa_target,
        "mu": mu,
        "shift": approx.shift,
        "nu": approx.nu,
        "lambda_hat_1": lam1,
        "lambda_hat_tail": tail,
        "error_norm": None if err is None else err["value"],
        "error_norm_upper": None if err is None else err["upper"],
        "condition_estimate": approx.kappa,
        "sketch_matvec": n_mv,
        "sketch_seconds": approx.seconds,
        "memory_bytes": approx.memory_bytes(),
        "bounds": bounds,
    }
    if approx.kappa is not None and not math.isfinite(approx.kappa):
        info["condition_estimate"] = None
    return NystromApplied(apply, size, info, n_mv, approx, mu, bounds)
