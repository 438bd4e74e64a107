"""Inverses you factor once and apply many times, and the residual check behind every status.

:func:`invhvp.inverse` returns an :class:`Inverse`: the solver's one-time work is done, and
``inv.solve(rhs)`` / ``inv @ rhs`` apply it to new right-hand sides.  The quadratic forms that
influence functions need are methods too: :meth:`Inverse.quad` (``L·inv·Rᵀ``) and
:meth:`Inverse.quad_diag` (``diag(G·inv·Gᵀ)``), with closed forms for the operator's own
per-sample factor in the solver's module and a generic fallback through :meth:`Inverse.solve`.

What a status means, and the residual test behind it: docs/theory.md §7.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .. import _backend as Bk
from .. import _checks as C
from .._arrays import col_norms64, power_norm, row_chunks, rows_per_chunk
from ..errors import ConvergenceError, ShapeError, UnsupportedOperatorError
from ..result import SolveResult, Status
from .base import Counted, Outcome

__all__ = ["Inverse", "Check", "FAILURE_POLICIES", "check_rhs"]

FAILURE_POLICIES = ("raise", "warn", "ignore")


def smallest_damping(damping) -> float:
    """``λ`` of a scalar damping, the smallest ``λ_l`` of a per-block tuple (what a lower bound uses)."""
    return float(min(damping)) if isinstance(damping, tuple) else float(damping)


class Check:
    """Float64 column norms of a solve: ``‖b‖``, ``‖x‖``, ``‖r‖`` and the rounding allowance.

    ``delta = u·(2‖b‖ + ‖r‖ + 2‖A + λI‖·‖x‖)`` estimates (to first order) the rounding error of
    the residual ``r = b − (A + λI)x`` computed in working precision ``u``: the product
    ``(A + λI)x`` carries an error of order ``u·‖A + λI‖·‖x‖``, which dominates when ``x`` lies in
    the small eigen-directions (docs/theory.md §7.2).  Bounds below add it, so they are never 0,
    and a tolerance below it cannot be verified.
    """

    __slots__ = ("b", "x", "r", "delta", "u")

    def __init__(self, B, X, R, u: float, norm: float):
        self.b, self.x, self.r = col_norms64(B), col_norms64(X), col_norms64(R)
        self.u = u
        self.delta = u * (2.0 * self.b + self.r + 2.0 * norm * self.x)

    def error_bound(self, lam_lower: float | None):
        """``‖x − x*‖ <= (‖r‖ + δ)/λ_min(A + λI)`` per column, when a positive lower bound is known."""
        if lam_lower is None or not lam_lower > 0.0:
            return None
        return (self.r + self.delta) / lam_lower


def _finite(xp, X) -> bool:
    return math.isfinite(float(xp.sum(X))) or bool(xp.all(xp.isfinite(X)))


def _apply_policy(status: Status, msg: str, on_failure: str, result=None):
    if status is Status.SUCCESS:
        return
    if on_failure == "raise":
        raise ConvergenceError(msg, result)
    if on_failure == "warn":
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


class Inverse:
    """``(A + λI)⁻¹`` as a solver applies it, after its one-time work.

    Create with :func:`invhvp.inverse`.  ``inv.solve(rhs)`` returns a
    :class:`~invhvp.SolveResult` with a verified status; ``inv @ rhs`` returns the solution
    array (and raises :class:`~invhvp.errors.ConvergenceError` unless the status is SUCCESS
    or the inverse was created with ``on_failure="warn"/"ignore"``).  Arrays keep their type,
    dtype and device.

    Attributes
    ----------
    operator : Operator
    damping : float or tuple of float
    solver : Solver
    info : dict
        What the one-time work did: ``method``, costs, estimates; ``setup_matvec``.
    setup_status : Status
        ``SUCCESS``, or e.g. ``INACCURATE`` for an exact factorization whose condition
        estimate says the working precision cannot deliver ``rtol`` (``info["advice"]``).
    """

    #: "direct" (accuracy known at setup), "iterative" or "approximation"
    kind = "direct"
    #: whether x is computed (False for the identity, which returns b): underflow is then checked
    computes_x = True

    def __init__(self, solver, counted: Counted, damping, info: dict | None = None):
        self.solver = solver
        self._counted = counted
        self.damping = damping
        self.info = dict(info or {})
        self.setup_status = Status.SUCCESS
        self.on_failure = "raise"
        self.setup_matvec = 0

    # ----------------------------------------------------------------- to implement
    def _apply(self, B) -> Outcome:  # pragma: no cover - abstract
        raise NotImplementedError

    def _verify(self, out: Outcome, chk: Check) -> tuple[Status, dict]:
        """Status of a solve from the true-residual norms (default: finite bound = SUCCESS)."""
        return out.status, {}

    def _quad_own(self, T, chunk_size):
        """Closed form of ``T·inv·Uᵀ`` with the operator's own factor ``U`` (None: use the fallback)."""
        return None

    def _diag_own(self, chunk_size):
        """Closed form of ``diag(U·inv·Uᵀ)`` with the operator's own factor (None: fallback)."""
        return None

    # ----------------------------------------------------------------- properties
    @property
    def operator(self):
        return self._counted.op

    @property
    def size(self) -> int:
        return self.operator.size

    def lam_lower(self) -> float | None:
        """A lower bound on ``λ_min(A + λI)`` (``None`` when unknown or not positive).

        The operator's declared lower end (0 for PSD, the shift of a low-rank operator) less a
        rounding allowance ``10·u·‖A + λI‖``: data rounded to float32 can be indefinite by that much.
        """
        lo = self.operator.eig_lower()
        if lo is None:
            return None
        lam = smallest_damping(self.damping)
        return self._less_rounding(lo + lam)

    def _less_rounding(self, lower: float) -> float | None:
        """``lower − 10·u·‖A + λI‖`` when positive, else ``None`` (docs/theory.md §7).

        The one rounding allowance of every ``lam_lower``: data rounded to precision ``u`` can
        move the damped operator's lower end by about ``u·‖A + λI‖``; 10× covers the products.
        """
        v = float(lower) - 10.0 * Bk.eps(self.operator.dtype) * self.norm_estimate_for_check()
        return v if v > 0.0 else None

    def norm_estimate_for_check(self) -> float:
        """An estimate of ``‖A + λI‖₂`` (power iteration, once per inverse, a few products)."""
        if getattr(self, "norm_estimate", None) is None:
            op = self.operator
            lam = self._lam_array()
            self.norm_estimate = power_norm(op.xp, lambda v: op._matmat(v) + lam * v, op.size, op.dtype, op.device)
            self._norm_products = 6
        return self.norm_estimate

    def _lam_array(self, float64: bool = False):
        """The damping as a float, or a ``(d, 1)`` column (per-block damping), in the operator's dtype or float64."""
        if not isinstance(self.damping, tuple):
            return float(self.damping)
        if len(set(self.damping)) == 1:
            return float(self.damping[0])
        op = self.operator
        return op.per_coordinate(self.damping, dtype=op.xp.float64 if float64 else None)[:, None]

    # ----------------------------------------------------------------- solving
    def _solve2d(self, B, check: bool):
        """``(X, status, n_iter, n_matvec, info, residual norms or None, check matvecs)``."""
        op, xp = self.operator, self.operator.xp
        n0 = self._counted.n
        out = self._apply(B)
        n_mv = self._counted.n - n0
        info = dict(out.info)
        status = out.status
        X = out.x
        if not _finite(xp, X):
            info.setdefault("advice", "the solution contains NaN or infinity: check the operator's products")
            return X, Status.NONFINITE, out.n_iter, n_mv, info, None, 0
        if not check:
            info["checked"] = False
            return X, Status.worst([status, self.setup_status]), out.n_iter, n_mv, self._with_setup_advice(info), None, 0
        n_check = out.check_matvec
        R = out.residual
        if R is None:
            R = B - (op._matmat(X) + self._lam_array() * X)
            n_check = int(B.shape[1])
        first = getattr(self, "norm_estimate", None) is None
        u_chk = Bk.eps(op.dtype) if out.residual_u is None else out.residual_u
        chk = Check(B, X, R, u_chk, self.norm_estimate_for_check())
        n_check += getattr(self, "_norm_products", 0) if first else 0
        if not np.all(np.isfinite(chk.r)):
            info.setdefault("advice", "the residual is NaN or infinite: the operator's products are not finite")
            return X, Status.NONFINITE, out.n_iter, n_mv, info, chk.r, n_check
        # a solution at the bottom of the dtype's range (subnormal entries) has lost its precision
        tiny = Bk.tiny(op.dtype) / math.sqrt(Bk.eps(op.dtype))
        if np.any((chk.x < tiny) & (chk.b > 0.0)) and self.computes_x:
            prior = info.get("advice")
            info["advice"] = (prior + "; " if prior else "") + (
                f"a solution column has norm below {tiny:.2g}, at the bottom of {op.dtype}'s range (subnormal or "
                "zero entries lose their precision): rescale the problem or use float64"
            )
            status = Status.worst([status, Status.INACCURATE])
            return X, status, out.n_iter, n_mv, self._with_setup_advice(info), chk.r, n_check
        status2, extra = self._verify(out, chk)
        run_advice = extra.get("advice")
        info.update(extra)
        if run_advice and "advice" in out.info and out.info["advice"] != run_advice:
            info["advice"] = out.info["advice"] + "; " + run_advice
        bound = chk.error_bound(self.lam_lower())
        if bound is not None:
            info["error_bound"] = bound
        info["checked"] = True
        return X, Status.worst([status, status2]), out.n_iter, n_mv, self._with_setup_advice(info), chk.r, n_check

    def _with_setup_advice(self, info):
        setup = self.info.get("advice") if self.setup_status is not Status.SUCCESS else None
        if setup and setup not in info.get("advice", ""):
            info["advice"] = setup + ("; " + info["advice"] if info.get("advice") else "")
        return info

    def solve(self, rhs, *, on_failure: str | None = None, check: bool = True) -> SolveResult:
        """Apply the inverse to ``rhs`` (``(d,)`` or ``(d, k)``) and verify the result.

        Parameters
        ----------
        rhs : array
            Same array library, dtype and device as the operator; finite.
        on_failure : {"raise", "warn", "ignore"}, optional
            Policy when the status is not SUCCESS; default: the inverse's own.
        check : bool, default True
            Compute the true residual ``b − (A + λI)x`` (one product with the ``k``
            columns, reported in ``info["check_matvec"]``) and verify the solver's
            contract against it (docs/theory.md §7).  ``False`` skips it: the status then
            reflects only what the solver saw itself, ``residual_norm`` is ``None``.
        """
        policy = self.on_failure if on_failure is None else C.choice(on_failure, "on_failure", FAILURE_POLICIES)
        check = C.flag(check, "check")
        B = check_rhs(self.operator, rhs)
        X, status, n_iter, n_mv, info, rnorm, n_check = self._solve2d(B, check)
        info = {**self.info, **info, "damping": self.damping, "setup_matvec": self.setup_matvec}
        info["check_matvec"] = n_check
        if rhs.ndim == 1:  # every per-column entry becomes a scalar, like x and residual_norm
            X = X[:, 0]
            rnorm = None if rnorm is None else rnorm[0]
            k = int(B.shape[1])
            for key, val in info.items():
                if isinstance(val, np.ndarray) and val.shape == (k,) and key not in ("column_status",):
                    info[key] = val[0]
        res = SolveResult(x=X, status=status, n_iter=n_iter, n_matvec=n_mv, residual_norm=rnorm, info=info)
        msg = f"{self.solver.name} solve ended with status {status.value}"
        if "advice" in info:
            msg += f": {info['advice']}"
        _apply_policy(status, msg, policy, res)
        return res

    def __matmul__(self, rhs):
        return self.solve(rhs).x

    # ----------------------------------------------------------------- quadratic forms
    def quad(self, left, right=None, *, side="auto", chunk_size=None, on_failure=None, results=None, progress=None):
        r"""``left · (A + λI)⁻¹ · rightᵀ`` (``m×n``), the kernel of influence matrices.

        ``left`` is ``(m, d)`` (rows = test gradients), ``right`` is ``(n, d)`` or ``None``
        for the operator's own per-sample factor (rows of a :class:`~invhvp.LowRankPlusIdentity`;
        for a :class:`BlockInverse`, per-block sequences).  With ``right=None`` the solver's
        closed form is used when it has one (exact: push-through Woodbury; DataInf: its three
        products or Gram route; identity: one product); otherwise the smaller side's rows are
        solved in chunks of ``chunk_size`` columns (``side`` forces ``"left"`` or ``"right"``)
        and multiplied by the other side.  Reports of those solves go to ``results`` (a list)
        with ``x=None``; ``progress(done, total)`` is called after each block.  Influence is
        ``−quad`` (docs/theory.md §1).
        """
        policy = self.on_failure if on_failure is None else C.choice(on_failure, "on_failure", FAILURE_POLICIES)
        C.choice(side, "side", ("auto", "left", "right"))
        T = self._rows_arg(left, "left")
        if right is None:
            out = self._quad_own(T, chunk_size)
            if out is not None:
                self._closed_form_policy(policy, results, "quad")
                return _done(out, progress)
            R = self._own_rows()
        else:
            R = self._rows_arg(right, "right")
        return _done(self._quad_generic(T, R, side, chunk_size, policy, results), progress)

    def quad_diag(self, rows=None, *, chunk_size=None, on_failure=None, results=None, progress=None):
        """``diag(G · (A + λI)⁻¹ · Gᵀ)`` for rows ``G`` (default: the operator's own factor)."""
        policy = self.on_failure if on_failure is None else C.choice(on_failure, "on_failure", FAILURE_POLICIES)
        if rows is None:
            out = self._diag_own(chunk_size)
            if out is not None:
                self._closed_form_policy(policy, results, "quad_diag")
                return _done(out, progress)
            G = self._own_rows()
        else:
            G = self._rows_arg(rows, "rows")
        xp = self.operator.xp
        parts = []
        for sl in row_chunks(int(G.shape[0]), rows_per_chunk(self.size, chunk_size)):
            Gc = G[sl, :].T
            res = self.solve(Gc, on_failure=policy, check=self.kind != "direct")
            _record(results, res)
            parts.append(xp.sum(res.x * Gc, axis=0))
        return _done(xp.concat(parts, axis=0), progress)

    def _closed_form_policy(self, policy, results, what):
        """A closed form has no residual: its status is the setup's (e.g. an exact factor's condition)."""
        if results is not None:
            results.append(SolveResult(None, self.setup_status, 0, 0, None, {**self.info, "closed_form": what}))
        msg = f"{self.solver.name}: {self.setup_status.value}: {self.info.get('advice', '')}"
        _apply_policy(self.setup_status, msg, policy)

    def _quad_generic(self, T, R, side, chunk_size, policy, results):
        xp = self.operator.xp
        m, n = int(T.shape[0]), int(R.shape[0])
        solve_left = side == "left" or (side == "auto" and m <= n)
        S, other = (T, R) if solve_left else (R, T)
        out = xp.zeros((m, n), dtype=T.dtype, device=Bk.device_of(T))
        for sl in row_chunks(int(S.shape[0]), rows_per_chunk(self.size, chunk_size)):
            res = self.solve(S[sl, :].T, on_failure=policy, check=self.kind != "direct")
            _record(results, res)
            P = other @ res.x  # (other rows) × chunk
            if solve_left:
                out[sl, :] = P.T
            else:
                out[:, sl] = P
        return out

    def _own_rows(self):
        U = getattr(self.operator, "factor", None)
        if U is None:
            raise UnsupportedOperatorError(
                f"right/rows: {type(self.operator).__name__} has no per-sample factor; pass the rows explicitly"
            )
        return U

    def _rows_arg(self, x, name):
        op = self.operator
        Bk.check_compatible(x, xp=op.xp, dtype=op.dtype, device=op.device, name=name)
        if x.ndim != 2 or int(x.shape[1]) != op.size:
            raise ShapeError(f"{name}: expected shape (rows, {op.size}), got {tuple(x.shape)}")
        return x

    def __repr__(self) -> str:
        return f"Inverse({self.solver.name}, {self.info.get('method', '?')}, size={self.size}, damping={self.damping})"


def _done(out, progress):
    if progress is not None:
        progress(1, 1)
    return out


def _record(results, res: SolveResult):
    if results is not None:
        results.append(SolveResult(None, res.status, res.n_iter, res.n_matvec, res.residual_norm, res.info))


def check_rhs(op, rhs):
    """Validate a right-hand side against ``op``; return it as ``(d, k)``."""
    Bk.check_compatible(rhs, xp=op.xp, dtype=op.dtype, device=op.device, name="rhs")
    if rhs.ndim not in (1, 2) or rhs.shape[0] != op.size or (rhs.ndim == 2 and rhs.shape[1] == 0):
        raise ShapeError(
            f"rhs: expected shape ({op.size},) or ({op.size}, k) with k >= 1 for an operator of "
            f"size {op.size}, got {tuple(rhs.shape)}"
        )
    Bk.check_finite(op.xp, rhs, "rhs")
    return rhs[:, None] if rhs.ndim == 1 else rhs
