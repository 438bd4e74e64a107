"""Preconditioned conjugate gradient for many right-hand sides at once."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .. import _backend as Bk
from ..errors import InputError, NotPositiveDefiniteError
from ..operators.base import Operator
from ..operators.block_diagonal import BlockDiagonal
from ..result import Status
from .base import Counted, Outcome, Solver, damping_array, damping_for_blocks

__all__ = ["CG"]


@dataclass(frozen=True, eq=False)
class CG(Solver):
    r"""Conjugate gradient on ``(A + λI) X = B`` for all ``k`` columns at once.

    Each column runs its own CG recurrence (its own step lengths), but every
    iteration applies the operator to all still-active columns in one ``matmat``,
    so ``k`` right-hand sides cost ``n_iter`` block products instead of ``k·n_iter``
    single products.  Columns that have converged are dropped from the product.

    Stopping rule, per column ``j``: ``‖r_j‖₂ <= max(rtol·‖b_j‖₂, atol)`` on the
    (unpreconditioned) residual.  A direction with ``pᵀ(A+λI)p <= 0`` stops that
    column with status ``NONPOSITIVE_CURVATURE`` (the damped operator is not
    positive definite) and keeps that column's last iterate; NaN or infinity from the
    operator or preconditioner stops it with status ``NONFINITE``.  When ``A`` is PSD
    and ``λ > 0`` the returned ``info["error_bound"]`` is the a-posteriori bound
    ``‖x − x*‖ <= ‖r‖/λ``.

    Cost per iteration: one operator product with the active columns plus
    ``O(dk)`` vector work.

    Parameters
    ----------
    rtol, atol : float
        Relative and absolute residual tolerances (scipy's meaning).
    maxiter : int, optional
        Iteration limit; default ``10·d``.
    preconditioner : None, "jacobi", Operator or callable
        An approximation of ``(A + λI)⁻¹`` (symmetric positive definite).
        ``"jacobi"`` uses ``1/(diag(A) + λ)``; an invhvp operator is applied with its
        ``matmat``; a callable gets and returns a ``(d, k)`` array.
    x0 : array, optional
        Initial guess, shape ``(d,)`` or ``(d, k)`` like the right-hand side.
    callback : callable, optional
        ``callback(X)`` after every iteration with the current ``(d, k)`` iterate.
    record_history : bool, default False
        Store the recursive residual norms (a ``(n_iter+1, k)`` numpy array) in
        ``info["residual_history"]``.
    per_block : bool, default True
        On a :class:`~invhvp.BlockDiagonal`, run CG on each block separately (block ``l``
        stops at ``‖r_l‖ <= max(rtol·‖b_l‖, atol/√L)``, which implies the joint rule).
        Each block then only needs as many iterations as its own spectrum requires.
        Falls back to one joint CG when a user preconditioner operator/callable, a
        ``callback`` or ``record_history`` is given.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> A = ih.Dense(np.diag([1.0, 2.0, 3.0]))
    >>> res = ih.solve(A, np.ones((3, 2)), ih.CG(rtol=1e-12), damping=1.0)
    >>> np.round(res.x[:, 0], 6)
    array([0.5     , 0.333333, 0.25    ])
    """

    rtol: float = 1e-5
    atol: float = 0.0
    maxiter: int | None = None
    preconditioner: Any = None
    x0: Any = None
    callback: Callable | None = None
    record_history: bool = False
    per_block: bool = True
    name = "cg"

    def __post_init__(self):
        Bk.finite_scalar(self.rtol, "rtol", minimum=0.0)
        Bk.finite_scalar(self.atol, "atol", minimum=0.0)
        if self.maxiter is not None and (
            isinstance(self.maxiter, bool) or not isinstance(self.maxiter, int) or self.maxiter < 1
        ):
            raise InputError(f"maxiter: expected a positive int or None, got {self.maxiter!r}")
        p = self.preconditioner
        ok = p is None or isinstance(p, Operator) or (p == "jacobi" if isinstance(p, str) else callable(p))
        if not ok:
            raise InputError(
                f"preconditioner: expected None, 'jacobi', an invhvp operator or a callable, got {p!r}"
            )
        if self.callback is not None and not callable(self.callback):
            raise InputError(f"callback: expected a callable, got {type(self.callback).__name__}")

    # ------------------------------------------------------------------ helpers
    def _precond(self, op: Operator, lam):
        p = self.preconditioner
        xp = op.xp
        if p is None:
            return None, "none"
        if isinstance(p, str):  # "jacobi"
            diag = op.diagonal()[:, None] + lam
            if not bool(xp.all(diag > 0)):
                raise NotPositiveDefiniteError(
                    "preconditioner='jacobi': diag(A) + damping has non-positive entries"
                )
            inv = 1.0 / diag
            return (lambda R: inv * R), "jacobi"
        if isinstance(p, Operator):
            if p.size != op.size or p.xp is not op.xp or p.dtype != op.dtype or p.device != op.device:
                raise InputError(
                    "preconditioner: operator must match the solved operator's size, array library, "
                    f"dtype and device; got {p!r} for {op!r}"
                )
            return p._matmat, type(p).__name__
        return p, getattr(p, "__name__", "callable")

    # -------------------------------------------------------------------- solve
    def _run(self, counted: Counted, B, damping) -> Outcome:
        op = counted.op
        if (
            self.per_block
            and isinstance(op, BlockDiagonal)
            and op.n_blocks > 1
            and self.preconditioner in (None, "jacobi")
            and self.callback is None
            and not self.record_history
        ):
            return self._run_blocks(counted, B, damping)
        return self._run_joint(counted, B, damping)

    def _run_blocks(self, counted: Counted, B, damping) -> Outcome:
        """Independent CG per block, each with its own damping and stopping rule.

        Block ``l`` stops when ``‖r_l‖ <= max(rtol·‖b_l‖, atol/√L)``, which implies the
        joint rule ``‖r‖ <= max(rtol·‖b‖, atol)``.  Each block's Krylov space only has to
        resolve that block's spectrum, so this needs far fewer iterations than CG on the
        whole block-diagonal operator.
        """
        op = counted.op
        xp = op.xp
        lams = damping_for_blocks(op, damping)
        x0s = op.split(_as_2d_like(self.x0, B, op, "x0")) if self.x0 is not None else [None] * op.n_blocks
        atol = self.atol / math.sqrt(op.n_blocks)
        parts, infos, iters, worst = [], [], [], Status.SUCCESS
        for blk, Bi, lam, x0 in zip(op.blocks, op.split(B), lams, x0s):
            sub = replace(self, x0=x0, atol=atol)
            out = sub._run(counted.wrap(blk), Bi, lam)
            parts.append(out.x)
            infos.append(out.info)
            iters.append(out.n_iter)
            if _SEVERITY[out.status] > _SEVERITY[worst]:
                worst = out.status
        info = {
            "method": "cg-per-block",
            "preconditioner": infos[0]["preconditioner"],
            "rtol": self.rtol,
            "atol": self.atol,
            "iterations_per_block": iters,
            # block products counted per column: the sum over blocks of their iterations
            "iterations_per_column": sum(i["iterations_per_column"] for i in infos),
            "matvec_convention": "a product with one block counts as one matvec per column",
            "blocks": infos,
        }
        if worst is not Status.SUCCESS:
            bad = [j for j, i in enumerate(infos) if "advice" in i]
            info["advice"] = f"block {bad[0]}: {infos[bad[0]]['advice']}"
        return Outcome(x=xp.concat(parts, axis=0), status=worst, n_iter=max(iters), info=info)

    def _run_joint(self, counted: Counted, B, damping) -> Outcome:
        op = counted.op
        xp = op.xp
        d, k = B.shape
        lam = damping_array(op, damping)
        minv, pname = self._precond(op, lam)
        maxiter = 10 * d if self.maxiter is None else self.maxiter

        def apply(V, lam_cols):
            return counted.matmat(V) + lam_cols * V

        # lam may be a (d, 1) array; it broadcasts over any column subset.
        if self.x0 is not None:
            X = _as_2d_like(self.x0, B, op, "x0")
            X = xp.asarray(X, copy=True)
            R = B - apply(X, lam)
        else:
            X = xp.zeros((d, k), dtype=B.dtype, device=Bk.device_of(B))
            R = B  # never written in place
        bnorm = xp.linalg.vector_norm(B, axis=0)
        tol = xp.maximum(self.rtol * bnorm, xp.full_like(bnorm, self.atol))

        status_col = np.full(k, Status.MAX_ITER, dtype=object)
        iters_col = np.zeros(k, dtype=np.int64)
        rnorm = xp.linalg.vector_norm(R, axis=0)
        history = [_host(rnorm)] if self.record_history else None

        idx = np.arange(k)  # original column of each active column
        done = _host(rnorm <= tol)
        status_col[done] = Status.SUCCESS
        keep = ~done
        idx = idx[keep]
        Xa, Ra, tola = _take(xp, X, keep), _take(xp, R, keep), _take_vec(xp, tol, keep)
        Za = Ra if minv is None else minv(Ra)
        Pa = Za
        rz = xp.sum(Ra * Za, axis=0)
        it = 0
        while idx.size and it < maxiter:
            it += 1
            APa = apply(Pa, lam)
            pAp = xp.sum(Pa * APa, axis=0)
            good = (pAp > 0) & xp.isfinite(pAp)
            nonfinite_curv = _host(~xp.isfinite(pAp))  # NaN/inf from the operator
            bad_curv = _host(~(pAp > 0)) & ~nonfinite_curv
            # a column that fails here keeps its previous iterate (alpha = 0)
            alpha = xp.where(good, rz / xp.where(good, pAp, xp.ones_like(pAp)), xp.zeros_like(pAp))
            Xa = Xa + alpha * Pa
            Ra = Ra - alpha * APa
            rn = xp.linalg.vector_norm(Ra, axis=0)
            rn_h = _host(rn)
            iters_col[idx] = it
            finished = np.zeros(idx.size, dtype=bool)
            nonfinite = ~np.isfinite(rn_h) | nonfinite_curv
            conv = _host(rn <= tola) & ~bad_curv & ~nonfinite
            status_col[idx[conv]] = Status.SUCCESS
            status_col[idx[bad_curv]] = Status.NONPOSITIVE_CURVATURE
            status_col[idx[nonfinite & ~bad_curv]] = Status.NONFINITE
            finished |= conv | bad_curv | nonfinite
            if history is not None:
                full = history[-1].copy()
                full[idx] = rn_h
                history.append(full)
            if finished.any() or self.callback is not None:
                X = _scatter(xp, X, Xa, idx, np.ones(idx.size, dtype=bool))
            if self.callback is not None:
                self.callback(X)
            if finished.any():
                keep = ~finished
                idx = idx[keep]
                if not idx.size:
                    break
                Xa, Ra, Pa, rz, tola = (
                    _take(xp, Xa, keep),
                    _take(xp, Ra, keep),
                    _take(xp, Pa, keep),
                    _take_vec(xp, rz, keep),
                    _take_vec(xp, tola, keep),
                )
            Za = Ra if minv is None else minv(Ra)
            rz_new = xp.sum(Ra * Za, axis=0)
            beta = rz_new / rz
            rz = rz_new
            Pa = Za + beta * Pa
        if idx.size:
            X = _scatter(xp, X, Xa, idx, np.ones(idx.size, dtype=bool))

        status = max(set(status_col.tolist()), key=_SEVERITY.__getitem__, default=Status.SUCCESS)
        info = {
            "method": "cg",
            "preconditioner": pname,
            "rtol": self.rtol,
            "atol": self.atol,
            "maxiter": maxiter,
            "iterations_per_column": iters_col,
            "column_status": [s.value for s in status_col],
        }
        if history is not None:
            info["residual_history"] = np.stack(history)
        if status is Status.NONPOSITIVE_CURVATURE:
            info["advice"] = (
                "CG met non-positive curvature: A + damping·I is not positive definite. "
                "Increase damping, or use a Gauss-Newton operator instead of an indefinite Hessian."
            )
        elif status is Status.MAX_ITER:
            info["advice"] = "CG hit maxiter: raise maxiter, add damping, or use a preconditioner."
        return Outcome(x=X, status=status, n_iter=it, info=info)


_SEVERITY = {
    Status.SUCCESS: 0,
    Status.MAX_ITER: 1,
    Status.DIVERGED: 2,
    Status.NONFINITE: 3,
    Status.NONPOSITIVE_CURVATURE: 4,
}


def _host(a) -> np.ndarray:
    """Small per-column arrays to numpy (a k-element device→host copy, never a d-sized one)."""
    return Bk.to_host(a)


def _sel(xp, keep: np.ndarray, like):
    idx = np.flatnonzero(keep)
    if Bk.is_torch(xp):
        import torch

        return torch.as_tensor(idx, device=like.device)
    return idx


def _take(xp, M, keep):
    if keep.all():
        return M
    return M[:, _sel(xp, keep, M)]


def _take_vec(xp, v, keep):
    if keep.all():
        return v
    return v[_sel(xp, keep, v)]


def _scatter(xp, X, Xa, idx, mask):
    cols = idx[mask]
    if Bk.is_torch(xp):
        import torch

        X = X.clone()
        X[:, torch.as_tensor(cols, device=X.device)] = Xa
        return X
    X = X.copy()
    X[:, cols] = Xa
    return X


def _as_2d_like(x0, B, op, name):
    Bk.check_compatible(x0, xp=op.xp, dtype=op.dtype, device=op.device, name=name)
    Bk.check_finite(op.xp, x0, name)
    if x0.ndim == 1 and B.shape[1] == 1 and x0.shape[0] == B.shape[0]:
        return x0[:, None]
    if tuple(x0.shape) != tuple(B.shape):
        from ..errors import ShapeError

        raise ShapeError(
            f"{name}: expected shape {tuple(B.shape)} like the right-hand side, got {tuple(x0.shape)}"
        )
    return x0
