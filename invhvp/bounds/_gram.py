r"""Certified eigenvalue bounds for a Gram matrix ``A = s·UᵀU`` (docs/theory.md §4, §6).

Private helpers of :mod:`invhvp.bounds.datainf`.  Everything runs in float64 on the
factor's device (numpy or torch); only scalars and ``k×k`` Lanczos matrices
(``k <= steps``) reach the host.  ``U`` is ``n×d``; the *small side* is the
``r×r`` matrix, ``r = min(n, d)``, with the same nonzero eigenvalues as ``A``:
``s·UUᵀ`` when ``n <= d`` and ``s·UᵀU`` otherwise.

Rounding allowances
-------------------
A float64 inner product of length ``L`` has error at most ``γ_L |x|ᵀ|y|``,
``γ_L = L·u/(1 − L·u)``, ``u = 2⁻⁵³`` (Higham, *Accuracy and Stability*, §3.1), so an
accumulated Gram ``K̂`` obeys ``|K̂ − K| <= γ_L a aᵀ`` entrywise with ``a_i = ||u_i||``,
hence ``||K̂ − K||₂ <= γ_L·tr K``.  A backward-stable symmetric eigensolver returns
the exact eigenvalues of ``K̂ + F`` with ``||F||₂ <= p(r)·eps·||K̂||₂``; we take
``p(r) = 10 r`` (the usual constant; LAPACK documents no sharper one).  By Weyl's
inequality each computed eigenvalue is then within

    allowance = (2L + 10r + 10)·eps·tr(A)

of the exact one (``eps = 2⁻⁵²``, ``tr A >= ||A||₂`` because ``A ⪰ 0``).  This is
about ``1e-12·tr A`` at ``L = 10⁴``: negligible, but it is what makes the bounds
bounds rather than estimates.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import _backend as Bk
from .._arrays import CHUNK_ELEMENTS, as_generator, gram64, random_matrix, row_chunks
from ._common import datainf_weights

EPS64 = 2.0**-52


def allowance(length: int, r: int, trace: float) -> float:
    """Rounding allowance of one eigenvalue of a float64 Gram matrix (module docstring)."""
    return (2.0 * length + 10.0 * r + 10.0) * EPS64 * trace


class SmallSide(NamedTuple):
    """Certified quantities from the small-side Gram matrices (all floats).

    ``mu_upper >= λ_max(A) >= mu_lower``; ``nu_lower <= λ_min`` of
    ``M = s·Uᵀ D U`` on the row space of ``U`` (``D = diag(1/(λ + n s ||u_i||²))``);
    ``trace`` is ``tr A`` as computed; ``side`` is ``"n"`` (``UUᵀ``) or ``"d"`` (``UᵀU``).
    """

    mu_upper: float
    mu_lower: float
    nu_lower: float
    trace: float
    side: str


def small_side(U, s: float, lam: float) -> SmallSide:
    """``λ_max(s·UᵀU)`` and ``λ_min(s·UᵀDU)`` on the row space, from ``r×r`` matrices.

    ``n <= d``: ``K = UUᵀ`` accumulated over column chunks (``O(n²d)``); then
    ``λ(sK)`` and ``λ(s·D^{1/2} K D^{1/2})``, whose nonzero eigenvalues are those of
    ``s·UᵀDU``.  ``d < n``: ``UᵀU`` and ``UᵀDU`` accumulated over row chunks in one pass
    (``O(nd²)``).  Two ``r×r`` symmetric eigenproblems (``O(r³)``).  If ``U`` is rank
    deficient the smallest computed eigenvalue is ``0`` (up to rounding) and ``nu_lower``
    is ``0``: still a valid lower bound on the row space.
    """
    xp = Bk.namespace(U)
    n, d = (int(v) for v in U.shape)
    dev = Bk.device_of(U)
    if n <= d:
        K = gram64(U)
        sq = xp.linalg.diagonal(K)  # ||u_i||², as the Gram holds them
        dh = 1.0 / xp.sqrt(lam + (n * s) * sq)
        A = s * K
        M = s * (dh[:, None] * K * dh[None, :])
        length, r = d, n
    else:
        A = xp.zeros((d, d), dtype=xp.float64, device=dev)
        M = xp.zeros((d, d), dtype=xp.float64, device=dev)
        for sl in row_chunks(n, max(1, CHUNK_ELEMENTS // max(d, 1))):
            V = xp.astype(U[sl, :], xp.float64)
            w = datainf_weights(xp.sum(V * V, axis=1), lam, s, n)
            A = A + s * (V.T @ V)
            M = M + V.T @ (w[:, None] * V)
        length, r = n, d
    tr_a = max(float(xp.sum(xp.linalg.diagonal(A))), 0.0)
    tr_m = max(float(xp.sum(xp.linalg.diagonal(M))), 0.0)
    ev_a = xp.linalg.eigvalsh((A + A.T) / 2)
    ev_m = xp.linalg.eigvalsh((M + M.T) / 2)
    mu_hat = float(xp.max(ev_a))
    nu_hat = float(xp.min(ev_m))
    a_a = allowance(length, r, tr_a)
    a_m = allowance(length + 4, r, tr_m)  # + the rounding of the weights D
    return SmallSide(
        mu_upper=min(max(mu_hat, 0.0) + a_a, tr_a * (1.0 + (length + 4) * EPS64)),
        mu_lower=max(mu_hat - a_a, 0.0),
        nu_lower=max(nu_hat - a_m, 0.0),
        trace=tr_a,
        side="n" if n <= d else "d",
    )


def _matvec64(xp, U, X, s: float, side: str):
    """``s·UUᵀX`` (``side="n"``) or ``s·UᵀUX`` (``side="d"``), float64, over row chunks of ``U``."""
    n, d = (int(v) for v in U.shape)
    sls = row_chunks(n, max(1, CHUNK_ELEMENTS // max(d, 1)))
    if side == "d":
        out = None
        for sl in sls:
            V = xp.astype(U[sl, :], xp.float64)
            P = V.T @ (V @ X)
            out = P if out is None else out + P
        return s * out
    Y = None
    for sl in sls:
        V = xp.astype(U[sl, :], xp.float64)
        P = V.T @ X[sl, :]
        Y = P if Y is None else Y + P
    parts = [xp.astype(U[sl, :], xp.float64) @ Y for sl in sls]
    return s * (parts[0] if len(parts) == 1 else xp.concat(parts, axis=0))


class LanczosBound(NamedTuple):
    """``lower <= λ_max(A) <= upper`` from a Krylov subspace; ``n_matvec`` products with ``A``."""

    upper: float
    lower: float
    n_matvec: int
    converged: bool


def _arrowhead_max(theta: np.ndarray, rho: np.ndarray, c: float) -> float:
    k = theta.size
    B = np.zeros((k + 1, k + 1))
    B[np.arange(k), np.arange(k)] = theta
    B[:k, k] = rho
    B[k, :k] = rho
    B[k, k] = c
    return float(np.linalg.eigvalsh(B)[-1])


def lanczos_upper(U, s: float, trace_upper: float, *, steps: int, rtol: float, rng) -> LanczosBound:
    r"""Certified ``λ_max(A)`` bracket for ``A = s·UᵀU ⪰ 0`` from Lanczos (docs/theory.md §6).

    Lanczos with full reorthogonalization builds an orthonormal ``Q`` (``r×k``) and
    ``W = AQ``.  With ``H = QᵀW = YΘYᵀ``, Ritz residuals ``ρ_i = ||(W − QH)y_i||`` and the
    trace left outside the subspace ``c = tr A − tr H`` (``>= λ_max`` of the compression
    ``C`` of ``A`` to ``Q⊥``, because ``C ⪰ 0``), every unit ``x = QYa + x⊥`` satisfies

        xᵀAx <= Σ θ_i a_i² + 2 ||x⊥|| Σ ρ_i |a_i| + c ||x⊥||²,

    so ``λ_max(A) <= λ_max([[diag θ, ρ], [ρᵀ, c]])`` (an arrowhead matrix).  Once the
    top Ritz pair has converged (``ρ_1`` small) and ``θ_1`` exceeds ``c`` and ``θ_2``,
    this is ``θ_1 + O(ρ_1²/gap)``: the gap is *certified* by the trace, never assumed.
    For a flat spectrum (``c >= θ_1``) it degrades towards ``tr A``; the caller takes the
    minimum with the trace.  The largest Ritz value ``θ_1`` is the lower end (Cauchy
    interlacing).  Stops when ``upper <= θ_1 (1 + rtol)``, after ``steps`` products, or when
    ``Q`` spans the whole space.  An invariant subspace is left by restarting from a fresh
    random vector (the bound needs only orthonormality of ``Q``, not a Krylov structure).
    Cost: one product with ``U`` and one with ``Uᵀ`` per step, plus ``O(r k²)`` per step.
    Allowance: :func:`allowance` plus ``2k·||QᵀQ − I||_F·tr A`` for the basis' loss of
    orthogonality.
    """
    xp = Bk.namespace(U)
    n, d = (int(v) for v in U.shape)
    side = "n" if n <= d else "d"
    r, length = min(n, d), max(n, d)
    if trace_upper <= 0.0:
        return LanczosBound(0.0, 0.0, 0, True)
    dev = Bk.device_of(U)
    gen = as_generator(rng)

    def fresh(Q):
        v = random_matrix(xp, (r, 1), xp.float64, dev, gen, kind="normal")
        for _ in range(2):
            if Q is not None:
                v = v - Q @ (Q.T @ v)
        nv = float(xp.linalg.vector_norm(v))
        return (v / nv) if nv > 0 else None

    q = fresh(None)
    Qs, Ws = [], []
    best, theta1, n_mv, converged = math.inf, 0.0, 0, False
    for j in range(min(steps, r)):
        w = _matvec64(xp, U, q, s, side)
        n_mv += 1
        Qs.append(q)
        Ws.append(w)
        Q = xp.concat(Qs, axis=1)
        W = xp.concat(Ws, axis=1)
        k = j + 1
        H = Bk.to_host(Q.T @ W, np.float64)
        H = (H + H.T) / 2
        theta, Y = np.linalg.eigh(H)
        Yd = xp.asarray(Y, dtype=xp.float64, device=dev)
        Th = xp.asarray(theta, dtype=xp.float64, device=dev)
        rho = Bk.to_host(xp.linalg.vector_norm(W @ Yd - (Q @ Yd) * Th[None, :], axis=0), np.float64)
        eye = xp.eye(k, dtype=xp.float64, device=dev)
        orth = float(xp.linalg.vector_norm(Q.T @ Q - eye))
        c = max(trace_upper - float(np.trace(H)), 0.0)
        slack = allowance(length + r, r, trace_upper) + (10.0 * k * EPS64 + 2.0 * k * orth) * trace_upper
        theta1 = float(theta[-1])
        best = min(best, _arrowhead_max(theta, rho, c) + slack)
        if best <= max(theta1, 0.0) * (1.0 + rtol) or k == r:
            converged = True
            break
        v = w
        for _ in range(2):
            v = v - Q @ (Q.T @ v)
        beta = float(xp.linalg.vector_norm(v))
        if not math.isfinite(beta):
            break
        q = v / beta if beta > 1e3 * EPS64 * trace_upper else fresh(Q)
        if q is None:
            break
    lower = max(theta1 - allowance(length + r, r, trace_upper), 0.0)
    return LanczosBound(min(best, trace_upper), lower, n_mv, converged)
