"""LiSSA: stochastic Richardson iteration with a step, batch size and step count from theory."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _backend as Bk
from .._arrays import as_generator, random_matrix, row_sq_norms
from ..bounds.lissa import lissa_error_bound, plan_lissa
from ..errors import DampingError, InputError, UnsupportedOperatorError
from ..estimators import _lanczos
from ..operators import BlockDiagonal, Dense, LowRankPlusIdentity, MatrixFree, Operator
from ..result import Status
from .base import Counted, Outcome, Solver, damping_for_blocks

__all__ = ["LiSSA"]

_CONVENTION = (
    "n_matvec counts full-operator products per column; a mini-batch product with B samples and "
    "k columns counts B*k/n (summed, rounded up), n = the operator's number of samples; estimation "
    "products (Lanczos, variance probes, row norms) are included"
)


def _is_num(x):
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclass(frozen=True, eq=False)
class LiSSA(Solver):
    r"""LiSSA (stochastic Richardson iteration) with theory-derived hyperparameters.

    Iterates, for all ``k`` right-hand-side columns at once (one mini-batch per step,
    shared by the columns):

    .. math:: u_0 = 0,\qquad u_t = u_{t-1} - \eta\,(\tilde A_t u_{t-1} + \lambda u_{t-1} - v),
              \qquad t = 1, \dots, T,

    where ``Ã_t = op.minibatch(B, rng)`` is an independent unbiased estimate of the
    operator from ``B`` samples drawn with replacement (``batch_size="full"``: the
    operator itself).  Koh & Liang's ``scale``/``depth`` is ``η = 1/scale``, ``T = depth``
    (:meth:`from_scale`).

    **Automatic plan** (any of ``step``, ``batch_size``, ``steps`` left ``None``): estimate an
    upper bound ``L`` on ``λ_max`` (exact from structure when that costs fewer products than
    Lanczos, else the Lanczos upper estimate times ``safety``) and the single-sample variance
    ``σ₁²`` (low-rank factor: ``σ₁² <= mean_i‖g_i‖⁴ − Σ_i θ_i²``, a bound, using Ritz values
    ``θ_i``; matrix-free with a sampler: Hutchinson probes of ``tr E(Ã_B − A)²``, mean + 3
    standard errors), then pick the cheapest ``(η, B, T, γ)`` whose THEORY.md §5 bound

    .. math:: \frac{E\|u_T-u^*\|^2}{\|u^*\|^2} \le \rho^T + \frac{(1+1/γ)η^2σ_1^2/B}{1-ρ},
              \quad ρ = (1-ηλ)^2 + (1+γ)η^2σ_1^2/B,\quad η \le \frac{1}{L+λ}

    is at most ``rtol²`` (:func:`invhvp.bounds.plan_lissa`).  Chosen values, their inputs
    and the predicted bound are in ``info["plan"]`` and ``info["estimates"]``.  If
    ``max_matvec`` cannot meet ``rtol``, the best plan within the budget is run and the
    status is ``MAX_ITER`` with the needed budget in ``info["advice"]``.

    **Stopping rule**: exactly ``T`` steps (LiSSA has no computable residual).  Every
    ``check_every`` steps the column norms are checked: non-finite values give
    ``NONFINITE``; ``‖u_t‖ > divergence_factor·‖v‖/λ`` (impossible near the solution,
    since ``‖u*‖ <= ‖v‖/λ`` for a PSD operator) gives ``DIVERGED``; the last finite
    checked iterate is returned, never NaN.  :class:`~invhvp.BlockDiagonal` operators are
    solved block by block, each with its own damping and plan.

    **Cost**: ``T`` products with a ``B``-sample estimate (``O(T B d k)`` for a low-rank
    factor) plus the estimates (about ``lanczos_steps + 1`` full products).  Matvec counting
    convention (also in ``info["matvec_convention"]``): a batch-``B`` product with ``k``
    columns counts ``B·k/n`` full products.

    Parameters
    ----------
    step : float, optional
        ``η``.  ``None``: planned.
    batch_size : int, "full" or None
        ``B`` (drawn with replacement), ``"full"`` for exact products, ``None``: planned.
        Operators without mini-batches (``Dense``; ``MatrixFree`` without ``sampler``)
        only accept ``"full"`` or ``None`` (which then plans full-batch products).
    steps : int, optional
        ``T``.  ``None``: planned.
    rtol : float, default 0.1
        Target relative RMS error ``sqrt(E‖u_T − u*‖²)/‖u*‖`` of the plan.
    max_matvec : float, optional
        Budget in full-matvec equivalents (all columns), estimation included.
    lambda_max : "auto", "lanczos", "exact" or float
        How to get the upper bound ``L`` on ``λ_max`` of the operator (a number is
        taken as a known upper bound).
    variance : "auto" or float
        ``σ₁²`` (a number is taken as known), or estimated.
    safety : float, default 1.25
        Factor on the Lanczos estimate of ``λ_max`` (a Ritz value is a lower bound).
    lanczos_steps, n_probes, probe_batch : int
        Estimation effort (Lanczos steps; Hutchinson probes and their batch size for
        matrix-free operators).
    rng : Generator, int or None
        Seed of the mini-batch draws and probes.
    check_every : int, default 10
        Divergence check period (one ``k``-element host sync each time).
    divergence_factor : float, default 10
        Threshold of the divergence check.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> U = np.random.default_rng(0).standard_normal((2000, 20))
    >>> v = np.ones(20)
    >>> res = ih.solve(ih.LowRankPlusIdentity(U), v, ih.LiSSA(rng=0), damping=0.5)
    >>> x = ih.solve(ih.LowRankPlusIdentity(U), v, ih.Exact(), damping=0.5).x
    >>> bool(np.linalg.norm(res.x - x) <= 0.1 * np.linalg.norm(x)), res.info["plan"]["meets_target"]
    (True, True)
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
    name = "lissa"

    @classmethod
    def from_scale(cls, scale, depth, batch_size=1, **kwargs) -> LiSSA:
        """Koh & Liang's spelling: ``η = 1/scale``, ``T = depth`` (their recursion is the same)."""
        s = Bk.finite_scalar(scale, "scale", minimum=0.0, strict=True)
        return cls(step=1.0 / s, steps=depth, batch_size=batch_size, **kwargs)

    def __post_init__(self):
        if self.step is not None:
            Bk.finite_scalar(self.step, "step", minimum=0.0, strict=True)
        b = self.batch_size
        if not (
            b is None
            or b == "full"
            or (isinstance(b, (int, np.integer)) and not isinstance(b, bool) and b >= 1)
        ):
            raise InputError(f"batch_size: expected an int >= 1, 'full' or None, got {b!r}")
        for name in ("steps", "lanczos_steps", "n_probes", "probe_batch", "check_every"):
            v = getattr(self, name)
            if v is None and name == "steps":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InputError(f"{name}: expected an int >= 1, got {v!r}")
        r = Bk.finite_scalar(self.rtol, "rtol", minimum=0.0, strict=True)
        if r >= 1.0:
            raise InputError(f"rtol: expected a number in (0, 1), got {r}")
        if self.max_matvec is not None:
            Bk.finite_scalar(self.max_matvec, "max_matvec", minimum=0.0, strict=True)
        if not (
            self.lambda_max in ("auto", "lanczos", "exact")
            or (_is_num(self.lambda_max) and self.lambda_max >= 0)
        ):
            raise InputError(
                f"lambda_max: expected 'auto', 'lanczos', 'exact' or a number >= 0, got {self.lambda_max!r}"
            )
        if not (self.variance == "auto" or (_is_num(self.variance) and self.variance >= 0)):
            raise InputError(f"variance: expected 'auto' or a number >= 0, got {self.variance!r}")
        Bk.finite_scalar(self.safety, "safety", minimum=1.0)
        Bk.finite_scalar(self.divergence_factor, "divergence_factor", minimum=1.0, strict=True)
        if not isinstance(self.rng, np.random.Generator):
            as_generator(self.rng)  # validates the seed

    @property
    def _explicit(self) -> bool:
        return self.step is not None and self.batch_size is not None and self.steps is not None

    # ------------------------------------------------------------------ support
    def _check_supported(self, op: Operator) -> None:
        if isinstance(op, BlockDiagonal):
            for i, b in enumerate(op.blocks):
                try:
                    self._check_supported(b)
                except UnsupportedOperatorError as exc:
                    raise UnsupportedOperatorError(f"blocks[{i}]: {exc}") from None
            return
        if isinstance(self.batch_size, (int, np.integer)) and not getattr(op, "supports_minibatch", False):
            hint = (
                "pass MatrixFree(..., sampler=...) for mini-batch products"
                if isinstance(op, MatrixFree)
                else "it has no per-sample structure"
            )
            raise UnsupportedOperatorError(
                f"LiSSA(batch_size={self.batch_size}) needs mini-batch estimates of {type(op).__name__}: "
                f"{hint}; or use batch_size='full' (exact products), or invhvp.CG()"
            )
        if not self._explicit and not op.psd:
            raise UnsupportedOperatorError(
                f"LiSSA's automatic plan needs a positive semidefinite operator ({type(op).__name__} has "
                "psd=False); pass step, batch_size and steps explicitly, or use invhvp.CG()"
            )
        if (
            self.max_matvec is not None
            and self.batch_size != "full"
            and getattr(op, "supports_minibatch", False)
            and getattr(op, "n_samples", None) is None
        ):
            raise UnsupportedOperatorError(
                "LiSSA(max_matvec=...) with mini-batches needs the number of samples to price a batch: "
                "pass MatrixFree(..., n_samples=n)"
            )

    # -------------------------------------------------------------------- solve
    def _run(self, counted: Counted, B, damping) -> Outcome:
        return self._dispatch(counted, B, damping, as_generator(self.rng))

    def _dispatch(self, counted: Counted, B, damping, gen) -> Outcome:
        op = counted.op
        if isinstance(op, BlockDiagonal):
            lams = damping_for_blocks(op, damping)
            xs, infos, statuses, iters = [], [], [], []
            for blk, Bi, lam in zip(op.blocks, op.split(B), lams):
                sub = np.random.default_rng(gen.integers(0, 2**63))
                out = self._dispatch(counted.wrap(blk), Bi, float(lam), sub)
                xs.append(out.x)
                infos.append(out.info)
                statuses.append(out.status)
                iters.append(out.n_iter)
            status = next((s for s in _SEVERITY if s in statuses), Status.SUCCESS)
            info = {"method": "lissa-block-diagonal", "blocks": infos, "matvec_convention": _CONVENTION}
            advice = [f"block {i}: {d['advice']}" for i, d in enumerate(infos) if "advice" in d]
            if advice:
                info["advice"] = "; ".join(advice)
            return Outcome(x=op.xp.concat(xs, axis=0), status=status, n_iter=max(iters), info=info)
        return self._single(counted, B, float(damping), gen)

    def _single(self, counted: Counted, V, lam: float, gen) -> Outcome:
        op = counted.op
        d, k = V.shape
        shift = op.shift if isinstance(op, LowRankPlusIdentity) else 0.0
        lam_eff = lam + shift
        can_mb = bool(getattr(op, "supports_minibatch", False))
        n = getattr(op, "n_samples", None)
        info: dict = {"method": "lissa", "matvec_convention": _CONVENTION, "rtol": self.rtol}
        spent = _Spent(counted, n)
        bs = self.batch_size
        if bs is None and not can_mb:
            bs = "full"
            info["batch_note"] = f"{type(op).__name__} has no mini-batch sampler: full-batch products"
        if isinstance(bs, (int, np.integer)) and n is not None and bs >= n:
            info["batch_note"] = f"batch_size {bs} >= n = {n}: with-replacement sampling kept as asked"

        if self._explicit and not (_is_num(self.lambda_max) and (bs == "full" or _is_num(self.variance))):
            plan = {
                "step": float(self.step),
                "batch_size": None if bs == "full" else int(bs),
                "steps": int(self.steps),
            }
            plan["predicted_error"] = None
            info["mode"] = "explicit"
            info["plan"] = plan
            meets = True
        else:
            if lam_eff <= 0.0:
                raise DampingError(
                    "damping: LiSSA's automatic plan needs damping > 0 (the bound needs λ > 0)"
                )
            est = self._estimate(counted, op, gen, shift, need_var=(bs != "full"), n=n)
            info["estimates"] = est
            budget = None
            if self.max_matvec is not None:
                left = float(self.max_matvec) - counted.n
                budget = max(left, 0.0) * (n if n is not None else 1.0) / k
            p = plan_lissa(
                max(est["lambda_max_upper"] - shift, 0.0),
                lam_eff,
                est.get("sigma1_sq", 0.0),
                self.rtol,
                n_samples=n if n is not None else (1 if bs == "full" else None),
                budget=budget,
                step=self.step,
                batch_size=bs,
                steps=self.steps,
                allow_full_batch=True,
            )
            plan = p.as_dict()
            info["mode"] = "explicit" if self._explicit else "automatic"
            info["plan"] = plan
            meets = p.meets_target
            if not meets:
                need = p.cost_to_meet_target
                info["advice"] = (
                    f"the plan cannot meet rtol={self.rtol} "
                    + (
                        f"within max_matvec={self.max_matvec}; about "
                        f"{math.ceil(need * k / (n or 1) + counted.n)} matvecs are needed"
                        if need is not None and budget is not None
                        else "with the fixed hyperparameters (step above 1/(λ_max+λ) or batch below the threshold)"
                    )
                    + f"; predicted relative error bound {p.predicted_error:.3g}"
                )
        eta, T = plan["step"], plan["steps"]
        Bsz = plan["batch_size"]
        x, status, t_done, diag = self._iterate(counted, spent, V, lam, eta, Bsz, T, lam_eff, gen)
        spent.flush()
        info.update(diag)
        info["n_sample_products"] = spent.samples_total
        if status is Status.SUCCESS and not meets:
            status = Status.MAX_ITER if self.max_matvec is not None else Status.SUCCESS
        if status in (Status.DIVERGED, Status.NONFINITE):
            info["advice"] = (
                f"LiSSA {status.value} at step {t_done}: the step η={eta:.3g} must be <= 1/(λ_max+λ) and the batch "
                f"size {Bsz if Bsz is not None else 'full'} above the variance threshold ησ₁²/(λ(2−ηλ)) "
                "(THEORY.md §5); leave step/batch_size/steps unset for an automatic plan, or use invhvp.CG()"
            )
        return Outcome(x=x, status=status, n_iter=t_done, info=info)

    # ------------------------------------------------------------- estimation
    def _estimate(self, counted, op, gen, shift, need_var, n):
        est: dict = {}
        ritz = None
        m_small = min(op.factor.shape) if isinstance(op, LowRankPlusIdentity) else op.size
        structured = isinstance(op, (Dense, LowRankPlusIdentity))
        if _is_num(self.lambda_max):
            est["lambda_max_upper"] = float(self.lambda_max)
            est["lambda_max_source"] = "user (taken as an upper bound)"
        elif structured and (
            self.lambda_max == "exact" or (self.lambda_max == "auto" and m_small <= self.lanczos_steps)
        ):
            ev = _small_spectrum(op)
            counted.counter.n += m_small  # forming the small Gram/eigenproblem ≈ min(n, d) products
            ritz = ev
            top = float(ev[-1]) + shift
            est["lambda_max_upper"] = top * (1 + 10 * m_small * Bk.eps(op.dtype))
            est["lambda_max_source"] = "exact eigenvalues of the small side (a bound up to rounding)"
        elif self.lambda_max == "exact":
            raise UnsupportedOperatorError(
                f"lambda_max='exact' needs Dense or LowRankPlusIdentity, got {type(op).__name__}"
            )
        else:
            e, ev = _lanczos(op, self.lanczos_steps, gen, counted.counter)
            ritz = np.maximum(ev - shift, 0.0)
            est["lambda_max_ritz"] = e.value
            est["lambda_max_residual_upper"] = e.upper
            est["lambda_max_upper"] = max(e.upper, e.value * self.safety) if not e.upper_is_bound else e.upper
            est["lambda_max_source"] = (
                f"Lanczos ({e.n_matvec} matvecs): Ritz value is a lower bound; used max(Ritz+residual, "
                f"{self.safety}×Ritz) as an estimated upper bound"
            )
        if not need_var:
            return est
        if _is_num(self.variance):
            est["sigma1_sq"] = float(self.variance)
            est["sigma1_sq_source"] = "user"
        elif isinstance(op, LowRankPlusIdentity):
            xp = op.xp
            sn = op.scale * op.n_rows
            r = sn * row_sq_norms(op.factor)  # ‖g_i‖², one fused pass over U (no n×d temporary)
            counted.counter.n += 1
            m4 = float(xp.mean(r * r))
            tr_h2_low = float(np.sum(np.square(ritz))) if ritz is not None else 0.0
            est["sigma1_sq"] = max(m4 - tr_h2_low, 0.0)
            est["sigma1_sq_source"] = "bound mean_i ||g_i||^4 - sum_i ritz_i^2 (>= ||E Delta^2||_2)"
            est["mean_grad_norm4"] = m4
        elif isinstance(op, MatrixFree) and op.supports_minibatch:
            est.update(self._probe_variance(counted, op, gen, n))
        else:  # pragma: no cover - guarded by need_var
            est["sigma1_sq"] = 0.0
        return est

    def _probe_variance(self, counted, op, gen, n):
        xp = op.xp
        B0 = int(self.probe_batch)
        vals = []
        for _ in range(self.n_probes):
            z = random_matrix(xp, (op.size, 1), op.dtype, op.device, gen)
            ya = op.minibatch(B0, gen)._matmat(z)
            yb = op.minibatch(B0, gen)._matmat(z)
            vals.append(0.5 * (xp.sum(ya * ya) + xp.sum(yb * yb)) - xp.sum(ya * yb))
        counted.counter.n += math.ceil(2 * self.n_probes * (B0 / n if n else 1.0))
        D = np.asarray([float(v) for v in vals])
        mean, se = float(D.mean()), float(D.std(ddof=1) / math.sqrt(D.size))
        return {
            "sigma1_sq": max(B0 * (mean + 3 * se), 0.0),
            "sigma1_sq_source": f"Hutchinson, {self.n_probes} probes of tr E(Ã_B-A)^2 with B={B0}: B(mean+3·stderr)",
            "sigma1_sq_mean": B0 * mean,
        }

    # -------------------------------------------------------------- iteration
    def _iterate(self, counted, spent, V, lam, eta, Bsz, T, lam_eff, gen):
        op = counted.op
        xp = op.xp
        d, k = V.shape
        U = xp.zeros((d, k), dtype=V.dtype, device=Bk.device_of(V))
        vnorm = _host(xp.linalg.vector_norm(V, axis=0))
        limit = self.divergence_factor * vnorm / lam_eff if (op.psd and lam_eff > 0) else None
        good, t_good = U, 0
        first = None
        status = Status.SUCCESS
        t = 0
        for t in range(1, T + 1):
            if t == 1:
                AU = xp.zeros_like(U)  # u_0 = 0: no product needed
            elif Bsz is None:
                AU = counted.matmat(U)
            else:
                AU = op.minibatch(Bsz, gen)._matmat(U)
                spent.add(Bsz, k)
            U = U - eta * (AU + lam * U - V)
            if t % self.check_every == 0 or t == T:
                nrm = _host(xp.linalg.vector_norm(U, axis=0))
                if not np.all(np.isfinite(nrm)):
                    status = Status.NONFINITE
                    break
                if first is None:
                    first = np.maximum(nrm, 1e-300)
                ref = limit if limit is not None else 1e3 * first
                if np.any(nrm > ref):
                    status = Status.DIVERGED
                    break
                good, t_good = U, t
        diag = {"steps_run": t}
        if status is not Status.SUCCESS:
            diag["returned_iterate_step"] = t_good
        return good, status, t, diag


_SEVERITY = (Status.NONFINITE, Status.DIVERGED, Status.MAX_ITER)


class _Spent:
    """Accumulates per-sample products and adds ``ceil(samples / n)`` to the counter."""

    def __init__(self, counted, n):
        self.counted, self.n = counted, n
        self.samples_total = 0
        self._pending = 0.0

    def add(self, batch, k):
        self.samples_total += int(batch) * int(k)
        # without n, a mini-batch product counts as a full one (conservative)
        self._pending += int(batch) * int(k) / self.n if self.n else int(k)

    def flush(self):
        if self._pending:
            self.counted.counter.n += math.ceil(self._pending - 1e-9)
            self._pending = 0.0


def _small_spectrum(op):
    """Eigenvalues (ascending) of the non-shifted part from its small side, on the operator's device.

    Returns a float64 host array only of ``min(n, d)`` eigenvalues (never a matrix).
    """
    xp = op.xp
    if isinstance(op, Dense):
        M = op.matrix
    else:
        U = op.factor
        n, d = U.shape
        M = op.scale * (U @ U.T if n <= d else U.T @ U)
    return _host(xp.linalg.eigvalsh(M))


def _host(a) -> np.ndarray:
    return Bk.to_host(a, np.float64)  # k column norms or min(n, d) eigenvalues


# re-exported for the docs
lissa_error_bound = lissa_error_bound
