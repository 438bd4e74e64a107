"""LiSSA: stochastic Richardson iteration with a step, batch size and step count from theory."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _backend as Bk
from .. import _checks as C
from .._arrays import as_generator, col_norms64
from ..bounds.lissa import plan_lissa
from ..errors import DampingError, InputError, UnsupportedOperatorError
from ..operators import MatrixFree
from ..result import Status
from .base import Outcome, Solver
from .inverse import Inverse
from .lissa_estimates import estimate_lambda_max, estimate_variance

__all__ = ["LiSSA", "LissaInverse", "DEFAULT_MAX_MATVEC"]

#: Default budget, in full-operator products per right-hand-side column (per block).
DEFAULT_MAX_MATVEC = 2000

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

    **Status** (docs/theory.md §7): SUCCESS only when ``η <= 1/(L + λ)``, the plan's bound
    meets ``rtol`` and nothing at run time contradicts it.  ``MAX_ITER`` when the budget cannot
    meet ``rtol`` (the needed budget is in ``info["advice"]``); ``INACCURATE`` for a step above
    the bound, a batch below the variance threshold, or a true residual that certifies a
    relative error above ``rtol`` (``‖x−x*‖/‖x*‖ >= ‖r‖·λ/((L+λ)‖v‖)``); ``DIVERGED`` when
    full-batch residuals grow (impossible for a valid step), an iterate exceeds
    ``divergence_factor·‖v‖/λ`` (above ``‖x*‖`` for a PSD operator), or the residual
    certifies a relative error above 1; ``NONFINITE`` on NaN/inf.  The last good iterate is
    returned, never NaN.

    **Cost**: ``T`` products with a ``B``-sample estimate per solve plus the setup estimates.

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
        Factor on a Lanczos estimate of ``λ_max``.
    lanczos_steps, n_probes, probe_batch : int
        Estimation effort.
    rng : Generator, int or None
        Seed of the mini-batch draws and probes.
    check_every : int, default 10
        Divergence check period (a ``k``-element host sync each time).
    divergence_factor : float, default 10
        Iterates above ``divergence_factor·‖v‖/λ`` count as diverged.
    callback : callable, optional
        ``callback(t, T)`` every ``check_every`` steps (progress).

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
    rng: Any = None
    check_every: int = 10
    divergence_factor: float = 10.0
    callback: Any = None
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
        if (
            self.batch_size != "full"
            and not self.explicit
            and op.supports_minibatch
            and op.n_samples is None
        ):
            raise UnsupportedOperatorError(
                "LiSSA's plan prices a mini-batch product as B/n of a full one and needs the number of "
                "samples n: pass MatrixFree(..., n_samples=n), or batch_size='full'"
            )
        if not op.psd:
            raise UnsupportedOperatorError(
                f"LiSSA needs a positive semidefinite operator ({type(op).__name__} has psd=False): its step "
                "rule and bound assume it; use invhvp.CG() for an indefinite operator"
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
        op = counted.op
        self.gen = gen
        self.lam_eff = lam + (op.eig_lower() or 0.0)
        if not self.lam_eff > 0.0:
            raise DampingError("damping: LiSSA needs damping > 0 (its step rule and bound need λ > 0)")
        bs = solver.batch_size
        if bs is None and not op.supports_minibatch:
            bs = "full"
            self.info["batch_note"] = f"{type(op).__name__} has no mini-batch sampler: full-batch products"
        n = op.n_samples
        est = estimate_lambda_max(solver, counted, gen)
        if bs != "full":
            est.update(estimate_variance(solver, counted, gen, est))
        self.L = est["lambda_max_upper"]
        # the step check uses the point value when it is exact (its rounding allowance is for planning)
        self.L_check = est.get("lambda_max_value", self.L)
        if solver.max_matvec is not None:
            budget_mv = float(solver.max_matvec)
        else:  # explicit hyperparameters are run as given; a plan gets the default budget
            budget_mv = None if solver.explicit else float(DEFAULT_MAX_MATVEC)
        unit = n if n is not None else 1
        p = plan_lissa(
            self.L if solver.step is None else self._plan_L(solver.step),
            self.lam_eff,
            est.get("sigma1_sq", 0.0),
            solver.rtol,
            n_samples=unit if (n is not None or bs == "full") else None,
            budget=None if budget_mv is None else budget_mv * unit,
            step=solver.step,
            batch_size=bs,
            steps=solver.steps,
        )
        self.plan = p.as_dict()
        self.info.update(estimates=est, plan=self.plan, mode="explicit" if solver.explicit else "automatic")
        self.info["max_matvec"] = budget_mv
        if "lambda_max_user_rejected" in est:
            self.info["lambda_max_note"] = est["lambda_max_user_rejected"]
        self._set_setup_status(p, budget_mv, unit, bs)

    def _plan_L(self, step: float) -> float:
        """``λ_max`` for evaluating a user step: within the dtype's precision of ``1/(λ_max+λ)`` counts as on it."""
        slack = 1 + 100 * Bk.eps(self.operator.dtype)
        if step <= slack / (self.L_check + self.lam_eff):
            return min(self.L_check, max(1.0 / step - self.lam_eff, 0.0))
        return self.L_check

    def _set_setup_status(self, p, budget_mv, unit, bs):
        eta_max = 1.0 / (self.L_check + self.lam_eff)
        # λ_max of data held in this dtype is known to about its precision
        if p.step > eta_max * (1 + 100 * Bk.eps(self.operator.dtype)):
            self.setup_status = Status.INACCURATE
            self.info["advice"] = (
                f"step η={p.step:.3g} exceeds 1/(λ_max+λ)={eta_max:.3g} (λ_max estimate {self.L:.3g}): "
                "no error bound applies and the iteration may diverge; leave step unset for a planned one"
            )
        elif not p.meets_target:
            need = p.cost_to_meet_target
            if need is None:
                self.setup_status = Status.INACCURATE
                self.info["advice"] = (
                    f"the fixed hyperparameters cannot meet rtol={self.solver.rtol} (batch size "
                    f"{bs} below the variance threshold ησ₁²/(λ(2−ηλ)), docs/theory.md §5); "
                    f"predicted relative error bound {p.predicted_error:.3g}"
                )
            else:
                self.setup_status = Status.MAX_ITER
                self.info["advice"] = (
                    f"the plan cannot meet rtol={self.solver.rtol} within max_matvec={budget_mv} per column; "
                    f"about {math.ceil(need / unit)} matvecs per column are needed (predicted relative error "
                    f"bound {p.predicted_error:.3g}); raise max_matvec, add damping, or use invhvp.CG()"
                )

    # ----------------------------------------------------------------- iteration
    def _apply(self, V):
        s, op, xp = self.solver, self.operator, self.operator.xp
        plan = self.plan
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
                AU = self._counted.matmat(U)
            else:
                AU = op.minibatch(Bsz, self.gen)._matmat(U)
                samples += Bsz * k
            G = AU + lam * U - V  # = −(stochastic) residual
            U = U - eta * G
            if t % s.check_every and t != T:
                continue
            nrm = col_norms64(U)
            if not np.all(np.isfinite(nrm)):
                status = Status.NONFINITE
                break
            if np.any(nrm > limit):
                status = Status.DIVERGED
                break
            if Bsz is None and t > 1:  # full batch: ‖r_t‖ never grows for η <= 2/(λ_max+λ) ...
                rn = col_norms64(G)
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
            info["advice"] = (
                f"LiSSA {status.value} at step {t}: the step η={eta:.3g} must be <= 1/(λ_max+λ) and the batch "
                f"size {Bsz if Bsz is not None else 'full'} above the variance threshold (docs/theory.md §5); "
                "leave step/batch_size/steps unset for a planned run, or use invhvp.CG()"
            )
        return Outcome(x=good, status=Status.worst([status, self.setup_status]), n_iter=t, info=info)

    def _verify(self, out, chk):
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
