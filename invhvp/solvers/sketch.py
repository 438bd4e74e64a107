r"""Randomized Nyström approximation of a PSD operator, grown adaptively (Frangella, Tropp & Udell 2023).

For ``H = A − s·I`` (``s`` a lower bound on ``λ_min(A)``: ``op.eig_lower()`` for a PSD operator,
a certified Lanczos lower end for an indefinite one) and an orthonormal Gaussian test matrix
``Ω`` (``d×ℓ``):

.. math:: Y = HΩ,\quad Y_ν = Y + νΩ,\quad \hat H_ν = Y_ν (Ω^T Y_ν)^{-1} Y_ν^T = V Σ^2 V^T,
          \quad \hat H = V \max(Σ^2 − ν, 0) V^T = V \hat Λ V^T .

``ν = eps·‖Y‖_F`` (raised tenfold, at most three times, if ``ΩᵀY_ν`` is not numerically
positive definite) keeps the factorization stable in float32.  Products stay in the working
dtype; everything else is float64 on the operator's device: the Grams ``ΩᵀY`` and ``YᵀY``
(updated incrementally as ``ℓ`` grows), ``ΩᵀY_ν = CCᵀ``, the core ``K = C⁻¹Y_νᵀY_νC⁻ᵀ = WΣ²Wᵀ``,
and ``V = Y_ν C⁻ᵀ W Σ⁻¹`` (formed in float64 row chunks, so its columns are orthonormal to
working precision even where ``σ_i² ≈ ν``; in float32 this product would lose orthogonality in
proportion to ``λ̂_1/λ̂_i``).  ``Ω`` is orthonormalized by Cholesky-QR (its Gram formed in the working
dtype, factored in float64; 3-5× faster than a float32 Householder QR here).  Nothing ``d``-sized leaves the device.

Facts the solvers rely on (exact arithmetic; ``ν`` and rounding perturb them by about ``ν``):
``0 ⪯ Ĥ ⪯ H``, hence ``λ̂_i <= λ_i``, and ``E = H − Ĥ ⪰ 0`` with ``‖E‖`` set by the tail
``λ_{ℓ+1}, λ_{ℓ+2}, …``.  :func:`error_norm` estimates ``‖E‖`` by Lanczos.

Growth (``kappa_target`` given): ``ℓ`` doubles -- only the new columns of ``Ω`` are multiplied
by the operator, the old products are kept -- until the estimated condition number of the
preconditioned system, ``(λ̂_ℓ + μ + ‖E‖)/μ``, meets the target, or the budget (``max_rank``,
``max_matvec``) is reached.  ``λ̂_ℓ`` alone is a poor guide: on real LoRA gradients a 256-column
sketch had ``λ̂_ℓ ≈ 2μ`` but ``‖E‖ ≈ 35μ`` (a Gaussian sketch resolves only about its top half).

Cost: ``ℓ`` operator products; ``O(dℓ²)`` for the QR factorizations (each growth step) and
``O(ℓ³)`` float64 for the core; memory ``≈ 4dℓ`` working-dtype numbers during construction,
``dℓ`` afterwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .. import _backend as Bk
from ..estimators import EigEstimate, _lanczos
from ..operators.base import Operator
from .sketch_core import Sketch

__all__ = ["NystromApprox", "nystrom", "error_norm", "default_max_rank"]

#: Largest sketch the automatic choice builds (columns), before the memory cap.
MAX_RANK = 2048
#: Working-dtype bytes the construction may hold (Ω, Y, Q and V: about 4·d·ℓ numbers).
MAX_MEMORY = 2 << 30


@dataclass
class NystromApprox:
    """``Ĥ = V diag(λ̂) Vᵀ ⪯ H = A − shift·I`` from an ``ℓ``-column sketch.

    Attributes
    ----------
    V : array, (d, ℓ)
        Orthonormal columns, working dtype, operator's device.
    values : numpy.ndarray, (ℓ,)
        ``λ̂_1 >= … >= λ̂_ℓ >= 0`` (float64, host: ``ℓ`` numbers).
    values_dev : array, (ℓ,)
        The same values on the device, float64 (for applying functions of ``Ĥ``).
    shift, nu : float
        ``s`` and the stabilizing shift ``ν``.
    n_matvec : int
        Operator products spent by the sketch (``ℓ``).
    history : list of dict
        ``rank`` and ``tail`` (``λ̂_ℓ``) after each growth step (``error_upper`` and ``kappa``
        where ``‖E‖`` was estimated).
    seconds : float
        Wall time of the construction.
    error : dict or None
        The :func:`error_norm` estimate of ``‖H − Ĥ‖`` (``value``, ``upper``, ...).
    kappa : float or None
        Estimated condition number ``(λ̂_ℓ + μ + ‖E‖)/μ`` of the preconditioned system.
    truncated : int
        Columns dropped because ``λ̂_i <= ν`` (the sketch exceeded the numerical rank; their
        directions count as eigenvalue 0, so ``tail`` is 0).
    """

    V: object
    values: np.ndarray
    values_dev: object
    shift: float
    nu: float
    n_matvec: int
    history: list = field(default_factory=list)
    seconds: float = 0.0
    error: dict | None = None
    kappa: float | None = None
    truncated: int = 0

    @property
    def rank(self) -> int:
        return int(self.values.size)

    @property
    def tail(self) -> float:
        """``λ̂_ℓ``, the smallest eigenvalue of the sketch (0 when columns were truncated, or none kept)."""
        return float(self.values[-1]) if self.values.size and not self.truncated else 0.0

    @property
    def top(self) -> float:
        """``λ̂_1`` (0 for an empty sketch)."""
        return float(self.values[0]) if self.values.size else 0.0

    def apply_function(self, R, f_values, f_rest: float):
        """``V diag(f(λ̂)) Vᵀ R + f_rest (I − VVᵀ) R`` with ``f_values`` a device array: ``O(dℓk)``."""
        xp = Bk.namespace(R)
        C = self.V.T @ R
        coef = xp.astype(f_values - f_rest, R.dtype)[:, None]
        return self.V @ (coef * C) + f_rest * R if f_rest != 0.0 else self.V @ (coef * C)

    def memory_bytes(self) -> int:
        V = self.V
        return int(V.shape[0]) * int(V.shape[1]) * _itemsize(V.dtype)


def _itemsize(dtype) -> int:
    return 4 if Bk.eps(dtype) > 1e-10 else 8


def default_max_rank(d: int, dtype, max_memory: float = MAX_MEMORY) -> int:
    """``min(d, MAX_RANK, max_memory / (4·d·itemsize))``, at least ``min(d, 8)``."""
    by_mem = int(max_memory // (4 * d * _itemsize(dtype)))
    return max(min(d, 8), min(d, MAX_RANK, by_mem))


def nystrom(
    counted,
    rank: int,
    rng,
    *,
    shift: float = 0.0,
    mu: float | None = None,
    kappa_target: float | None = None,
    max_rank: int | None = None,
    max_matvec: int | None = None,
    error_steps: int = 10,
    safety: float = 1.25,
) -> NystromApprox:
    """Randomized Nyström approximation of ``H = A − shift·I`` (see the module docstring).

    Parameters
    ----------
    counted : Counted
        The operator with its product counter (every product is counted there).
    rank : int
        Initial (or, without ``kappa_target``, the only) number of sketch columns; capped at ``d``.
    rng : Generator
    shift : float
        ``s``: ``A − s·I`` must be PSD.
    mu : float, optional
        ``μ = s + λ``: the preconditioned system is ``H + μI``.
    kappa_target : float, optional
        Grow (doubling) until the estimated preconditioned condition number
        ``(λ̂_ℓ + μ + ‖E‖)/μ`` is at most ``kappa_target`` (first the free test
        ``λ̂_ℓ <= (kappa_target − 1)·μ``, then ``‖E‖`` by Lanczos), or a budget is met.
    max_rank, max_matvec : int, optional
        Budget of the growth: sketch columns, and operator products (sketch and error
        estimates together).
    error_steps, safety : int, float
        Lanczos steps and safety factor of the ``‖E‖`` estimate (:func:`error_norm`);
        ``error_steps=0`` skips it.

    Returns
    -------
    NystromApprox
        With ``error`` (the ``‖E‖`` estimate) and ``kappa`` (the condition estimate, when
        ``mu`` is given).

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> from invhvp.solvers.base import Counted
    >>> from invhvp.solvers.sketch import nystrom
    >>> Q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((100, 100)))
    >>> A = ih.Dense((Q * 0.5 ** np.arange(100)) @ Q.T)          # eigenvalues 1, 1/2, 1/4, ...
    >>> a = nystrom(Counted(A), 8, np.random.default_rng(1), mu=1e-3, kappa_target=2.0)
    >>> [h["rank"] for h in a.history], a.n_matvec, bool(a.kappa <= 2.0)   # 16 columns + 10 for ‖E‖
    ([8, 16], 26, True)
    >>> np.round(a.values[:3], 3)
    array([1.  , 0.5 , 0.25])
    """
    t0 = time.perf_counter()
    d = counted.op.size
    cap = d if max_rank is None else max(1, min(int(max_rank), d))
    spend = None if max_matvec is None else max(1, int(max_matvec))
    if spend is not None:
        cap = min(cap, spend)
    sk = Sketch(counted, shift, rng)
    n0 = counted.n
    history, err, kappa = [], None, None
    adaptive = kappa_target is not None and mu is not None and mu > 0
    ell = max(1, min(int(rank), cap))

    def room():
        nxt = min(2 * ell, cap)
        # a sketch with noise-level columns (λ̂ <= ν) already spans the numerical range: more columns
        # cannot lower ‖E‖ below the rounding of the products (float32 at tiny damping)
        spans = bool(np.any(lam <= nu))
        return nxt > ell and not spans and (spend is None or counted.n - n0 + nxt - ell <= spend)

    while True:
        sk.add(ell - sk.ell)
        core = sk.core()
        nu = core["nu"]
        lam = np.maximum(Bk.to_host(core["sig2"], np.float64) - nu, 0.0)
        history.append({"rank": ell, "tail": float(lam[-1])})
        if adaptive and room() and lam[-1] + mu > kappa_target * mu:
            ell = min(2 * ell, cap)
            continue
        err = None
        if error_steps > 0 and (spend is None or counted.n - n0 + error_steps <= spend):
            err = error_norm(
                counted.op, sk.implicit_residual(core["C"], nu), rng, error_steps, safety, extra=nu
            )
            history[-1]["error_upper"] = err["upper"]
            if mu is not None and mu > 0:
                kappa = (float(lam[-1]) + mu + err["upper"]) / mu
                history[-1]["kappa"] = kappa
            if adaptive and room() and kappa > kappa_target:
                ell = min(2 * ell, cap)
                continue
        break
    V, sig2 = sk.finish(core)
    xp = sk.xp
    vals = np.maximum(Bk.to_host(sig2, np.float64) - nu, 0.0)
    vals_dev = xp.where(sig2 > nu, sig2 - nu, xp.zeros_like(sig2))
    # columns at the noise level (λ̂ <= ν: the sketch exceeds the numerical rank) are not accurate
    # directions; dropping them equals keeping them with λ̂ = 0 (``tail`` is then 0)
    keep = np.flatnonzero(vals > nu)
    truncated = int(vals.size - keep.size)
    if truncated:
        sel = keep if not Bk.is_torch(xp) else _torch_index(keep, V)
        V, vals, vals_dev = V[:, sel], vals[keep], vals_dev[sel]
    return NystromApprox(
        V=V,
        values=vals,
        values_dev=vals_dev,
        shift=sk.shift,
        nu=float(nu),
        n_matvec=counted.n - n0,
        history=history,
        seconds=time.perf_counter() - t0,
        error=err,
        kappa=kappa,
        truncated=truncated,
    )


def _torch_index(idx, like):
    import torch

    return torch.as_tensor(idx, device=like.device)


class _Products(Operator):
    """A symmetric operator given by a ``matmat`` callable (for Lanczos); shape and dtype of ``like``."""

    def __init__(self, like: Operator, mm):
        self._mm = mm
        self._xp, self._size, self._dtype, self._device = like.xp, like.size, like.dtype, like.device
        self._psd = False

    def _matmat(self, V):
        return self._mm(V)

    def to_dense(self):  # pragma: no cover - never needed
        raise NotImplementedError


def error_norm(like, matmat, rng, steps: int = 10, safety: float = 1.25, extra: float = 0.0) -> dict:
    """Estimate the norm of the PSD-up-to-rounding error operator ``E`` given by ``matmat``.

    ``steps`` Lanczos steps (``steps`` products, counted by ``matmat``).  Returns ``{"value",
    "upper", "n_matvec", "source"}``: ``value`` is the largest Ritz value (a lower bound on
    ``‖E‖``), ``upper = max(θ + residual, safety·θ) + extra`` an estimated upper bound (no
    safety factor when Lanczos exhausts the space).
    """
    est: EigEstimate = _lanczos(_Products(like, matmat), int(steps), rng, None)[0]
    theta = max(est.value, 0.0)
    upper = est.upper if est.upper_is_bound else max(est.upper, safety * theta)
    return {
        "value": theta,
        "upper": max(upper, 0.0) + extra,
        "n_matvec": est.n_matvec,
        "source": (
            f"Lanczos on E = A − s·I − Â ({est.n_matvec} products): max(Ritz + residual, {safety}×Ritz) + ν"
        ),
    }
