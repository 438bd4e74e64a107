r"""DataInf error certificates (docs/theory.md §4), as pure functions.

DataInf replaces the inverse of the averaged damped Gram matrix by the average of
the rank-one inverses.  With per-sample gradients ``g_i`` (the rows of ``U``, scaled
as ``g̃_i = sqrt(n·scale)·u_i`` for the general form ``shift·I + scale·UᵀU``),
``S_i = g̃_i g̃_iᵀ + λI``, ``S̄ = mean_i S_i = G + λI`` and
``R = mean_i S_i⁻¹`` (``λ`` = shift + damping > 0):

.. math::

    \|\bar S^{-1} - R\|_2 \;\le\; \frac{1}{n\lambda^3}\sum_i \|S_i - \bar S\|_2^2
    \;\le\; \frac{1}{n\lambda^3}\sum_i \max(\|\tilde g_i\|^2, \lambda_{\max}(G))^2
    \;\le\; \frac{2M^2d^2}{\lambda^3},

with ``G = (1/n) Σ g̃_i g̃_iᵀ`` and ``M = max_i (tr S_i + tr S̄)/d``.  Left to right:
the *true error* (computable when ``min(n, d)`` is small), the *intermediate* bound,
the computable *certificate* and the paper's ``O(d²)`` form.  These are typically
10⁶–10¹² times the true error on LoRA gradients.  The *spectral certificate*
(:func:`datainf_spectral_certificate`) is within a small factor of it:

.. math::

    \|\bar S^{-1} - R\|_2 \;\le\; \lambda_{\max}(R) - \frac{1}{\lambda + \bar\mu}
    \;\le\; \frac1\lambda - \frac{1}{\lambda + \bar\mu},\qquad \bar\mu \ge \lambda_{\max}(G).

Every function takes the factor ``U`` (``n×d`` numpy array or torch tensor, any
device), the total diagonal ``λ`` and the optional ``scale`` (default ``1/n``), and
returns Python floats; arithmetic runs in float64 on the factor's device.  Nothing
here forms a ``d×d`` matrix except :func:`datainf_intermediate_bound`,
:func:`datainf_true_error` and :func:`datainf_spectral_certificate` when ``d <= n``
(all three bound their sizes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .. import _backend as Bk
from .._arrays import CHUNK_ELEMENTS, row_chunks, row_sq_norms
from ..errors import DampingError, InputError, OperatorTooLargeError, ShapeError
from ._gram import EPS64, lanczos_upper, small_side

__all__ = [
    "gram_lambda_max",
    "datainf_paper_bound",
    "datainf_certificate",
    "datainf_intermediate_bound",
    "datainf_true_error",
    "SpectralCertificate",
    "datainf_spectral_certificate",
    "datainf_certificates",
    "datainf_influence_error_bound",
]


def _validate(factor, damping, scale, *, name="factor"):
    xp, n, d = Bk.check_factor(factor, name)
    lam = Bk.finite_scalar(damping, "damping")
    if lam <= 0.0:
        raise DampingError(
            f"damping: DataInf needs λ = shift + damping > 0 (every rank-one term is g gᵀ + λI), got {lam}"
        )
    s = 1.0 / n if scale is None else Bk.finite_scalar(scale, "scale", minimum=0.0, strict=True)
    return xp, n, d, lam, s


def _scaled_norms64(xp, U, n, s):
    """``||g̃_i||² = n·s·||u_i||²`` in float64."""
    return (n * s) * row_sq_norms(U, dtype=xp.float64)


def _gram64(xp, U):
    """``U Uᵀ`` (``n×n``) accumulated in float64 over column chunks of ``U``."""
    n, d = (int(v) for v in U.shape)
    c = max(1, CHUNK_ELEMENTS // max(n, 1))
    K = None
    for j in range(0, d, c):
        V = xp.astype(U[:, j : j + c], xp.float64)
        P = V @ V.T
        K = P if K is None else K + P
    return K


def _eye64(xp, r, like):
    return xp.eye(r, dtype=xp.float64, device=Bk.device_of(like))


def gram_lambda_max(factor, *, scale=None, method: str = "auto", max_rows: int = 2048):
    """Largest eigenvalue of ``G = scale·UᵀU`` (or a true upper bound), and how it was found.

    ``λ_max(scale·UᵀU) = scale·λ_max(UUᵀ)``:

    - ``"gram"``: eigenvalues of the ``n×n`` Gram ``UUᵀ`` in float64 (``O(n²d + n³)``), exact
      up to rounding;
    - ``"trace"``: ``tr G = scale·Σ_i ||u_i||²`` (``O(nd)``), a true upper bound because
      ``G`` is positive semidefinite;
    - ``"auto"``: ``"gram"`` when ``n <= max_rows``, otherwise ``"trace"``.

    Returns
    -------
    (float, str)
        The value and ``"gram-eigvalsh (exact)"`` or ``"trace (upper bound)"``.

    Examples
    --------
    >>> import numpy as np
    >>> from invhvp.bounds import gram_lambda_max
    >>> U = np.array([[3.0, 0.0], [0.0, 1.0]])
    >>> gram_lambda_max(U)          # G = UᵀU/2 = diag(4.5, 0.5)
    (4.5, 'gram-eigvalsh (exact)')
    >>> gram_lambda_max(U, method="trace")
    (5.0, 'trace (upper bound)')
    """
    xp, n, d, _, s = _validate(factor, 1.0, scale)
    if method not in ("auto", "gram", "trace"):
        raise InputError(f"method: expected 'auto', 'gram' or 'trace', got {method!r}")
    if method == "gram" or (method == "auto" and n <= max_rows):
        w = xp.linalg.eigvalsh(_gram64(xp, factor))
        return s * max(float(xp.max(w)), 0.0), "gram-eigvalsh (exact)"
    return s * float(xp.sum(row_sq_norms(factor, dtype=xp.float64))), "trace (upper bound)"


def datainf_paper_bound(factor, damping, *, scale=None) -> float:
    r"""The paper's ``O(d²)`` bound ``2 M² d² / λ³`` (Kwon et al. 2023, Theorem 1).

    ``M = max_i (tr S_i + tr S̄)/d = (max_i ||g̃_i||² + mean_i ||g̃_i||²)/d + 2λ``, so the
    bound equals ``2 (max_i ||g̃_i||² + mean_i ||g̃_i||² + 2dλ)² / λ³``.  Cost ``O(nd)``.

    Examples
    --------
    >>> import numpy as np
    >>> from invhvp.bounds import datainf_paper_bound
    >>> datainf_paper_bound(np.array([[1.0, 0.0], [0.0, 1.0]]), 1.0)   # 2·(1 + 1 + 4)²
    72.0
    """
    xp, n, d, lam, s = _validate(factor, damping, scale)
    return _paper_from(xp, _scaled_norms64(xp, factor, n, s), d, lam)


def _paper_from(xp, t, d, lam):
    total = float(xp.max(t)) + float(xp.mean(t)) + 2.0 * d * lam
    return 2.0 * total**2 / lam**3


def _cert_from(xp, t, lm, n, lam):
    m = xp.maximum(t, xp.full_like(t, lm))
    return float(xp.sum(m * m)) / (n * lam**3)


def datainf_certificate(factor, damping, *, scale=None, lambda_max=None, lambda_max_method="auto") -> float:
    r"""Computable certificate ``(1/(nλ³)) Σ_i max(||g̃_i||², λ_max(G))² >= ||S̄⁻¹ − R||₂``.

    Uses ``||S_i − S̄||₂ = ||g̃_i g̃_iᵀ − G||₂ <= max(||g̃_i||², λ_max(G))`` (difference of two
    PSD matrices).  ``lambda_max`` may be given (it must be an upper bound of
    ``λ_max(scale·UᵀU)``); otherwise :func:`gram_lambda_max` with ``lambda_max_method``.
    Cost ``O(nd)`` plus the ``λ_max`` computation.

    Examples
    --------
    >>> import numpy as np
    >>> from invhvp.bounds import datainf_certificate
    >>> datainf_certificate(np.array([[1.0, 0.0], [0.0, 1.0]]), 1.0)   # (1/2)·(1² + 1²)
    1.0
    """
    xp, n, d, lam, s = _validate(factor, damping, scale)
    if lambda_max is None:
        lambda_max, _ = gram_lambda_max(factor, scale=s, method=lambda_max_method)
    lm = Bk.finite_scalar(lambda_max, "lambda_max", minimum=0.0)
    return _cert_from(xp, _scaled_norms64(xp, factor, n, s), lm, n, lam)


def _sqrt_factor(xp, K):
    """``F`` with ``F Fᵀ = K`` for PSD ``K`` (eigenvectors scaled by sqrt of clipped eigenvalues)."""
    w, V = xp.linalg.eigh(K)
    w = xp.maximum(w, xp.zeros_like(w))
    return V * xp.sqrt(w)[None, :], w


def datainf_intermediate_bound(factor, damping, *, scale=None, max_work: float = 2.0**31) -> float:
    r"""The intermediate bound ``(1/(nλ³)) Σ_i ||S_i − S̄||₂²``.

    Each ``S_i − S̄ = g̃_i g̃_iᵀ − G`` is treated in ``r = min(n, d)`` dimensions: directly
    when ``d <= n``; otherwise through ``F Fᵀ = g̃ g̃ᵀ`` (the ``n×n`` Gram), since the
    nonzero eigenvalues of ``G̃ᵀ(e_i e_iᵀ − I/n)G̃`` are those of ``f_i f_iᵀ − FᵀF/n``.
    Cost ``O(n r³)`` (batched symmetric eigenvalues), refused with
    :class:`~invhvp.errors.OperatorTooLargeError` when ``n·r³ > max_work``.

    Examples
    --------
    >>> import numpy as np
    >>> from invhvp.bounds import datainf_intermediate_bound
    >>> datainf_intermediate_bound(np.array([[1.0, 0.0], [0.0, 1.0]]), 1.0)  # ||diag(±1/2)||² each
    0.25
    """
    xp, n, d, lam, s = _validate(factor, damping, scale)
    r = min(n, d)
    if n * float(r) ** 3 > max_work:
        raise OperatorTooLargeError(
            f"datainf_intermediate_bound: n·min(n, d)³ = {n * float(r) ** 3:.3g} exceeds "
            f"max_work={max_work:.3g}; use datainf_certificate instead"
        )
    G64 = math.sqrt(n * s) * xp.astype(factor, xp.float64)
    if d <= n:
        vecs = G64
        center = (G64.T @ G64) / n
    else:
        F, w = _sqrt_factor(xp, G64 @ G64.T)
        vecs = F
        center = xp.eye(n, dtype=xp.float64, device=Bk.device_of(F)) * (w / n)[None, :]
    total = 0.0
    for sl in row_chunks(n, max(1, CHUNK_ELEMENTS // (r * r))):
        v = vecs[sl, :]
        Mb = v[:, :, None] * v[:, None, :] - center[None, :, :]
        ev = xp.linalg.eigvalsh(Mb)
        nrm = xp.max(xp.abs(ev), axis=1)
        total += float(xp.sum(nrm * nrm))
    return total / (n * lam**3)


def datainf_true_error(factor, damping, *, scale=None, max_dim: int = 2048) -> float:
    r"""The true spectral error ``||S̄⁻¹ − R||₂`` of DataInf's inverse on one block.

    With ``K̃ = G̃G̃ᵀ = F Fᵀ``, ``D = diag(1/(λ + ||g̃_i||²))`` and Woodbury,
    ``S̄⁻¹ − R = (1/λ) G̃ᵀ [D/n − (nλI + K̃)⁻¹] G̃``, whose nonzero eigenvalues are those of
    ``(1/λ) Fᵀ[D/n − (nλI + K̃)⁻¹]F`` (``n×n``); when ``d <= n`` the ``d×d`` matrices are used
    directly.  Cost ``O(nd·r + r³)`` with ``r = min(n, d)``; refused
    (:class:`~invhvp.errors.OperatorTooLargeError`) when ``r > max_dim``.

    Examples
    --------
    >>> import numpy as np
    >>> from invhvp.bounds import datainf_true_error
    >>> datainf_true_error(np.array([[2.0, 0.0, 1.0]]), 0.5) < 1e-14     # n = 1: exact
    True
    """
    xp, n, d, lam, s = _validate(factor, damping, scale)
    r = min(n, d)
    if r > max_dim:
        raise OperatorTooLargeError(
            f"datainf_true_error: min(n, d) = {r} exceeds max_dim={max_dim}; use the certificates"
        )
    G64 = math.sqrt(n * s) * xp.astype(factor, xp.float64)
    t = xp.sum(G64 * G64, axis=1)
    Dg = 1.0 / (lam + t)
    if d <= n:
        eye = _eye64(xp, d, G64)
        Sbar = (G64.T @ G64) / n + lam * eye
        Sinv = xp.linalg.inv(Sbar)
        R = (eye - (G64.T @ (Dg[:, None] * G64)) / n) / lam
        E = Sinv - R
    else:
        K = G64 @ G64.T
        F, _ = _sqrt_factor(xp, K)
        eye = _eye64(xp, n, G64)
        Mid = eye * (Dg / n)[None, :] - xp.linalg.inv(n * lam * eye + K)
        E = (F.T @ Mid @ F) / lam
    E = (E + E.T) / 2
    return float(xp.max(xp.abs(xp.linalg.eigvalsh(E))))


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
    if isinstance(x, bool) or not isinstance(x, int) or x < 1:
        raise InputError(f"{name}: expected a positive int, got {x!r}")
    return x


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
    rtol = Bk.finite_scalar(rtol, "rtol", minimum=0.0, strict=True)
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


def datainf_certificates(
    factor,
    damping,
    *,
    scale=None,
    full: bool = True,
    max_gram_rows: int = 2048,
    max_true_dim: int = 2048,
    max_intermediate_work: float = 2.0**31,
    sq_norms=None,
) -> dict:
    """All DataInf bounds for one block, as a dict of floats.

    Keys: ``n``, ``d``, ``damping`` (``λ``), ``paper_bound`` (``2M²d²/λ³``),
    ``certificate`` (computable), ``lambda_max`` and ``lambda_max_method`` (see
    :func:`gram_lambda_max`), ``intermediate`` and ``true_error`` (``None`` when not
    computed), ``spectral`` (:func:`datainf_spectral_certificate`, with
    ``spectral_mu_bar``, ``spectral_mu_bar_method`` and ``spectral_lambda_max_R``), and
    ``bound``: the smallest valid bound available (the true error when computed, else
    normally ``spectral``).  With ``full=False`` only the ``O(nd)`` quantities are
    computed (``λ_max`` and the spectral ``μ̄`` by the trace upper bound); with
    ``full=True`` the spectral certificate uses the small-side Gram when
    ``min(n, d) <= max_gram_rows`` and Lanczos otherwise.

    ``sq_norms`` (optional) are precomputed ``||u_i||²`` in the factor's dtype (a solver
    already has them): they are used instead of a float64 pass over the factor, inflated by
    ``1 + 2·d·eps`` so that dot-product rounding cannot make a bound too small.

    Examples
    --------
    >>> import numpy as np
    >>> from invhvp.bounds import datainf_certificates
    >>> c = datainf_certificates(np.eye(2), 1.0)
    >>> c["paper_bound"], c["certificate"], c["intermediate"], round(c["true_error"], 6)
    (72.0, 1.0, 0.25, 0.083333)
    """
    xp, n, d, lam, s = _validate(factor, damping, scale)
    if sq_norms is None:
        t = _scaled_norms64(xp, factor, n, s)  # one pass over the factor for the O(nd) bounds
        infl = 1.0 + (d + 4) * EPS64
    else:
        inflate = 1.0 + 2.0 * d * Bk.eps(sq_norms.dtype)
        t = (n * s * inflate) * xp.astype(sq_norms, xp.float64)
        infl = 1.0 + 4 * EPS64
    if full and n <= max_gram_rows:
        lm, how = gram_lambda_max(factor, scale=s, method="gram")
    else:
        lm, how = float(xp.mean(t)), "trace (upper bound)"  # mean ||g̃||² = s·Σ||u||² = tr G
    out = {
        "n": n,
        "d": d,
        "damping": lam,
        "paper_bound": _paper_from(xp, t, d, lam),
        "certificate": _cert_from(xp, t, lm, n, lam),
        "lambda_max": lm,
        "lambda_max_method": how,
        "intermediate": None,
        "true_error": None,
    }
    if full:
        r = min(n, d)
        if n * float(r) ** 3 <= max_intermediate_work:
            out["intermediate"] = datainf_intermediate_bound(
                factor, lam, scale=s, max_work=max_intermediate_work
            )
        if r <= max_true_dim:
            out["true_error"] = datainf_true_error(factor, lam, scale=s, max_dim=max_true_dim)
    spec = _spectral(factor, lam, s, t, infl, "auto" if full else "trace", max_gram_rows, 64, 1e-3, 0)
    out["spectral"] = spec.value
    out["spectral_mu_bar"] = spec.mu_bar
    out["spectral_mu_bar_method"] = spec.mu_bar_method
    out["spectral_lambda_max_R"] = spec.lambda_max_R_upper
    candidates = [out["spectral"], out["certificate"], out["paper_bound"]]
    if out["intermediate"] is not None:
        candidates.append(out["intermediate"])
    out["bound"] = out["true_error"] if out["true_error"] is not None else min(candidates)
    return out


def datainf_influence_error_bound(train_grads, test_grads, bounds):
    r"""Per-value bound ``|I_exact − I_DataInf| <= Σ_l ||v_l|| · bound_l · ||g_l||`` (``m×n``).

    ``I = −vᵀ(G+λI)⁻¹g`` summed over blocks ``l``: each block's error is at most
    ``||v_l||₂ · ||S̄_l⁻¹ − R_l||₂ · ||g_l||₂``.  ``train_grads`` (``n×d_l``) and
    ``test_grads`` (``m×d_l``) are arrays or per-block sequences; ``bounds`` is one float per
    block (any of the bounds above, e.g. ``datainf_certificates(...)["bound"]``).
    Cost ``O((m+n)d)``; returns an array of the gradients' type, dtype and device.

    Examples
    --------
    >>> import numpy as np
    >>> from invhvp.bounds import datainf_influence_error_bound
    >>> datainf_influence_error_bound(np.array([[3.0, 4.0]]), np.array([[1.0, 0.0]]), 0.5)
    array([[2.5]])
    """
    train = list(train_grads) if isinstance(train_grads, (list, tuple)) else [train_grads]
    test = list(test_grads) if isinstance(test_grads, (list, tuple)) else [test_grads]
    bl = list(bounds) if isinstance(bounds, (list, tuple)) else [bounds]
    if not (len(train) == len(test) == len(bl)):
        raise ShapeError(
            f"bounds: expected one value per block ({len(train)} train blocks, {len(test)} test blocks), "
            f"got {len(bl)}"
        )
    out = None
    for i, (g, v, b) in enumerate(zip(train, test, bl)):
        xp = Bk.namespace(g, v)
        for a, nm in ((g, "train_grads"), (v, "test_grads")):
            Bk.check_matrix(a, f"{nm}[{i}]")
        if int(v.shape[1]) != int(g.shape[1]):
            raise ShapeError(
                f"test_grads[{i}]: has {v.shape[1]} columns, but train_grads[{i}] has {g.shape[1]}"
            )
        if out is not None and (int(g.shape[0]), int(v.shape[0])) != (out.shape[1], out.shape[0]):
            raise ShapeError(
                f"block {i}: {g.shape[0]} training and {v.shape[0]} test rows, but block 0 has "
                f"{out.shape[1]} and {out.shape[0]}"
            )
        b = Bk.finite_scalar(b, "bounds", minimum=0.0)
        term = b * (xp.sqrt(row_sq_norms(v))[:, None] * xp.sqrt(row_sq_norms(g))[None, :])
        out = term if out is None else out + term
    return out
