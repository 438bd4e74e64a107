"""LiSSA's one-time estimates: an upper estimate of ``λ_max`` and the single-sample variance ``σ₁²``.

docs/theory.md §5: the step must obey ``η <= 1/(λ_max + λ)``, so ``λ_max`` is needed from
above (a Ritz value is a lower bound); the batch size needs ``σ₁² = ‖E(Ã₁ − A)²‖₂``, bounded
by ``tr E Ã₁² − tr A²`` (structure) or estimated with Hutchinson probes (matrix-free).
"""

from __future__ import annotations

import math

import numpy as np

from .. import _backend as Bk
from .._arrays import col_norms64, random_matrix
from ..errors import NonFiniteError, OperatorTooLargeError, UnsupportedOperatorError
from ..estimators import _lanczos

__all__ = ["estimate_lambda_max", "estimate_variance"]


def estimate_lambda_max(cfg, counted, gen, shift=None, lanczos=None) -> dict:
    """``{"lambda_max_upper", "lambda_max_source", ...}`` for the shifted operator ``H = A − sI``.

    ``s = shift`` (default: ``op.eig_lower()`` of a PSD operator, else 0).

    - a user number is *verified* with one product (``‖Az‖/‖z‖ <= λ_max`` must hold); when it
      fails, the estimate below is used instead and ``lambda_max_user_rejected`` says why;
    - ``lanczos``: the upper end of a run made already (:func:`invhvp.solvers.curvature.lower_end`
      of an indefinite operator), ``max(θ + residual, safety·θ)`` unless exact;
    - ``"exact"`` or ``"auto"`` with a small side: exact eigenvalues from structure plus their
      rounding allowance (``Operator.spectrum``);
    - otherwise Lanczos: ``max(θ + residual, safety·θ)`` (an estimated upper bound).
    """
    op = counted.op
    if shift is None:
        shift = op.eig_lower() if op.psd else 0.0
        shift = shift or 0.0
    est: dict = {}
    if (
        isinstance(cfg.lambda_max, str)
        and cfg.lambda_max != "exact"
        and lanczos is not None
        and "upper" in lanczos
    ):
        # the same margin as the Lanczos path below, applied to the shifted operator A − shift·I
        top = (
            lanczos["upper"] - shift
            if lanczos["exact"]
            else max(lanczos["upper"] - shift, cfg.safety * (lanczos["upper_ritz"] - shift))
        )
        est.update(
            lambda_max_upper=max(top, 0.0),
            lambda_max_source=f"the lower-end run ({lanczos['source']}), upper end of A − shift·I: "
            f"max(θ + residual, {cfg.safety}×θ), θ the top Ritz value less the lower end",
        )
        if lanczos["exact"]:
            est["lambda_max_value"] = max(lanczos["upper_ritz"] - shift, 0.0)
        return est
    if not isinstance(cfg.lambda_max, str):
        z = random_matrix(op.xp, (op.size, 1), op.dtype, op.device, gen, kind="normal")
        y = counted.matmat(z)
        ratio = float(col_norms64(y)[0] / max(col_norms64(z)[0], 1e-300))
        if not math.isfinite(ratio):
            raise NonFiniteError("operator: its product with a random vector is not finite")
        user = float(cfg.lambda_max)
        if ratio <= (user + shift) * (1 + 100 * Bk.eps(op.dtype)):
            est.update(lambda_max_upper=user, lambda_max_source="user (checked with one product)", ritz=None)
            est["lambda_max_check"] = ratio - shift
            return est
        est["lambda_max_user_rejected"] = (
            f"lambda_max={user:g} is not an upper bound: ‖Az‖/‖z‖ − shift = {ratio - shift:.4g} for a random z"
        )
    small = None
    if cfg.lambda_max in ("exact", "auto") or "lambda_max_user_rejected" in est:
        try:
            small = op.spectrum(max_dim=cfg.lanczos_steps if cfg.lambda_max != "exact" else 8192)
        except (UnsupportedOperatorError, OperatorTooLargeError):
            if cfg.lambda_max == "exact":
                raise
    if small is not None:
        counted.add(min(op.size, op.n_samples or op.size))  # forming the small Gram ≈ min(n, d) products
        vals = small.values - shift
        est.update(
            lambda_max_value=max(float(np.max(vals)), 0.0),
            lambda_max_upper=max(float(np.max(vals)), 0.0) + small.rounding,
            lambda_max_source="exact eigenvalues from structure (+ rounding allowance)",
            sum_sq_lower=float(np.sum(small.counts * np.maximum(vals, 0.0) ** 2)),
        )
        return est
    e, ev = _lanczos(op, cfg.lanczos_steps, gen, counted.counter)
    ritz = np.maximum(ev - shift, 0.0)
    upper = e.upper - shift if e.upper_is_bound else max(e.upper - shift, (e.value - shift) * cfg.safety)
    est.update(
        lambda_max_ritz=e.value - shift,
        lambda_max_upper=max(upper, 0.0),
        lambda_max_source=(
            f"Lanczos ({e.n_matvec} products): a Ritz value is a lower bound; used max(Ritz + residual, "
            f"{cfg.safety}×Ritz) as an estimated upper bound"
        ),
        sum_sq_lower=float(np.sum(ritz**2)),
    )
    return est


def estimate_variance(cfg, counted, gen, est: dict) -> dict:
    """``σ₁²`` (a user number, a structural bound, or Hutchinson probes with mean + 3 standard errors)."""
    op = counted.op
    if not isinstance(cfg.variance, str):
        return {"sigma1_sq": float(cfg.variance), "sigma1_sq_source": "user"}
    m2 = op.sample_second_moment_trace()
    if m2 is not None:
        counted.add(1)  # one pass over the per-sample factor
        lower = est.get("sum_sq_lower", 0.0)
        return {
            "sigma1_sq": max(m2 - lower, 0.0),
            "sigma1_sq_source": "bound tr E(Ã₁²) − Σθ² >= ‖E(Ã₁ − A)²‖₂ (θ: Ritz values or exact eigenvalues)",
            "mean_sample_square_trace": m2,
        }
    if not op.supports_minibatch:
        raise UnsupportedOperatorError(
            f"LiSSA needs mini-batch estimates of {type(op).__name__} to estimate its variance; "
            "pass MatrixFree(..., sampler=...) or batch_size='full'"
        )
    xp, n = op.xp, op.n_samples
    B0 = int(cfg.probe_batch)
    vals = []
    for _ in range(cfg.n_probes):
        z = random_matrix(xp, (op.size, 1), op.dtype, op.device, gen)
        ya = op.minibatch(B0, gen)._matmat(z)
        yb = op.minibatch(B0, gen)._matmat(z)
        # E[½‖ya‖² + ½‖yb‖² − yaᵀyb] = zᵀE(Ã−A)²z with independent ya, yb
        ya, yb = xp.astype(ya, xp.float64), xp.astype(yb, xp.float64)  # tiny float32 values: no underflow
        vals.append(0.5 * (xp.sum(ya * ya) + xp.sum(yb * yb)) - xp.sum(ya * yb))
    counted.add(math.ceil(2 * cfg.n_probes * (B0 / n if n else 1.0)))
    D = np.asarray([float(v) for v in vals])
    if not np.all(np.isfinite(D)):
        raise NonFiniteError("operator: its mini-batch products are not finite")
    mean, se = float(D.mean()), float(D.std(ddof=1) / math.sqrt(D.size))
    return {
        "sigma1_sq": max(B0 * (mean + 3 * se), 0.0),
        "sigma1_sq_source": (
            f"Hutchinson, {cfg.n_probes} probes of tr E(Ã_B − A)² with B={B0}: B·(mean + 3·stderr)"
        ),
        "sigma1_sq_mean": B0 * mean,
    }
