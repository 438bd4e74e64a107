r"""The spectral certificate of DataInf (docs/theory.md §4.6–4.7): within a small factor of the true error.

.. math::

    \|\bar S^{-1} - R\|_2 \;\le\; \lambda_{\max}(R) - \frac{1}{\lambda + \bar\mu},
    \qquad \bar\mu \ge \lambda_{\max}(G),

with a Cauchy–Schwarz refinement that is never larger (``value``) and the Weyl form (``weyl``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .. import _backend as Bk
from .. import _checks as C
from ..errors import InputError
from ._common import _scaled_norms64, _validate
from ._gram import EPS64, lanczos_upper, small_side

__all__ = ["SpectralCertificate", "datainf_spectral_certificate"]


@dataclass(frozen=True)
class SpectralCertificate:
    """The spectral certificate of one block and how its ingredients were obtained.

    Attributes
    ----------
    value : float
        Certified upper bound on ``||S̄⁻¹ − R||₂`` (the sharpened form, ``<= weyl``).
    weyl : float
        ``lambda_max_R_upper − 1/(λ + mu_bar)``: the Weyl form of docs/theory.md §4.
    mu_bar, mu_lower : float
        ``mu_lower <= λ_max(G) <= mu_bar`` (``G = scale·UᵀU``).
    mu_bar_method : str
        ``"gram-eigvalsh"`` (exact small-side eigenvalues plus a rounding allowance),
        ``"lanczos"`` (arrowhead residual bound, see ``converged``) or ``"trace"``
        (``tr G``).
    lambda_max_R_upper : float
        Upper bound on the largest eigenvalue of ``R`` on the row space of ``U`` (where
        ``R − S̄⁻¹`` lives): ``(1 − nu_lower)/λ``.
    lambda_max_R_method : str
        ``"gram-eigvalsh"`` or ``"1/lambda"`` (every term of ``R`` is ``⪯ I/λ``).
    nu_lower : float
        Lower bound on ``λ_min(scale·UᵀDU)`` on the row space (0 unless computed).
    t_max : float
        Upper bound on ``max_i ||g̃_i||²``.
    damping : float
        ``λ``.
    n_matvec : int
        Products with ``G`` (Lanczos only).
    converged : bool
        Whether ``mu_bar`` is within ``rtol`` of its lower end (always true for
        ``"gram-eigvalsh"``; false for ``"trace"``).
    """

    value: float
    weyl: float
    mu_bar: float
    mu_lower: float
    mu_bar_method: str
    lambda_max_R_upper: float
    lambda_max_R_method: str
    nu_lower: float
    t_max: float
    damping: float
    n_matvec: int
    converged: bool

    def as_dict(self) -> dict:
        return asdict(self)


def _psi(lam, nu, t, y):
    """``(1/λ)(1 − max(ν, y/(λ+t))) − 1/(λ+y)`` without cancellation."""
    if y >= nu * (lam + t):
        return y * (t - y) / ((lam + t) * lam * (lam + y))
    return (y - nu * (lam + y)) / (lam * (lam + y))


def _spectral_values(lam, nu, t_max, mu_bar):
    """(sharpened value, Weyl form), each with a final rounding slack (docs/theory.md §4)."""
    y_star = lam * t_max / (math.sqrt(lam * (lam + t_max)) + lam)  # = sqrt(λ(λ+t)) − λ
    y = min(mu_bar, max(nu * (lam + t_max), y_star))

    def slack(v):
        return max(v, 0.0) * (1.0 + 16 * EPS64) + 16 * EPS64 / lam

    weyl = slack((mu_bar - nu * (lam + mu_bar)) / (lam * (lam + mu_bar)))
    return min(slack(_psi(lam, nu, t_max, y)), weyl), weyl


def _posint(x, name):
    return C.integer(x, name, minimum=1)


def datainf_spectral_certificate(
    factor,
    damping,
    *,
    scale=None,
    method: str = "auto",
    max_gram_dim: int = 2048,
    lanczos_steps: int = 64,
    rtol: float = 1e-3,
    rng=0,
    sq_norms=None,
) -> SpectralCertificate:
    r"""Certified spectral bound on DataInf's error ``||S̄⁻¹ − R||₂`` (docs/theory.md §4).

    ``E = R − S̄⁻¹ ⪰ 0`` (operator convexity of the inverse) vanishes off the row space
    of ``U``.  For a unit ``x`` in that space, with ``y = xᵀGx ∈ [0, μ̄]``:
    ``xᵀRx = (1 − xᵀMx)/λ`` (``M = scale·UᵀDU``, ``D = diag(1/(λ + ||g̃_i||²))``),
    ``xᵀMx >= max(ν, y/(λ + t_max))`` and ``xᵀS̄⁻¹x >= 1/(λ + y)`` (Cauchy–Schwarz), so

    .. math::

        \|E\|_2 \le \max_{0\le y\le\bar\mu}\Big[\frac{1 - \max(\nu,\,y/(\lambda+t_{\max}))}{\lambda}
        - \frac1{\lambda+y}\Big] \;\le\; \frac{1-\nu}{\lambda} - \frac1{\lambda+\bar\mu}
        \;\le\; \frac1\lambda - \frac1{\lambda+\bar\mu}.

    The middle term is the Weyl form ``λ_max(R) − λ_min(S̄⁻¹)`` (``weyl``); the left one
    (``value``, closed form) is never larger and is second order in ``1/λ`` at large
    damping.  Ingredients, by ``method``:

    - ``"gram"``: ``μ̄`` and ``ν`` from the ``r×r`` small-side Gram matrices
      (``r = min(n, d)``), float64 ``eigvalsh`` plus a rounding allowance
      ``(2L + 10r + 10)·eps·tr``; ``O(r² max(n, d) + r³)``.
    - ``"lanczos"``: ``μ̄`` from Lanczos on the small side with the arrowhead residual
      bound (certified by the trace outside the Krylov space; never a bare Ritz value),
      at most ``lanczos_steps`` products with ``G`` (``O(nd)`` each); ``ν = 0``.
    - ``"trace"``: ``μ̄ = tr G`` (``O(nd)``); ``ν = 0``.
    - ``"auto"``: ``"gram"`` when ``min(n, d) <= max_gram_dim``, else ``"lanczos"``.

    Parameters
    ----------
    factor : (n, d) array or tensor
    damping : float
        ``λ > 0`` (shift + damping).
    scale : float, optional
        ``G = scale·UᵀU`` (default ``1/n``).
    method, max_gram_dim, lanczos_steps, rtol, rng
        See above; ``rtol`` stops Lanczos when ``μ̄ <= θ₁(1 + rtol)``, ``rng`` seeds its
        start vector.
    sq_norms : array, optional
        Precomputed ``||u_i||²`` in the factor's dtype (inflated by ``1 + 2d·eps``).

    Returns
    -------
    SpectralCertificate

    Examples
    --------
    >>> import numpy as np
    >>> from invhvp.bounds import datainf_spectral_certificate, datainf_true_error
    >>> U = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])      # orthogonal, equal norms
    >>> c = datainf_spectral_certificate(U, 1.0)      # here the bound is attained
    >>> round(c.value, 9), round(datainf_true_error(U, 1.0), 9), c.mu_bar_method
    (0.266666667, 0.266666667, 'gram-eigvalsh')
    """
    xp, n, d, lam, s = _validate(factor, damping, scale)
    if method not in ("auto", "gram", "lanczos", "trace"):
        raise InputError(f"method: expected 'auto', 'gram', 'lanczos' or 'trace', got {method!r}")
    _posint(max_gram_dim, "max_gram_dim")
    _posint(lanczos_steps, "lanczos_steps")
    rtol = C.real(rtol, "rtol", minimum=0.0, strict=True)
    if sq_norms is None:
        t, infl = _scaled_norms64(xp, factor, n, s), 1.0 + (d + 4) * EPS64
    else:
        t = (n * s) * xp.astype(sq_norms, xp.float64)
        infl = (1.0 + 2.0 * d * Bk.eps(sq_norms.dtype)) * (1.0 + 4 * EPS64)
    return _spectral(factor, lam, s, t, infl, method, max_gram_dim, lanczos_steps, rtol, rng)


def _spectral(factor, lam, s, t, infl, method, max_gram_dim, lanczos_steps, rtol, rng):
    """The certificate from float64 ``t_i = ||g̃_i||²`` (each at most ``infl`` times too small)."""
    xp = Bk.namespace(factor)
    n, d = (int(v) for v in factor.shape)
    t_max_raw, tr_raw = float(xp.max(t)), float(xp.mean(t))
    t_max = t_max_raw * infl
    tr_up = tr_raw * infl * (1.0 + (n + 4) * EPS64)
    r = min(n, d)
    if method == "auto":
        method = "gram" if r <= max_gram_dim else "lanczos"
    nu, how_r, n_mv, conv = 0.0, "1/lambda", 0, True
    if method == "gram":
        ss = small_side(factor, s, lam)
        mu_bar, mu_lo, nu, how_r = min(ss.mu_upper, tr_up), ss.mu_lower, ss.nu_lower, "gram-eigvalsh"
    elif method == "lanczos":
        lb = lanczos_upper(factor, s, tr_up, steps=lanczos_steps, rtol=rtol, rng=rng)
        mu_bar, mu_lo, n_mv, conv = lb.upper, lb.lower, lb.n_matvec, lb.converged
    else:
        # λ_max(G) >= tr G / rank and >= ||g̃_i||²/n (Rayleigh quotient at g̃_i)
        mu_bar, conv = tr_up, False
        mu_lo = max(tr_raw / r, t_max_raw / n) * (1.0 - (n + d + 8) * EPS64)
    value, weyl = _spectral_values(lam, nu, t_max, mu_bar)
    return SpectralCertificate(
        value=value,
        weyl=weyl,
        mu_bar=mu_bar,
        mu_lower=mu_lo,
        mu_bar_method="gram-eigvalsh" if method == "gram" else method,
        lambda_max_R_upper=(1.0 - nu) / lam,
        lambda_max_R_method=how_r,
        nu_lower=nu,
        t_max=t_max,
        damping=lam,
        n_matvec=n_mv,
        converged=conv,
    )
