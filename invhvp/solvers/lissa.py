"""LiSSA: stochastic Richardson iteration with a step, batch size and step count from theory."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _backend as Bk
from .. import _checks as C
from .._arrays import as_generator, col_dots64, col_norms64
from ..errors import InputError, UnsupportedOperatorError
from ..operators import MatrixFree
from ..result import Status
from .base import Outcome, Solver
from .inverse import Inverse
from .lissa_setup import DEFAULT_MAX_MATVEC, setup_lissa
from .nystrom import NystromPreconditioner

__all__ = ["LiSSA", "LissaInverse", "DEFAULT_MAX_MATVEC"]

_CONVENTION = (
    "n_matvec counts full-operator products per column; a mini-batch product with B samples and "
    "k columns counts B*k/n (summed, rounded up), n = the operator's number of samples"
)


@dataclass(frozen=True, eq=False)
class LiSSA(Solver):
    r"""LiSSA (stochastic Richardson iteration) with theory-derived hyperparameters.

    Iterates, for all ``k`` columns at once (one mini-batch per step, shared by the columns),

    .. math:: u_0 = 0,\qquad u_t = u_{t-1} - \eta\,(\tilde A_t u_{t-1} + \lambda u_{t-1} - v),

    with ``Ã_t = op.minibatch(B, rng)`` an independent unbiased estimate from ``B`` samples
    drawn with replacement (``batch_size="full"``: the operator itself).  Koh & Liang's
    ``scale``/``depth`` is ``η = 1/scale``, ``T = depth`` (:meth:`from_scale`).

    **Plan** (setup, once per block; docs/theory.md §5): an upper estimate ``L`` of ``λ_max``
    (exact from structure when cheap, else Lanczos with a safety factor; a user number is
    checked with one product) and ``σ₁²`` (a structural bound for per-sample factors, else
    Hutchinson probes), then the cheapest ``(η, B, T)`` whose bound on the relative RMS error
    is ``<= rtol`` within ``max_matvec`` products per column (:func:`invhvp.bounds.plan_lissa`).
    Explicit ``step``/``batch_size``/``steps`` are evaluated against the same bound.

    **Preconditioned** (docs/theory.md §8.6–8.11):
    ``u_t = u_{t−1} − ηP⁻¹(Ã_t u_{t−1} + λu_{t−1} − v)`` with the Nyström preconditioner
    ``P`` (:class:`~invhvp.NystromPreconditioner`).  It is plain LiSSA on
    ``M = P^{-1/2}(A + λI)P^{-1/2}`` in ``w = P^{1/2}u``: the step bound becomes
    ``η <= 1/λ_max(M)`` (``λ_max(M) <= λ̂_ℓ + μ + ‖E‖``), the rate uses ``λ_min(M) >= μ − ν``,
    the variance term is unchanged (``P ⪰ I``), and the deterministic term is weighted by
    ``κ_P = λ_max(P)`` when errors are measured in the Euclidean norm.  For full batches the
    step count drops from about ``κ·log(1/ε)`` to ``κ(M)·log(κ_P/ε²)/2``; for mini-batches a
    larger step needs a proportionally larger batch, so the planned cost changes little.
    ``preconditioner="auto"`` (default) builds the sketch only when the plain plan costs
    more than ``precondition_above`` full products per column, then keeps the cheaper of the
    two plans (both in ``info["plans"]``, the choice in ``info["choice"]``).

    **Indefinite operators** (``psd=False``, e.g. a Hessian): the setup estimates the lower
    end ``s`` of the spectrum (:mod:`invhvp.solvers.curvature`; the Lanczos run also gives
    ``λ_max``); with ``λ + s > 0`` the plan uses ``λ_eff = λ + s`` and the step bound
    ``1/max|λ_i + λ| = 1/(λ_max + λ)``; otherwise the status is ``NONPOSITIVE_CURVATURE`` with
    advice, and nothing is iterated (``x = 0``).

    **Status** (docs/theory.md §7): SUCCESS only when ``η`` is within its bound, the plan's
    bound meets ``rtol`` and nothing at run time contradicts it.  ``MAX_ITER`` when the budget
    cannot meet ``rtol`` (the needed budget is in ``info["advice"]``); ``INACCURATE`` for a step
    above the bound, a batch below the variance threshold, or a true residual that certifies a
    relative error above ``rtol`` (``‖x−x*‖/‖x*‖ >= ‖r‖·λ/((L+λ)‖v‖)``); ``DIVERGED`` when
    full-batch residuals grow (in the ``P⁻¹``-norm; impossible for a valid step), an iterate
    exceeds ``divergence_factor·‖v‖/λ`` (above ``‖x*‖`` for a PSD operator), or the residual
    certifies a relative error above 1; ``NONPOSITIVE_CURVATURE`` as above; ``NONFINITE`` on
    NaN/inf.  The last good iterate is returned, never NaN.

    **Cost**: ``T`` products with a ``B``-sample estimate per solve (plus ``T`` applications of
    ``P⁻¹``, ``4dℓ`` flops per column) plus the setup estimates and sketch (``setup_matvec``).

    Parameters
    ----------
    step, batch_size, steps : optional
        ``η``; ``B`` (int, ``"full"``) ; ``T``.  ``None``: planned.
    rtol : float, default 0.1
        Target relative RMS error ``sqrt(E‖u_T − u*‖²)/‖u*‖``.
    max_matvec : float, optional
        Budget in full-operator products per right-hand-side column (per block); default
        :data:`DEFAULT_MAX_MATVEC` = 2000.
    lambda_max : "auto", "lanczos", "exact" or float
        How to get ``L`` (a number is checked with one product, and replaced by an estimate
        if a product shows it is too small).
    variance : "auto" or float
        ``σ₁²``, or estimated.
    safety : float, default 1.25
        Factor on a Lanczos estimate of ``λ_max`` (and margin of the lower end of an
        indefinite operator).
    lanczos_steps, n_probes, probe_batch : int
        Estimation effort.
    rng : Generator, int or None
        Seed of the mini-batch draws and probes (default 0: reproducible; ``None``: fresh entropy).
    check_every : int, default 10
        Divergence check period (a ``k``-element host sync each time).
    divergence_factor : float, default 10
        Iterates above ``divergence_factor·‖v‖/λ`` count as diverged.
    callback : callable, optional
        ``callback(t, T)`` every ``check_every`` steps (progress).
    preconditioner : "auto", None, "nystrom" or NystromPreconditioner
        ``"auto"``: compare the plain and the Nyström-preconditioned plan (above);
        ``None``: plain LiSSA; ``"nystrom"`` or an instance: always preconditioned.
    precondition_above : float, default 100
        ``"auto"`` builds the sketch only when the plain plan needs more than this many full
        products per column.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> U = np.random.default_rng(0).standard_normal((2000, 20))
    >>> v = np.ones(20)
    >>> res = ih.solve(ih.LowRankPlusIdentity(U), v, ih.LiSSA(rng=0), damping=0.5)
    >>> x = ih.solve(ih.LowRankPlusIdentity(U), v, ih.Exact(), damping=0.5).x
    >>> bool(np.linalg.norm(res.x - x) <= 0.1 * np.linalg.norm(x)), res.status.value
    (True, 'success')
    """

    step: float | None = None
    batch_size: Any = None
    steps: int | None = None
    rtol: float = 0.1
    max_matvec: float | None = None
    lambda_max: Any = "auto"
    variance: Any = "auto"
    safety: float = 1.25
    lanczos_steps: int = 30
    n_probes: int = 16
    probe_batch: int = 32
    rng: Any = 0
    check_every: int = 10
    divergence_factor: float = 10.0
    callback: Any = None
    preconditioner: Any = "auto"
    precondition_above: float = 100.0
    name = "lissa"

    @classmethod
    def from_scale(cls, scale, depth, batch_size=1, **kwargs) -> LiSSA:
        """Koh & Liang's spelling: ``η = 1/scale``, ``T = depth`` (their recursion is the same)."""
        s = C.real(scale, "scale", minimum=0.0, strict=True)
        return cls(step=1.0 / s, steps=depth, batch_size=batch_size, **kwargs)

    def __post_init__(self):
        C.real(self.step, "step", minimum=0.0, strict=True, optional=True)
        if not (self.batch_size is None or self.batch_size == "full"):
            C.integer(self.batch_size, "batch_size", minimum=1)
        C.integer(self.steps, "steps", minimum=1, optional=True)
        for name in ("lanczos_steps", "n_probes", "probe_batch", "check_every"):
            C.integer(getattr(self, name), name, minimum=2 if name == "n_probes" else 1)
        C.real(self.rtol, "rtol", minimum=0.0, strict=True, maximum=1.0, strict_max=True)
        C.real(self.max_matvec, "max_matvec", minimum=0.0, strict=True, optional=True)
        if isinstance(self.lambda_max, str):
            C.choice(self.lambda_max, "lambda_max", ("auto", "lanczos", "exact"))
        else:
            C.real(self.lambda_max, "lambda_max", minimum=0.0)
        if isinstance(self.variance, str):
            C.choice(self.variance, "variance", ("auto",))
        else:
            C.real(self.variance, "variance", minimum=0.0)
        C.real(self.safety, "safety", minimum=1.0)
        C.real(self.divergence_factor, "divergence_factor", minimum=1.0, strict=True)
        if self.callback is not None and not callable(self.callback):
            raise InputError(f"callback: expected a callable or None, got {type(self.callback).__name__}")
        as_generator(self.rng)  # validates the seed
        if not (
            self.preconditioner in (None, "auto", "nystrom")
            or isinstance(self.preconditioner, NystromPreconditioner)
        ):
            raise InputError(
                f"preconditioner: expected None, 'auto', 'nystrom' or a NystromPreconditioner, got {self.preconditioner!r} "
                "(LiSSA's preconditioned plan needs the spectral bounds only the Nyström preconditioner provides)"
            )
        C.real(self.precondition_above, "precondition_above", minimum=0.0)

    @property
    def explicit(self) -> bool:
        return self.step is not None and self.batch_size is not None and self.steps is not None

    def check_supported(self, op) -> None:
        if self.batch_size not in (None, "full") and not op.supports_minibatch:
            hint = (
                "pass MatrixFree(..., sampler=...) for mini-batch products"
                if isinstance(op, MatrixFree)
                else "it has no per-sample structure"
            )
            raise UnsupportedOperatorError(
                f"LiSSA(batch_size={self.batch_size}) needs mini-batch estimates of {type(op).__name__}: "
                f"{hint}; or use batch_size='full' (exact products), or invhvp.CG()"
            )
        if self.batch_size != "full" and not self.explicit and op.supports_minibatch and op.n_samples is None:
            raise UnsupportedOperatorError(
                "LiSSA's plan prices a mini-batch product as B/n of a full one and needs the number of "
                "samples n: pass MatrixFree(..., n_samples=n), or batch_size='full'"
            )

    def _per_block(self, op, rng=None):
        gen = as_generator(self.rng) if rng is None else rng
        return [(self, np.random.default_rng(gen.integers(0, 2**63))) for _ in op.blocks]

    def _factor(self, counted, damping, rng=None):
        self.check_supported(counted.op)
        gen = as_generator(self.rng) if rng is None else rng
        return LissaInverse(self, counted, float(damping), gen)


class LissaInverse(Inverse):
    """LiSSA with its estimates and plan made once; each solve runs ``T`` steps."""

    kind = "iterative"

    def __init__(self, solver: LiSSA, counted, lam: float, gen):
        super().__init__(solver, counted, lam, {"method": "lissa", "matvec_convention": _CONVENTION})
        self.gen = gen
        st = setup_lissa(solver, counted, lam, gen)
        self.lam_eff, self.L, self.plan, self.prec = st.lam_eff, st.L, st.plan, st.prec
        self._prod = st.prod if st.prod is not None else counted
        self.info.update(st.info)
        self.setup_status = st.status

    def lam_lower(self) -> float | None:
        """``λ + s`` (``s``: the operator's or the certified lower end), less the rounding allowance."""
        if self.plan is None:
            return None
        return self._less_rounding(self.lam_eff)

    # ----------------------------------------------------------------- iteration
    def _apply(self, V):
        s, op, xp = self.solver, self.operator, self.operator.xp
        if self.plan is None:  # an indefinite operator whose A + λI is not certified: nothing to iterate
            return Outcome(x=xp.zeros_like(V), status=self.setup_status, info={"steps_run": 0})
        plan, prec = self.plan, self.prec
        eta, T, Bsz = plan["step"], plan["steps"], plan["batch_size"]
        lam, k = float(self.damping), int(V.shape[1])
        n = op.n_samples
        vnorm = col_norms64(V)
        u = Bk.eps(op.dtype)
        limit = s.divergence_factor * vnorm / self.lam_eff
        U = xp.zeros(V.shape, dtype=V.dtype, device=Bk.device_of(V))
        good, t_good, status, best_r, samples = U, 0, Status.SUCCESS, None, 0
        t = 0
        for t in range(1, T + 1):
            if t == 1:
                AU = xp.zeros_like(U)  # u_0 = 0: no product needed
            elif Bsz is None:
                AU = self._prod.matmat(U)
            else:
                AU = op.minibatch(Bsz, self.gen)._matmat(U)
                samples += Bsz * k
            G = AU + lam * U - V  # = −(stochastic) residual
            Z = G if prec is None else prec(G)
            U = U - eta * Z
            if t % s.check_every and t != T:
                continue
            nrm = col_norms64(U)
            if not np.all(np.isfinite(nrm)):
                status = Status.NONFINITE
                break
            if np.any(nrm > limit):
                status = Status.DIVERGED
                break
            if Bsz is None and t > 1:  # full batch: ‖r_t‖_{P⁻¹} never grows for η <= 2/λ_max(M) ...
                rn = col_norms64(G) if prec is None else np.sqrt(np.maximum(col_dots64(G, Z), 0.0))
                # ... beyond the rounding noise of computing it, u·(‖v‖ + (λ_max + λ)‖u‖)
                floor = 100.0 * u * (vnorm + (self.L + self.lam_eff) * nrm)
                if best_r is not None and np.any((rn > 2.0 * best_r) & (rn > floor)):
                    status = Status.DIVERGED
                    break
                best_r = rn if best_r is None else np.minimum(best_r, rn)
            good, t_good = U, t
            if s.callback is not None:
                s.callback(t, T)
        if samples:
            self._counted.add(math.ceil(samples / n - 1e-9) if n else samples // max(Bsz, 1))
        info = {"steps_run": t, "n_sample_products": samples}
        if status is not Status.SUCCESS:
            info["returned_iterate_step"] = t_good
            bound = "1/λ_max(P^{-1/2}(A+λI)P^{-1/2})" if prec is not None else "1/(λ_max+λ)"
            info["advice"] = (
                f"LiSSA {status.value} at step {t}: the step η={eta:.3g} must be <= {bound} and the batch "
                f"size {Bsz if Bsz is not None else 'full'} above the variance threshold (docs/theory.md §5); "
                "leave step/batch_size/steps unset for a planned run, or use invhvp.CG()"
            )
        return Outcome(x=good, status=Status.worst([status, self.setup_status]), n_iter=t, info=info)

    def _verify(self, out, chk):
        if self.plan is None:
            return self.setup_status, {}
        # ‖x − x*‖ >= ‖r‖/(L+λ) and ‖x*‖ <= ‖v‖/λ: a certified lower bound on the relative error
        lower = chk.r * self.lam_eff / ((self.L + self.lam_eff) * np.maximum(chk.b, 1e-300))
        info = {"relative_error_lower_bound": lower, "predicted_error": self.plan["predicted_error"]}
        if np.any(lower > 1.0):
            info["advice"] = (
                f"the true residual certifies a relative error >= {float(np.max(lower)):.3g}: LiSSA diverged "
                "(check step and batch size, docs/theory.md §5)"
            )
            return Status.DIVERGED, info
        if np.any(lower > self.solver.rtol):
            info["advice"] = (
                f"the true residual certifies a relative error >= {float(np.max(lower)):.3g} > rtol="
                f"{self.solver.rtol}: the estimates behind the plan were wrong"
            )
            return Status.INACCURATE, info
        return Status.SUCCESS, info
