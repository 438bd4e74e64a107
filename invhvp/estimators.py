r"""Spectral estimators that only need products with the operator (numpy or torch).

- :func:`lambda_max`: the largest eigenvalue by Lanczos, power iteration, or exactly
  from structure (``method="exact"``).
- :func:`trace`: Hutchinson, Hutch++, or exactly from structure.

What is a bound and what is an estimate
---------------------------------------
A Ritz value (Lanczos) or Rayleigh quotient (power iteration) ``θ`` of a symmetric
operator is a *lower bound* on ``λ_max`` (Cauchy interlacing), up to rounding.  The
residual ``r = ‖Aq − θq‖`` guarantees an eigenvalue in ``[θ − r, θ + r]``, but not that
it is the *largest* one: ``θ + r`` is an *estimate* of an upper bound, reported with
``upper_is_bound=False``.  ``method="exact"`` uses structure (the small side of a
low-rank factor, or a small dense matrix) and returns a true two-sided enclosure with
``upper_is_bound=True``.  Hutchinson traces are unbiased estimates with a standard
error, not bounds.

Randomness comes from ``rng`` (a :class:`numpy.random.Generator` or an int seed);
torch probes are drawn on the operator's device from a generator seeded by ``rng``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _backend as Bk
from . import _checks as C
from ._arrays import as_generator, col_norms64, random_matrix, scaled_unit
from .errors import InputError, NonFiniteError, UnsupportedOperatorError
from .operators import Operator

__all__ = ["EigEstimate", "TraceEstimate", "lambda_max", "trace", "as_generator"]


@dataclass(frozen=True)
class EigEstimate:
    """An estimate of ``λ_max`` with an interval and what each end guarantees.

    Attributes
    ----------
    value : float
        The point estimate (the largest Ritz value / Rayleigh quotient, or exact).
    lower, upper : float
        Interval ``[lower, upper]`` around ``λ_max``.
    lower_is_bound, upper_is_bound : bool
        Whether ``lower <= λ_max`` (resp. ``λ_max <= upper``) is guaranteed (up to
        rounding) rather than estimated.
    method : str
        ``"lanczos"``, ``"power"`` or ``"exact-..."``.
    n_matvec : int
        Operator-vector products spent (structure-based ``exact`` methods report 0
        and state their arithmetic in ``method``).
    """

    value: float
    lower: float
    upper: float
    lower_is_bound: bool
    upper_is_bound: bool
    method: str
    n_matvec: int


@dataclass(frozen=True)
class TraceEstimate:
    """A trace estimate: ``value ± stderr`` (``stderr = 0`` when exact).

    Attributes
    ----------
    value : float
    stderr : float
        Standard error of ``value`` (sample standard deviation of the probe
        estimates over ``sqrt(n_probes)``); a 3·stderr interval covers the trace
        with probability close to 99.7 % when the probe count is moderate.
    method : str
    n_matvec : int
    """

    value: float
    stderr: float
    method: str
    n_matvec: int


def _dot64(xp, a, b) -> float:
    """``aᵀb`` of two ``(d, 1)`` arrays accumulated in float64."""
    return float(xp.sum(xp.astype(a, xp.float64) * xp.astype(b, xp.float64)))


def _count(counter, k):
    if counter is not None:
        counter.n += int(k)


def _apply(op, V, counter):
    _count(counter, V.shape[1])
    return op._matmat(V)


def _check_op(op):
    if not isinstance(op, Operator):
        raise InputError(f"op: expected an invhvp operator, got {type(op).__name__}")


def _posint(x, name, minimum=1):
    return C.integer(x, name, minimum=minimum)


# --------------------------------------------------------------------- λ_max


def lambda_max(op, *, method="lanczos", k=30, maxiter=200, rtol=1e-3, rng=None, _counter=None):
    r"""Largest eigenvalue of a symmetric operator, with an interval.

    ``method="lanczos"``
        ``k`` steps of Lanczos with full reorthogonalization from a random start
        (``k`` matvecs, ``O(d k²)`` extra work).  ``value = lower`` = largest Ritz
        value ``θ`` (a lower bound); ``upper = θ + β_k |y_k|`` with ``β_k|y_k| =
        ‖Aq − θq‖`` the Ritz residual (an estimate, ``upper_is_bound=False``).
        Stops early on an invariant subspace (``β < eps·θ``).
    ``method="power"``
        Power iteration until the Rayleigh quotient changes by less than
        ``rtol`` (relative) or ``maxiter`` matvecs; ``value = lower`` = Rayleigh
        quotient (a bound), ``upper = θ + ‖Aq − θq‖`` (an estimate).
    ``method="exact"``
        From structure, true two-sided enclosure: :class:`~invhvp.Dense` by
        ``eigvalsh`` (``O(d³)``); :class:`~invhvp.LowRankPlusIdentity`
        ``μI + sUᵀU`` by the eigenvalues of the smaller of ``sUUᵀ`` (``n×n``) and
        ``sUᵀU`` (``d×d``) (``O(min(n,d)² max(n,d))``); :class:`~invhvp.BlockDiagonal`
        by the maximum over blocks.  ``upper`` adds a rounding allowance
        ``10·m·eps·θ``.  Refused for :class:`~invhvp.MatrixFree`.

    Parameters
    ----------
    op : Operator
    method : {"lanczos", "power", "exact"}
    k : int
        Lanczos steps (capped at ``d``).
    maxiter, rtol
        Power-iteration limits.
    rng : Generator or int, optional
        Seed of the random start vector.

    Returns
    -------
    EigEstimate

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> A = ih.Dense(np.diag(np.arange(1.0, 101.0)))
    >>> est = ih.lambda_max(A, k=40, rng=0)
    >>> est.lower <= 100.0 and est.lower_is_bound and not est.upper_is_bound
    True
    >>> round(ih.lambda_max(A, method="exact").value, 6)
    100.0
    """
    _check_op(op)
    if method == "lanczos":
        return _lanczos(op, _posint(k, "k"), rng, _counter)[0]
    if method == "power":
        return _power(
            op, _posint(maxiter, "maxiter"), C.real(rtol, "rtol", minimum=0.0), rng, _counter
        )
    if method == "exact":
        return _exact_lmax(op)
    raise InputError(f"method: expected 'lanczos', 'power' or 'exact', got {method!r}")


def _lanczos(op, k, rng, counter):
    """Lanczos estimate and all Ritz values (ascending; each ``θ_i <= λ_i`` by interlacing)."""
    run = _lanczos_run(op, k, rng, counter)
    theta, m = float(run.evals[-1]), run.evals.size
    # rounding allowance of the computed Ritz value
    tol = 10 * m * run.eps * max(abs(theta), 1e-300)
    return EigEstimate(
        value=theta,
        lower=theta - tol,
        upper=theta + float(run.residuals[-1]) + tol,
        lower_is_bound=True,
        upper_is_bound=run.exhausted,
        method="lanczos",
        n_matvec=run.n_matvec,
    ), run.evals


@dataclass(frozen=True)
class LanczosRun:
    """Ritz values (ascending) with their residual norms ``β_m |y_{m,i}|`` from one Lanczos run.

    ``exhausted``: the Krylov space is the whole space (``m = d``), so the Ritz values are the
    eigenvalues (up to rounding) and both ends are bounds.
    """

    evals: np.ndarray
    residuals: np.ndarray
    exhausted: bool
    n_matvec: int
    eps: float


def _lanczos_run(op, k, rng, counter) -> LanczosRun:
    """``k`` steps of Lanczos with full reorthogonalization from a random start (``k`` products)."""
    xp = op.xp
    d = op.size
    k = min(k, d)
    q, _ = scaled_unit(xp, random_matrix(xp, (d, 1), op.dtype, op.device, rng, kind="normal"))
    Q = [q]
    alphas, betas = [], []
    eps = Bk.eps(op.dtype)
    beta = 0.0
    n_mv = 0
    for j in range(k):
        w = _apply(op, Q[-1], counter)
        n_mv += 1
        a = _dot64(xp, w, Q[-1])
        alphas.append(a)
        # full reorthogonalization (twice is enough), O(d j)
        Qm = xp.concat(Q, axis=1)
        for _ in range(2):
            w = w - Qm @ (Qm.T @ w)
        wn, beta = scaled_unit(xp, w)  # norms in float64: no float32 overflow
        scale = max(abs(x) for x in alphas) if alphas else 1.0
        if not math.isfinite(beta) or not math.isfinite(a):
            raise NonFiniteError("op: the operator produced non-finite values during Lanczos")
        if j == k - 1 or beta <= 10 * eps * max(scale, 1e-300):
            break
        betas.append(beta)
        Q.append(wn)
    m = len(alphas)
    T = (
        np.diag(np.asarray(alphas))
        + np.diag(np.asarray(betas[: m - 1]), 1)
        + np.diag(np.asarray(betas[: m - 1]), -1)
    )
    evals, evecs = np.linalg.eigh(T)
    resid = np.abs(beta * evecs[-1, :]) if m < d else np.zeros(m)
    return LanczosRun(evals=evals, residuals=resid, exhausted=m == d, n_matvec=n_mv, eps=eps)


def _power(op, maxiter, rtol, rng, counter):
    xp = op.xp
    d = op.size
    q, _ = scaled_unit(xp, random_matrix(xp, (d, 1), op.dtype, op.device, rng, kind="normal"))
    theta_old = None
    n_mv = 0
    for _ in range(maxiter):
        w = _apply(op, q, counter)
        n_mv += 1
        theta = _dot64(xp, w, q)
        resid = float(col_norms64(w - theta * q)[0])
        wn, nw = scaled_unit(xp, w)
        if not (math.isfinite(theta) and math.isfinite(nw)):
            raise NonFiniteError("op: the operator produced non-finite values during power iteration")
        if nw == 0.0:
            break
        if theta_old is not None and abs(theta - theta_old) <= rtol * abs(theta):
            break
        theta_old = theta
        q = wn
    tol = 10 * Bk.eps(op.dtype) * max(abs(theta), 1e-300)
    return EigEstimate(
        value=theta,
        lower=theta - tol,
        upper=theta + resid + tol,
        lower_is_bound=True,
        upper_is_bound=False,
        method="power",
        n_matvec=n_mv,
    )


def _exact_lmax(op):
    sp = op.spectrum()  # structure protocol: UnsupportedOperatorError / OperatorTooLargeError
    theta = sp.max
    return EigEstimate(
        value=theta,
        lower=theta - sp.rounding,
        upper=theta + sp.rounding,
        lower_is_bound=True,
        upper_is_bound=True,
        method="exact-" + type(op).__name__,
        n_matvec=0,
    )


# --------------------------------------------------------------------- trace


def trace(op, *, method="hutchinson", n_matvec=60, rng=None, _counter=None):
    r"""Trace of an operator: Hutchinson, Hutch++, or exact from structure.

    ``method="hutchinson"``
        ``m = n_matvec`` Rademacher probes ``z_j``: ``value = mean_j z_jᵀAz_j``,
        ``stderr = std_j(z_jᵀAz_j)/sqrt(m)`` (one ``d×m`` product).  Unbiased;
        variance ``2(‖A‖_F² − Σ A_ii²)/m``.
    ``method="hutchpp"``
        Hutch++ (Meyer et al. 2021): ``m/3`` probes sketch the range ``Q = qr(AS)``,
        ``tr(QᵀAQ)`` is computed exactly, and Hutchinson with ``m/3`` probes
        estimates the trace of the deflated ``(I−QQᵀ)A(I−QQᵀ)``; ``stderr`` is that
        part's standard error.  Much smaller error for decaying spectra.
    ``method="exact"``
        :class:`~invhvp.Dense`: the diagonal sum; :class:`~invhvp.LowRankPlusIdentity`:
        ``μ d + s Σ_i ‖u_i‖²`` (``O(nd)``); :class:`~invhvp.BlockDiagonal`: sum over
        blocks.  ``stderr = 0``.

    Parameters
    ----------
    op : Operator
    method : {"hutchinson", "hutchpp", "exact"}
    n_matvec : int
        Total operator-vector products (``>= 2`` for Hutchinson, ``>= 3`` for Hutch++).
    rng : Generator or int, optional

    Returns
    -------
    TraceEstimate

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> A = ih.Dense(np.diag(np.linspace(0.0, 2.0, 200)))
    >>> est = ih.trace(A, n_matvec=100, rng=0)
    >>> abs(est.value - 200.0) <= 4 * est.stderr + 1e-9
    True
    >>> ih.trace(A, method="exact").value
    200.0
    """
    _check_op(op)
    if method == "exact":
        return _exact_trace(op)
    if method == "hutchinson":
        m = _posint(n_matvec, "n_matvec", 2)
        return _hutchinson(op, m, rng, _counter)
    if method == "hutchpp":
        m = _posint(n_matvec, "n_matvec", 3)
        return _hutchpp(op, m, rng, _counter)
    raise InputError(f"method: expected 'hutchinson', 'hutchpp' or 'exact', got {method!r}")


def _stats(vals_np):
    if not np.all(np.isfinite(vals_np)):
        raise NonFiniteError("op: the operator produced NaN or infinite values during trace estimation")
    m = vals_np.size
    mean = float(np.mean(vals_np))
    se = float(np.std(vals_np, ddof=1) / math.sqrt(m)) if m > 1 else math.inf
    return mean, se


def _host_vec(v):
    return Bk.to_host(v, np.float64)  # m probe values or eigenvalues, not d-sized


def _hutchinson(op, m, rng, counter):
    xp = op.xp
    Z = random_matrix(xp, (op.size, m), op.dtype, op.device, rng)
    vals = xp.sum(Z * _apply(op, Z, counter), axis=0)
    mean, se = _stats(_host_vec(vals))
    return TraceEstimate(value=mean, stderr=se, method="hutchinson", n_matvec=m)


def _hutchpp(op, m, rng, counter):
    xp = op.xp
    d = op.size
    gen = as_generator(rng)
    s = min(max(m // 3, 1), d)
    g = max(m - 2 * s, 2)
    S = random_matrix(xp, (d, s), op.dtype, op.device, gen)
    Q, _ = xp.linalg.qr(_apply(op, S, counter))
    AQ = _apply(op, Q, counter)
    t_low = float(xp.sum(Q * AQ))
    G = random_matrix(xp, (d, g), op.dtype, op.device, gen)
    G = G - Q @ (Q.T @ G)
    vals = xp.sum(G * _apply(op, G, counter), axis=0)
    mean, se = _stats(_host_vec(vals))
    return TraceEstimate(value=t_low + mean, stderr=se, method="hutchpp", n_matvec=2 * s + g)


def _exact_trace(op):
    try:
        v = op.trace()  # structure protocol
    except UnsupportedOperatorError:
        raise UnsupportedOperatorError(
            f"trace(method='exact') needs structure (Dense, LowRankPlusIdentity, BlockDiagonal, or a known "
            f"diagonal), got {type(op).__name__}; use method='hutchpp' or 'hutchinson'"
        ) from None
    return TraceEstimate(value=v, stderr=0.0, method="exact", n_matvec=0)
