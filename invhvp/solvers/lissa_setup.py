r"""LiSSA's one-time work: lower end, estimates, the plain and the preconditioned plan, the choice.

Order (docs/theory.md §5, docs/theory.md §8.6–8.11):

1. The lower end ``s`` of the spectrum: ``op.eig_lower()`` for a PSD operator; for an
   indefinite one (``psd=False``, e.g. a Hessian) a Lanczos estimate with a margin
   (:mod:`invhvp.solvers.curvature`).  ``λ_eff = λ + s`` must be positive; an indefinite
   operator whose ``A + λI`` is not certified gets ``NONPOSITIVE_CURVATURE`` and no plan.
   The step bound ``η <= 1/max|λ_i + λ|`` is then ``1/(λ_max + λ)``.
2. Plain plan: ``λ_max`` from above and ``σ₁²`` (:mod:`invhvp.solvers.lissa_estimates`), then
   :func:`invhvp.bounds.plan_lissa`.
3. Preconditioned plan, when asked for (``preconditioner="nystrom"`` or an instance) or, with
   the default ``"auto"``, when the plain plan costs more than ``precondition_above`` full
   products per column: an adaptive Nyström preconditioner ``P`` gives ``m <= λ_min(M)``,
   ``L_M >= λ_max(M)`` and ``κ_P``; the plan is the same search with ``(λ, λ_max + λ, weight)
   = (m, L_M, κ_P)``.  Each preconditioned step also applies ``P⁻¹`` (``4dℓ`` flops per
   column), priced as ``ℓ`` per-sample products when the operator declares ``n_samples``
   (exact for a Gram block, pessimistic for a model's Hessian).
4. The automatic choice: the plan that meets ``rtol`` at the lower planned cost (or, when
   neither meets it, the smaller predicted error).  Both plans are in ``info["plans"]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .. import _backend as Bk
from ..bounds.lissa import plan_lissa
from ..errors import DampingError
from ..result import Status
from .base import Counted
from .curvature import lower_end, nonpositive_advice
from .lissa_estimates import estimate_lambda_max, estimate_variance
from .nystrom import NystromPreconditioner
from .products import fast_operator

__all__ = ["LissaSetup", "setup_lissa", "DEFAULT_MAX_MATVEC"]

#: Default budget, in full-operator products per right-hand-side column (per block).
DEFAULT_MAX_MATVEC = 2000


@dataclass
class LissaSetup:
    """What a LiSSA inverse needs for its solves (see :func:`setup_lissa`)."""

    lam_eff: float
    L: float | None
    plan: dict | None
    prec: Any = None
    prod: Any = None
    status: Status = Status.SUCCESS
    info: dict = field(default_factory=dict)


def _cost(p, overhead=0.0):
    """Per-column cost (per-sample products) of meeting ``rtol``: the plan's, or the one it needs beyond its
    budget; ``overhead`` per-sample products per step (the ``P⁻¹`` application), scaled the same way."""
    if p.meets_target:
        return p.cost + p.steps * overhead
    if p.cost_to_meet_target is None:
        return math.inf
    return p.cost_to_meet_target * (1.0 + p.steps * overhead / max(p.cost, 1e-300))


def _better(pre, pre_cost, plain, plain_cost) -> bool:
    """Whether the preconditioned plan beats the plain one: meets rtol at lower cost, else a smaller bound."""
    if plain is None:
        return True
    if pre.meets_target != plain.meets_target:
        return pre.meets_target
    if pre.meets_target:
        return pre_cost < plain_cost
    return pre.predicted_error < plain.predicted_error


def setup_lissa(solver, counted, lam: float, gen) -> LissaSetup:
    """Run the one-time work of ``LiSSA`` for one block (see the module docstring)."""
    op = counted.op
    info: dict = {}
    bs = solver.batch_size
    if bs is None and not op.supports_minibatch:
        bs = "full"
        info["batch_note"] = f"{type(op).__name__} has no mini-batch sampler: full-batch products"
    if op.psd:
        shift, low = float(op.eig_lower() or 0.0), None
    else:
        low = lower_end(counted, lam, gen, steps=solver.lanczos_steps, safety=solver.safety)
        info["lower_end"] = low
        shift = float(low["lower"])
        if not low["certified"]:
            info["advice"] = nonpositive_advice(low, lam, "LiSSA")
            return LissaSetup(lam + shift, None, None, status=Status.NONPOSITIVE_CURVATURE, info=info)
    lam_eff = lam + shift
    if not lam_eff > 0.0:
        raise DampingError("damping: LiSSA needs damping > 0 (its step rule and bound need λ > 0)")
    n = op.n_samples
    unit = n if n is not None else 1
    if solver.max_matvec is not None:
        budget_mv = float(solver.max_matvec)
    else:  # explicit hyperparameters are run as given; a plan gets the default budget
        budget_mv = None if solver.explicit else float(DEFAULT_MAX_MATVEC)
    common = {
        "n_samples": unit if (n is not None or bs == "full") else None,
        "budget": None if budget_mv is None else budget_mv * unit,
        "step": solver.step,
        "batch_size": bs,
        "steps": solver.steps,
    }
    info.update(max_matvec=budget_mv, mode="explicit" if solver.explicit else "automatic")
    mode = solver.preconditioner
    forced = mode is not None and mode != "auto"
    est: dict = {}
    fast_cache: list = []

    def fast():
        if not fast_cache:  # formed at most once, and only when used
            fast_cache.append(fast_operator(op, counted))
        return fast_cache[0]

    def plain_plan():
        est.update(estimate_lambda_max(solver, counted, gen, shift=shift, lanczos=low))
        if bs != "full":
            est.update(estimate_variance(solver, counted, gen, est))
        if "lambda_max_user_rejected" in est:
            info["lambda_max_note"] = est["lambda_max_user_rejected"]
        # the step check uses the point value when it is exact (its rounding allowance is for planning)
        L, L_check = est["lambda_max_upper"], est.get("lambda_max_value", est["lambda_max_upper"])
        p = plan_lissa(
            L if solver.step is None else _plan_L(solver.step, L_check, lam_eff, op.dtype), lam_eff, est.get("sigma1_sq", 0.0), solver.rtol, **common
        )
        return p, L, 1.0 / (L_check + lam_eff)

    plain, L, eta_max = plain_plan() if not forced else (None, None, None)
    plans = {"plain": None if plain is None else plain.as_dict(), "nystrom": None}
    chosen, prec, why = plain, None, "plain"
    plain_cost = math.inf if plain is None else _cost(plain)
    if forced or (mode == "auto" and not solver.explicit and plain_cost > solver.precondition_above * unit):
        pc = NystromPreconditioner() if mode in ("auto", "nystrom") else mode
        # the solver's generator seeds the default sketch; a user's instance keeps its own seed
        seed = gen if mode in ("auto", "nystrom") else None
        applied = pc.build_with_lower(fast()[0], lam, seed, None if op.psd else shift)
        counted.add(applied.n_matvec)
        b = applied.bounds
        info["preconditioner_info"] = applied.info
        if b is None:
            info["preconditioner_note"] = (
                "the Nyström preconditioner has no ‖E‖ estimate (error_steps=0): not used"
            )
        else:
            if bs != "full" and "sigma1_sq" not in est:
                est.update(estimate_variance(solver, counted, gen, {}))
            pplan = plan_lissa(
                b["m_upper"] - b["m_lower"],
                b["m_lower"],
                est.get("sigma1_sq", 0.0),
                solver.rtol,
                weight=b["p_max"],
                **common,
            )
            plans["nystrom"] = pplan.as_dict()
            pcost = _cost(pplan, applied.info["rank"] if n is not None else 0.0)
            plans["nystrom_cost_per_column"] = pcost / unit
            if forced or _better(pplan, pcost, plain, plain_cost):
                chosen, prec, why = pplan, applied, "nystrom"
                eta_max = 1.0 / b["m_upper"]
                L = b["lambda_max_upper"] if L is None else L
        plans["plain_cost_per_column"] = plain_cost / unit
    if chosen is None:  # a forced preconditioner without bounds: the plain plan after all
        chosen, L, eta_max = plain_plan()
        plans["plain"] = chosen.as_dict()
    plan = dict(chosen.as_dict(), preconditioned=prec is not None)
    info.update(plan=plan, plans=plans, preconditioned=prec is not None, choice=why)
    prod = counted
    if plan["batch_size"] is None:
        fop, how = fast()  # full-batch steps: the d×d Gram when it is cheaper
        prod = counted if fop is op else Counted(fop, counted.counter)
        info["products"] = how
    info["estimates"] = est
    st = LissaSetup(lam_eff, L, plan, prec, prod, Status.SUCCESS, info)
    _setup_status(st, chosen, eta_max, budget_mv, unit, bs, solver, op.dtype)
    return st


def _plan_L(step: float, L_check: float, lam_eff: float, dtype) -> float:
    """``λ_max`` for evaluating a user step: within the dtype's precision of ``1/(λ_max+λ)`` counts as on it."""
    slack = 1 + 100 * Bk.eps(dtype)
    if step <= slack / (L_check + lam_eff):
        return min(L_check, max(1.0 / step - lam_eff, 0.0))
    return L_check


def _setup_status(st, p, eta_max, budget_mv, unit, bs, solver, dtype):
    kappa_u = 3.0 * Bk.eps(dtype) * (st.L + st.lam_eff) / st.lam_eff
    # λ_max of data held in this dtype is known to about its precision
    if p.step > eta_max * (1 + 100 * Bk.eps(dtype)):
        st.status = Status.INACCURATE
        st.info["advice"] = (
            f"step η={p.step:.3g} exceeds 1/(λ_max+λ)={eta_max:.3g} (λ_max estimate {st.L:.3g}): "
            "no error bound applies and the iteration may diverge; leave step unset for a planned one"
        )
    elif not p.meets_target:
        need = p.cost_to_meet_target
        if need is None:
            st.status = Status.INACCURATE
            st.info["advice"] = (
                f"the fixed hyperparameters cannot meet rtol={solver.rtol} (batch size "
                f"{bs} below the variance threshold ησ₁²/(λ(2−ηλ)), docs/theory.md §5); "
                f"predicted relative error bound {p.predicted_error:.3g}"
            )
        else:
            st.status = Status.MAX_ITER
            st.info["advice"] = (
                f"the plan cannot meet rtol={solver.rtol} within max_matvec={budget_mv} per column; "
                f"about {math.ceil(need / unit)} matvecs per column are needed (predicted relative error "
                f"bound {p.predicted_error:.3g}); raise max_matvec, add damping, or use invhvp.CG()"
            )
    elif kappa_u > solver.rtol:  # rounding alone can exceed rtol: no run in this precision can promise it
        st.status = Status.INACCURATE
        st.info["advice"] = (
            f"rtol={solver.rtol} is below what {dtype} can deliver here: 3·u·(λ_max+λ)/λ = {kappa_u:.2g} "
            "(docs/theory.md §7.5); use float64 or more damping"
        )
