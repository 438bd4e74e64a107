r"""LiSSA step/batch/steps plans and error bounds (docs/theory.md §5).

LiSSA is stochastic Richardson iteration on ``A = H + λI``:

.. math:: u_0 = 0,\qquad u_t = u_{t-1} - \eta\,(\tilde H_t u_{t-1} + \lambda u_{t-1} - v),

with ``H̃_t`` an independent mini-batch estimate of ``H`` from ``B`` samples
(``E H̃_t = H``).  With ``σ_B² = ‖E (H̃_t − H)²‖₂ = σ₁²/B`` and ``η <= 1/(λ_max + λ)``,
for every ``γ > 0`` and ``ρ = (1 − ηλ)² + (1 + γ) η² σ_B² < 1``

.. math:: \frac{E\|u_T - u^*\|^2}{\|u^*\|^2} \le \rho^T + \frac{(1 + 1/γ)\,η^2 σ_B^2}{1 - ρ}.

**Preconditioned** (docs/theory.md §8.6–8.11): ``u_t = u_{t-1} − ηP⁻¹(H̃_t u_{t-1} + λu_{t-1} − v)``
with ``I ⪯ P ⪯ κ_P I``, ``m <= λ_min(M)``, ``λ_max(M) <= L_M`` for ``M = P^{-1/2}(H + λI)P^{-1/2}``
and ``η <= 1/L_M``: the same bound with ``λ → m``, ``λ_max + λ → L_M`` and the first term
weighted by ``κ_P`` (``weight``), ``σ_B²`` unchanged:

.. math:: \frac{E\|u_T - u^*\|^2}{\|u^*\|^2} \le κ_P\,\rho^T + \frac{(1 + 1/γ)\,η^2 σ_B^2}{1 - ρ},
          \qquad \rho = (1 − ηm)^2 + (1 + γ)η^2σ_B^2 .

These are pure functions of scalars (numpy on the host): no operator is touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import _checks as C
from ..errors import InputError

__all__ = ["lissa_error_bound", "lissa_batch_threshold", "LissaPlan", "plan_lissa"]

_GAMMAS = np.logspace(-4, 4, 81)


def _pos(x, name, *, strict=True):
    return C.real(x, name, minimum=0.0, strict=strict)


def _batch(batch_size, name="batch_size"):
    """``None`` or ``"full"`` (full batch, no sampling noise), or an int >= 1."""
    if batch_size is None or batch_size == "full":
        return None
    return C.integer(batch_size, name, minimum=1)


def _weight(weight):
    w = _pos(weight, "weight")
    if w < 1.0:
        raise InputError(
            f"weight: expected a number >= 1 (the condition number of the preconditioner), got {w}"
        )
    return w


def _bound_grid(eta, lam, sigma_b2, steps, gammas, weight=1.0):
    """Relative squared-error bound for arrays that broadcast together (inf where ρ >= 1)."""
    a = (1.0 - eta * lam) ** 2
    s = eta**2 * sigma_b2
    rho = a + (1.0 + gammas) * s
    ok = rho < 1.0
    rho_ok = np.where(ok, rho, 0.5)
    noise = (1.0 + 1.0 / gammas) * s / (1.0 - rho_ok)
    val = weight * rho_ok**steps + noise
    return np.where(ok, val, np.inf)


def lissa_error_bound(step, damping, lambda_max, sigma1_sq, batch_size, steps, *, gamma=None, weight=1.0):
    r"""Bound on the relative root-mean-square error ``sqrt(E‖u_T − u*‖²)/‖u*‖`` of LiSSA.

    Evaluates docs/theory.md §5.3, minimized over ``γ`` on a log grid (or at the given
    ``gamma``).  Returns ``inf`` when the step exceeds ``1/(λ_max + λ)`` (the bound
    does not apply) or when ``ρ >= 1`` for every ``γ`` (batch below the threshold).

    Parameters
    ----------
    step : float
        ``η > 0``.
    damping : float
        ``λ > 0``: a lower bound on the smallest eigenvalue of ``A = H + λI``.
    lambda_max : float
        An upper bound on ``λ_max(H)``.
    sigma1_sq : float
        Single-sample variance ``σ₁² = ‖E(H̃₁ − H)²‖₂`` (or an upper bound on it);
        ``0`` for exact (full-batch) products.
    batch_size : int, "full" or None
        ``B``; ``None`` or ``"full"`` means full-batch products (``σ_B = 0``).
    steps : int
        ``T >= 0``.
    gamma : float, optional
        Fix ``γ`` instead of minimizing over it.
    weight : float, default 1
        ``κ_P = λ_max(P)/λ_min(P)`` for preconditioned LiSSA: the bound becomes
        ``κ_P ρ^T + noise`` with ``λ``, ``λ_max`` and ``σ₁²`` those of the preconditioned
        system (docs/theory.md §8.6–8.11).

    Returns
    -------
    float
        The bound on ``sqrt(E‖u_T − u*‖²)/‖u*‖``.

    Examples
    --------
    >>> from invhvp.bounds import lissa_error_bound
    >>> round(lissa_error_bound(0.5, 1.0, 1.0, 0.0, None, 10), 6)  # deterministic: (1 - ηλ)^T
    0.000977
    >>> lissa_error_bound(0.5, 1.0, 1.0, 100.0, 1, 10)  # B = 1 is below the threshold
    inf
    """
    eta = _pos(step, "step")
    lam = _pos(damping, "damping")
    lmax = _pos(lambda_max, "lambda_max", strict=False)
    s1 = _pos(sigma1_sq, "sigma1_sq", strict=False)
    w = _weight(weight)
    T = C.integer(steps, "steps", minimum=0)
    if T < 0:
        raise InputError(f"steps: expected an int >= 0, got {steps}")
    if eta > 1.0 / (lmax + lam) * (1 + 1e-12):
        return math.inf
    bsz = _batch(batch_size)
    sb2 = 0.0 if bsz is None else s1 / float(bsz)
    if sb2 == 0.0:
        return float(math.sqrt(w) * (1.0 - eta * lam) ** T)
    g = _GAMMAS if gamma is None else np.asarray([_pos(gamma, "gamma")])
    val = float(np.min(_bound_grid(eta, lam, sb2, T, g, w)))
    return math.sqrt(val) if math.isfinite(val) else math.inf


def lissa_batch_threshold(step, damping, sigma1_sq):
    r"""Smallest batch size with ``ρ < 1`` for some ``γ``: ``B > η σ₁² / (λ (2 − ηλ))``.

    Below it the second-moment bound is void and LiSSA typically diverges
    (docs/theory.md §5).  Returns a float (the threshold itself, not rounded).

    Examples
    --------
    >>> from invhvp.bounds import lissa_batch_threshold
    >>> lissa_batch_threshold(0.1, 1.0, 190.0)
    10.0
    """
    eta = _pos(step, "step")
    lam = _pos(damping, "damping")
    s1 = _pos(sigma1_sq, "sigma1_sq", strict=False)
    return eta * s1 / (lam * (2.0 - eta * lam))


@dataclass(frozen=True)
class LissaPlan:
    """A LiSSA configuration chosen by :func:`plan_lissa`.

    Attributes
    ----------
    step, batch_size, steps, gamma
        ``η``, ``B`` (``None`` = full-batch products), ``T`` and the ``γ`` of the bound.
    predicted_error : float
        Bound on the relative RMS error ``sqrt(E‖u_T − u*‖²)/‖u*‖``.
    cost : float
        ``T · B`` per-sample products per column (``T · n_samples`` for full batch).
    meets_target : bool
        Whether ``predicted_error <= rtol`` (False when the budget was too small).
    cost_to_meet_target : float or None
        The cheapest cost that meets ``rtol`` (ignoring the budget); ``None`` if none does.
    """

    step: float
    batch_size: int | None
    steps: int
    gamma: float
    predicted_error: float
    cost: float
    meets_target: bool
    cost_to_meet_target: float | None

    def as_dict(self) -> dict:
        return {
            "step": self.step,
            "batch_size": self.batch_size,
            "steps": self.steps,
            "gamma": self.gamma,
            "predicted_error": self.predicted_error,
            "cost": self.cost,
            "meets_target": self.meets_target,
            "cost_to_meet_target": self.cost_to_meet_target,
        }


def _batch_grid(n_samples, max_batch):
    hi = max_batch if n_samples is None else min(max_batch, max(int(n_samples) - 1, 1))
    grid = np.unique(np.round(np.logspace(0, math.log10(max(hi, 1)), 120)).astype(np.int64))
    return grid[grid >= 1]


def plan_lissa(
    lambda_max,
    damping,
    sigma1_sq,
    rtol,
    *,
    n_samples=None,
    budget=None,
    step=None,
    batch_size=None,
    steps=None,
    allow_full_batch=True,
    max_batch=1 << 16,
    weight=1.0,
):
    r"""Cheapest ``(η, B, T)`` whose docs/theory.md §5 bound meets a relative accuracy.

    Minimizes the per-column cost ``T·B`` (per-sample products; ``T·n_samples`` for
    full-batch products) subject to

    .. math:: \min_γ\Big[ρ^T + \frac{(1+1/γ)η^2σ_1^2/B}{1-ρ}\Big] \le \mathrm{rtol}^2,
              \qquad η \le \frac{1}{λ_{max} + λ},

    by exhaustive search on a grid: ``η = f/(λ_max + λ)`` for 40 log-spaced
    ``f ∈ [10⁻³, 1]``, 120 log-spaced batch sizes, 81 values of ``γ``; ``T`` is then
    the smallest integer that meets the bound.  Any of ``step``, ``batch_size``,
    ``steps`` may be fixed.  With a ``budget`` (per-sample products per column) the
    cheapest plan within it is returned when one meets ``rtol``; otherwise the plan
    with the smallest bound within the budget, with ``meets_target=False``.

    Cost: ``O(40·120·81)`` scalar operations on the host.

    Parameters
    ----------
    lambda_max : float
        Upper bound (or safe estimate) of ``λ_max(H)``.
    damping : float
        ``λ > 0`` (a lower bound on ``λ_min(A)``).
    sigma1_sq : float
        Single-sample variance bound ``σ₁²``.
    rtol : float
        Target relative RMS error, ``0 < rtol < 1``.
    n_samples : int, optional
        Data-set size ``n``: caps ``B < n`` and prices a full-batch step at ``n``.
        Without it full-batch steps are priced at ``max_batch``.
    budget : float, optional
        Most per-sample products per column.
    step, batch_size, steps : optional
        Fix these instead of optimizing them (``batch_size="full"`` fixes full batch).
    allow_full_batch : bool
        Whether exact products (``σ = 0``) are a candidate.
    weight : float, default 1
        ``κ_P`` of a preconditioner (see :func:`lissa_error_bound`); the step count grows by
        about ``log(κ_P)/log(1/ρ)``.

    Returns
    -------
    LissaPlan

    Examples
    --------
    >>> from invhvp.bounds import plan_lissa
    >>> p = plan_lissa(lambda_max=9.0, damping=1.0, sigma1_sq=50.0, rtol=0.1, n_samples=10_000)
    >>> p.meets_target, p.step <= 1 / 10.0, p.predicted_error <= 0.1
    (True, True, True)
    """
    L = _pos(lambda_max, "lambda_max", strict=False)
    lam = _pos(damping, "damping")
    s1 = _pos(sigma1_sq, "sigma1_sq", strict=False)
    eps = _pos(rtol, "rtol")
    w = _weight(weight)
    if eps >= 1.0:
        raise InputError(f"rtol: expected a number in (0, 1), got {eps}")
    eps2 = eps * eps
    eta_max = 1.0 / (L + lam)
    if step is not None:
        etas = np.asarray([_pos(step, "step")])
    else:
        etas = eta_max * np.logspace(-3, 0, 40)
    full_price = float(n_samples) if n_samples is not None else float(max_batch)
    if batch_size == "full":
        bs = np.asarray([0], dtype=np.int64)
    elif batch_size is not None:
        bs = np.asarray([_batch(batch_size)], dtype=np.int64)
    else:
        bs = _batch_grid(n_samples, max_batch)
        if allow_full_batch:
            bs = np.concatenate([bs, [0]])
    # axes: eta (E), batch (Bn), gamma (G); batch 0 encodes full batch (σ = 0)
    eta = etas[:, None, None]
    bsz = bs[None, :, None].astype(float)
    sb2 = np.where(bsz > 0, s1 / np.maximum(bsz, 1.0), 0.0)
    g = _GAMMAS[None, None, :]
    a = (1.0 - eta * lam) ** 2
    s = eta**2 * sb2
    rho = a + (1.0 + g) * s
    ok = (rho < 1.0) & (eta <= eta_max * (1 + 1e-12))
    rho_ok = np.where(ok, rho, 0.5)
    noise = np.where(ok, (1.0 + 1.0 / g) * s / (1.0 - rho_ok), np.inf)
    price = np.where(bsz > 0, bsz, full_price)
    with np.errstate(divide="ignore", invalid="ignore"):
        room = eps2 - noise
        # T = 0 returns u_0 = 0 (relative error 1 > rtol): at least one step, also when ρ = 0
        # (η = 1/λ with σ = 0 and λ_max = 0, where log ρ = −inf would give T = 0)
        need = np.maximum(np.ceil(np.log(np.maximum(room / w, 1e-300)) / np.log(rho_ok)), 1.0)
    need = np.where(ok & (room > 0), need, np.inf)
    if steps is not None:
        T_fixed = C.integer(steps, "steps", minimum=1)
        bound_fixed = np.where(ok, w * rho_ok**T_fixed + noise, np.inf)
        feasible = bound_fixed <= eps2
        cost = np.where(feasible, T_fixed * price, np.inf)
    else:
        cost = need * price
    best_cost = float(np.min(cost))
    target_cost = best_cost if math.isfinite(best_cost) else None

    def make(idx, T, meets):
        ie, ib, ig = idx
        T = int(T)
        B = int(bs[ib])
        e = float(etas[ie])
        val = float(np.min(_bound_grid(e, lam, 0.0 if B == 0 else s1 / B, T, _GAMMAS, w)))
        return LissaPlan(
            step=e,
            batch_size=None if B == 0 else B,
            steps=T,
            gamma=float(_GAMMAS[ig]),
            predicted_error=math.sqrt(val) if math.isfinite(val) else math.inf,
            cost=float(T * (full_price if B == 0 else B)),
            meets_target=meets,
            cost_to_meet_target=target_cost,
        )

    if math.isfinite(best_cost) and (budget is None or best_cost <= float(budget)):
        # among plans within 2 % of the cheapest, prefer the fewest steps (less sequential work)
        cand = np.argwhere(cost <= best_cost * 1.02)
        Ts = [need[tuple(c)] if steps is None else steps for c in cand]
        j = int(np.argmin(Ts))
        return make(tuple(cand[j]), Ts[j], True)
    if budget is None:
        # nothing meets rtol (e.g. a fixed step beyond the bound or batch below threshold)
        if steps is None:
            # report the configuration with the smallest achievable floor at a nominal T
            T_nom = 1000
        else:
            T_nom = int(steps)
        val = np.where(ok, w * rho_ok**T_nom + noise, np.inf)
        idx = np.unravel_index(int(np.argmin(val)), val.shape)
        return make(idx, T_nom, False)
    # best bound within budget
    bud = float(budget)
    T_max = np.floor(bud / price) if steps is None else np.where(steps * price <= bud, steps, 0)
    T_max = np.broadcast_to(T_max, rho_ok.shape)
    val = np.where(ok, w * rho_ok**T_max + noise, np.inf)
    idx = np.unravel_index(int(np.argmin(val)), val.shape)
    return make(idx, T_max[idx], False)
