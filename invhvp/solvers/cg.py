"""Preconditioned conjugate gradient for many right-hand sides at once."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .. import _backend as Bk
from .. import _checks as C
from .._arrays import as_generator, col_norms64
from ..errors import InputError, NonFiniteError, ShapeError
from ..result import Status
from ._columns import scatter as _scatter
from ._columns import take as _take
from .base import Counted, Outcome, Solver
from .curvature import lower_end, nonpositive_advice
from .inverse import Inverse, smallest_damping
from .precond import Fixed, as_preconditioner
from .products import fast_operator
from .refine import EPS64, residual64

__all__ = ["CG", "CGInverse"]


@dataclass(frozen=True, eq=False)
class CG(Solver):
    r"""Conjugate gradient on ``(A + λI) X = B`` for all ``k`` columns at once.

    Each column runs its own recurrence, but every iteration applies the operator to all
    still-active columns in one ``matmat``; converged columns drop out of the product.

    **Stopping rule and status** (docs/theory.md §7), per column ``j``: the recursive
    residual must reach ``tol_j/2`` with ``tol_j = max(rtol·‖b_j‖, atol)``; then the *true*
    residual ``b − (A + λI)x`` is computed (in float64 for a float32 operator with float64
    products, such as Dense and LowRankPlusIdentity: ``info["check_precision"]``, so that
    tolerances near float32's precision can be verified), and a column whose true residual misses ``tol_j/2``
    restarts from its iterate (at most ``max_restarts`` times, within ``maxiter``).  SUCCESS
    only when every column's true residual plus its rounding allowance ``δ_j`` meets ``tol_j``
    (INACCURATE when ``δ_j`` alone makes that impossible: the tolerance is below what the
    precision can verify); ``MAX_ITER`` when the budget ran out; ``NONPOSITIVE_CURVATURE`` on
    ``pᵀ(A+λI)p <= 0`` (keeps the last iterate), or when ``A + λI`` of an indefinite operator
    (``psd=False``, e.g. a Hessian) is not certified positive definite at setup; ``NONFINITE``
    on NaN/inf from the operator or preconditioner.  ``info["error_bound"]`` is
    ``(‖r‖ + δ)/λ_lo`` with ``λ_lo`` a lower bound on ``λ_min(A + λI)``: ``eig_lower + λ`` for a
    PSD operator, the certified estimate below for an indefinite one.

    **Indefinite operators** (``psd=False``): the setup estimates the lower end of the
    spectrum (``lanczos_steps`` Lanczos steps; the smallest Ritz value is an *upper* bound on
    ``λ_min``, so it is widened by the residual and ``safety``; exact from structure when
    small, :mod:`invhvp.solvers.curvature`), reports it in ``info["lower_end"]`` and uses it in
    the error bound.  If ``lower + λ <= 0`` the status is ``NONPOSITIVE_CURVATURE`` with advice
    (the iteration still runs, unpreconditioned).

    **Products**: a :class:`~invhvp.LowRankPlusIdentity` with ``d <= n`` is iterated with its
    ``d×d`` Gram, formed once in the setup (``info["products"]``); the true residual behind
    the status always uses the operator itself.

    Cost per iteration: one operator product with the active columns, one preconditioner
    application, ``O(dk)`` vector work.

    Parameters
    ----------
    rtol, atol : float
        Relative and absolute residual tolerances (scipy's meaning).
    maxiter : int, optional
        Iteration limit; default ``10·d``.
    preconditioner : None, "jacobi", "nystrom", Preconditioner, Operator or callable
        An approximation of ``(A + λI)⁻¹`` (SPD), built once per block by the inverse
        (see :mod:`invhvp.solvers.precond`); ``"nystrom"`` is the adaptive randomized
        Nyström preconditioner (:class:`~invhvp.NystromPreconditioner`), the choice of
        ``solver=None`` for matrix-free operators.
    x0 : array, optional
        Initial guess, shape ``(d,)`` or ``(d, k)`` like the right-hand sides it is used with.
    callback : callable, optional
        ``callback(X)`` after every iteration with the current ``(d, k)`` iterate.
    record_history : bool, default False
        Store the recursive residual norms (``(n_iter+1, k)``) in ``info["residual_history"]``.
    per_block : bool, default True
        On a :class:`~invhvp.BlockDiagonal`, run CG on each block (block ``l`` meets
        ``max(rtol·‖b_l‖, atol/√L)``, so ``‖r‖ <= sqrt(rtol²‖b‖² + atol²)``, within √2 of the joint
        rule ``max(rtol‖b‖, atol)``); a user operator or
        callable preconditioner, a callback or ``record_history`` make it joint.
    max_restarts : int, default 2
        Restarts from the true residual when the recursive one has drifted.
    lanczos_steps : int, default 30
        Lanczos steps of the lower-end estimate for ``psd=False`` operators.
    safety : float, default 1.25
        Margin factor of that estimate.

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
    max_restarts: int = 2
    lanczos_steps: int = 30
    safety: float = 1.25
    name = "cg"

    def __post_init__(self):
        C.real(self.rtol, "rtol", minimum=0.0)
        C.real(self.atol, "atol", minimum=0.0)
        C.integer(self.maxiter, "maxiter", minimum=1, optional=True)
        C.integer(self.max_restarts, "max_restarts", minimum=0)
        C.integer(self.lanczos_steps, "lanczos_steps", minimum=1)
        C.real(self.safety, "safety", minimum=1.0)
        C.flag(self.record_history, "record_history")
        C.flag(self.per_block, "per_block")
        as_preconditioner(self.preconditioner)  # validates
        if self.callback is not None and not callable(self.callback):
            raise InputError(f"callback: expected a callable, got {type(self.callback).__name__}")

    def splits_blocks(self) -> bool:
        return bool(
            self.per_block
            and not isinstance(as_preconditioner(self.preconditioner), Fixed)
            and self.callback is None
            and not self.record_history
        )

    def _per_block(self, op, rng=None):
        L = op.n_blocks
        if self.x0 is not None:  # validated against the whole operator before it is split
            Bk.check_compatible(self.x0, xp=op.xp, dtype=op.dtype, device=op.device, name="x0")
            if self.x0.ndim not in (1, 2) or int(self.x0.shape[0]) != op.size:
                raise ShapeError(f"x0: expected {op.size} rows like the operator, got shape {tuple(self.x0.shape)}")
        x0s = op.split(self.x0) if self.x0 is not None else [None] * L
        return [(replace(self, atol=self.atol / math.sqrt(L), x0=x0), None) for x0 in x0s]

    def _factor(self, counted, damping, rng=None):
        op = counted.op
        lower = None
        if not op.psd:
            lam = smallest_damping(damping)
            lower = lower_end(
                counted,
                lam,
                as_generator(0 if rng is None else rng),
                steps=self.lanczos_steps,
                safety=self.safety,
            )
        fast, how = fast_operator(op, counted)
        p = as_preconditioner(self.preconditioner)
        applied, note = None, None
        if p is not None and (lower is None or lower["certified"]):
            try:
                applied = p.build_with_lower(fast, damping, rng, None if lower is None else lower["lower"])
                counted.add(applied.n_matvec)
            except NonFiniteError as exc:  # the iteration reports NONFINITE with the result, not an exception
                note = f"preconditioner not built: {exc}"
        inv = CGInverse(self, counted, damping, applied, fast, how, lower)
        if note:
            inv.info["preconditioner"] = "none"
            inv.info["preconditioner_note"] = note
        return inv


class CGInverse(Inverse):
    """CG with its preconditioner built once; each solve runs the iteration."""

    kind = "iterative"

    def __init__(
        self, solver: CG, counted, damping, applied, fast=None, products="operator products", lower=None
    ):
        pname = "none" if applied is None else applied.name
        info = {"method": "cg", "preconditioner": pname, "rtol": solver.rtol, "atol": solver.atol}
        if applied is not None:
            info["preconditioner_info"] = applied.info
        info["products"] = products
        super().__init__(solver, counted, damping, info)
        self.applied = applied
        self._prod = counted if fast is None or fast is counted.op else Counted(fast, counted.counter)
        self.lower = lower
        if lower is not None:
            self.info["lower_end"] = lower
            if not lower["certified"]:
                lam = smallest_damping(damping)
                self.setup_status = Status.NONPOSITIVE_CURVATURE
                self.info["advice"] = nonpositive_advice(lower, lam, "CG")
                if solver.preconditioner is not None:
                    self.info["preconditioner"] = (
                        "none (not built: A + damping·I is not certified positive definite)"
                    )

    def lam_lower(self) -> float | None:
        if self.lower is None:
            return super().lam_lower()
        lam = smallest_damping(self.damping)
        if not self.lower["certified"]:
            return None
        return self._less_rounding(self.lower["lower"] + lam)  # the estimated lower end

    def _apply(self, B):
        s, op, xp = self.solver, self.operator, self.operator.xp
        d, k = B.shape
        maxiter = 10 * d if s.maxiter is None else s.maxiter
        lam = self._lam_array()
        X = _x0(s.x0, B, op)
        status = np.full(k, Status.MAX_ITER, dtype=object)
        iters = np.zeros(k, dtype=np.int64)
        history = [] if s.record_history else None
        # CG is linear in b: run it on unit-norm columns (norms in float64), so that entries near
        # 1e±30 in float32 neither underflow nor overflow when squared; scale back at the end
        # (scaled by powers of two, so that scaling back is exact: the residual of the unit-norm
        # solve, times the scale, is the residual of the returned solution)
        bn = col_norms64(B)
        sc = np.where(bn > 0, np.exp2(np.round(np.log2(np.where(bn > 0, bn, 1.0)))), 1.0)
        scale = xp.asarray(sc, dtype=B.dtype, device=Bk.device_of(B))[None, :]
        B = B / scale
        X = None if X is None else X / scale
        # iterate to half the tolerance, so that the check's rounding allowance fits (docs/theory.md §7.4)
        tol_h = 0.5 * np.maximum(s.rtol * (bn > 0) * (bn / sc), s.atol / sc)
        R = B if X is None else B - (self._prod.matmat(X) + lam * X)
        X = xp.zeros((d, k), dtype=B.dtype, device=Bk.device_of(B)) if X is None else X
        # float32 with float64 products available: the true residual in float64 (docs/theory.md §7.2)
        lam64 = self._lam_array(float64=True) if Bk.eps(op.dtype) > 1e-10 else None
        total, restarts, cols, R64 = 0, 0, np.arange(k), None
        while True:
            X, used = self._iterate(X, R, lam, tol_h, cols, status, iters, history, maxiter - total, (scale, sc))
            total += used
            # the true residual: the claim a status makes (docs/theory.md §7)
            R64 = None if lam64 is None else residual64(op, lam64, B, X)
            if R64 is None:  # no float64 products (e.g. MatrixFree): the residual in working precision
                lam64 = None
                R = B - (op._matmat(X) + lam * X)
                rn = Bk.to_host(xp.linalg.vector_norm(R, axis=0))
            else:
                R, rn = xp.astype(R64, B.dtype), col_norms64(R64)
            miss = ~(rn <= tol_h) & np.array([st is Status.SUCCESS for st in status])
            if not miss.any() or restarts >= s.max_restarts or total >= maxiter:
                # out of restarts: a column between tol/2 and tol still meets the tolerance; the
                # check decides it with the residual's rounding allowance
                fail = miss & ~(rn <= 2.0 * tol_h)
                status[fail] = Status.MAX_ITER if total >= maxiter else Status.INACCURATE
                break
            restarts += 1
            self._counted.add(k)  # that residual is the restart's, not the final check: solver work
            cols = np.flatnonzero(miss)
            status[cols] = Status.MAX_ITER
        X = X * scale
        if R64 is None:
            R, r_u = R * scale, None
        else:
            R, r_u = R64 * xp.asarray(sc, dtype=xp.float64, device=Bk.device_of(B))[None, :], EPS64
        worst = Status.worst(status.tolist())
        info = {
            "maxiter": maxiter,
            "iterations_per_column": iters,
            "column_status": [st.value for st in status],
            "restarts": restarts,
        }
        if history is not None:
            info["residual_history"] = np.stack(history)
        if worst is Status.NONPOSITIVE_CURVATURE:
            info["advice"] = (
                "CG met non-positive curvature: A + damping·I is not positive definite. "
                "Increase damping, or use a Gauss-Newton operator instead of an indefinite Hessian."
            )
        elif worst in (Status.MAX_ITER, Status.INACCURATE):
            info["advice"] = (
                "CG did not reach its tolerance on the true residual: raise maxiter, add damping, use a "
                "preconditioner (e.g. preconditioner='nystrom'), or float64 if rtol is near the precision limit; "
                "if restarts keep missing, the operator's products may be random (a model in train mode with "
                "dropout: call model.eval())"
            )
        status = Status.worst([worst, self.setup_status])  # e.g. an uncertified indefinite operator
        if r_u is not None:
            info["check_precision"] = "float64"
        return Outcome(x=X, status=status, n_iter=total, info=info, residual=R, check_matvec=k, residual_u=r_u)

    def _iterate(self, X, R, lam, tol_h, cols, status, iters, history, budget, scales):
        """CG on columns ``cols`` of ``X`` from residual ``R`` (restart); updates status/iters in place.

        Works on unit-norm columns; ``scales`` = (device row vector, host vector) of the column
        norms, used only for what users see (callback, residual history).
        """
        scale, sc = scales
        s, xp, minv = self.solver, self.operator.xp, self.applied
        idx = np.asarray(cols)
        keep = np.zeros(X.shape[1], dtype=bool)
        keep[idx] = True
        Ra, Xa, tola_h = _take(xp, R, keep), _take(xp, X, keep), tol_h[keep]
        rn = Bk.to_host(xp.linalg.vector_norm(Ra, axis=0))
        done = rn <= tola_h
        status[idx[done]] = Status.SUCCESS
        if history is not None:
            full = np.zeros(X.shape[1]) if not history else history[-1].copy()
            full[idx] = rn * sc[idx]
            history.append(full)
        if done.all():
            return X, 0
        idx, act = idx[~done], ~done
        Ra, Xa, tola_h = _take(xp, Ra, act), _take(xp, Xa, act), tola_h[act]
        Z = Ra if minv is None else minv(Ra)
        P, rz = Z, xp.sum(Ra * Z, axis=0)
        it = 0
        while idx.size and it < budget:
            it += 1
            AP = self._prod.matmat(P) + lam * P
            pAp = xp.sum(P * AP, axis=0)
            good = (pAp > 0) & xp.isfinite(pAp)
            alpha = xp.where(good, rz / xp.where(good, pAp, xp.ones_like(pAp)), xp.zeros_like(pAp))
            Xa = Xa + alpha * P
            Ra = Ra - alpha * AP
            # one device-to-host transfer per iteration: curvature and residual norms together
            pAp_h, rn = Bk.to_host(xp.stack([pAp, xp.linalg.vector_norm(Ra, axis=0)]))
            iters[idx] += 1
            nonfin_c = ~np.isfinite(pAp_h)
            bad_c = ~(pAp_h > 0) & ~nonfin_c
            nonfin = ~np.isfinite(rn) | nonfin_c
            conv = (rn <= tola_h) & ~bad_c & ~nonfin
            status[idx[conv]] = Status.SUCCESS
            status[idx[bad_c]] = Status.NONPOSITIVE_CURVATURE
            status[idx[nonfin & ~bad_c]] = Status.NONFINITE
            fin = conv | bad_c | nonfin
            if history is not None:
                full = history[-1].copy()
                full[idx] = rn * sc[idx]
                history.append(full)
            if fin.any() or s.callback is not None:
                X = _scatter(xp, X, Xa, idx)
            if s.callback is not None:
                s.callback(X * scale)
            if fin.any():
                keep = ~fin
                idx = idx[keep]
                if not idx.size:
                    break
                Xa, Ra, P, rz = (_take(xp, Xa, keep), _take(xp, Ra, keep), _take(xp, P, keep),
                                 _take(xp, rz, keep, vec=True))
                tola_h = tola_h[keep]
            Z = Ra if minv is None else minv(Ra)
            rz_new = xp.sum(Ra * Z, axis=0)
            P = Z + (rz_new / rz) * P
            rz = rz_new
        if idx.size:
            X = _scatter(xp, X, Xa, idx)
        return X, it

    def _verify(self, out, chk):
        """SUCCESS when the true residual, with its rounding allowance δ, meets the tolerance."""
        s = self.solver
        tol = np.maximum(s.rtol * chk.b, s.atol)
        if np.all(chk.r + chk.delta <= tol):
            return Status.SUCCESS, {}
        # the residual a solution rounded to the working precision can attain (docs/theory.md §7.2)
        floor = Bk.eps(self.operator.dtype) * (chk.b + self.norm_estimate_for_check() * chk.x)
        if np.all((chk.r <= tol) | (chk.r <= 10.0 * floor)):
            worst = float(np.max(np.maximum(chk.delta, floor) / np.maximum(chk.b, 1e-300)))
            return Status.INACCURATE, {
                "advice": (
                    f"the tolerance is below what {self.operator.dtype} can attain or verify: the residual's "
                    f"rounding error is about {worst:.2g}·‖b‖ (docs/theory.md §7.2); loosen rtol/atol, add "
                    "damping, or use float64"
                )
            }
        return (out.status if out.status is not Status.SUCCESS else Status.INACCURATE), {}


def _x0(x0, B, op):
    if x0 is None:
        return None
    Bk.check_compatible(x0, xp=op.xp, dtype=op.dtype, device=op.device, name="x0")
    Bk.check_finite(op.xp, x0, "x0")
    if x0.ndim == 1 and B.shape[1] == 1 and x0.shape[0] == B.shape[0]:
        return op.xp.asarray(x0[:, None], copy=True)
    if tuple(x0.shape) != tuple(B.shape):
        raise ShapeError(f"x0: expected shape {tuple(B.shape)} like the right-hand side, got {tuple(x0.shape)}")
    return op.xp.asarray(x0, copy=True)
