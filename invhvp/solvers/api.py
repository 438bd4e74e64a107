"""The ``solve`` front end: validation, automatic solver choice, residuals, failure policy."""

from __future__ import annotations

import warnings

from .. import _backend as Bk
from ..errors import ConvergenceError, DampingError, DTypeError, InputError, ShapeError
from ..operators import BlockDiagonal, Dense, LowRankPlusIdentity, MatrixFree, Operator
from ..result import SolveResult, Status
from .base import Counted, Solver, damping_array
from .cg import CG
from .exact import Exact

__all__ = ["solve", "choose_solver"]

#: Dense blocks up to this size are solved exactly by default (Cholesky is O(d³)).
AUTO_DENSE_MAX = 4096


def solve(operator, rhs, solver: Solver | None = None, *, damping=0.0, on_failure: str = "raise"):
    r"""Solve ``(A + λI) x = b`` and report how well it went.

    Parameters
    ----------
    operator : invhvp operator
        ``Dense``, ``BlockDiagonal``, ``LowRankPlusIdentity``, ``MatrixFree`` (or a subclass).
    rhs : array, shape (d,) or (d, k)
        numpy array or torch tensor of the operator's array library, dtype and device.
    solver : Solver, optional
        ``Exact()``, ``CG(...)``, ... ``None`` chooses automatically (see :func:`choose_solver`);
        the choice and the reason are in ``result.info["auto"]``.
    damping : float or sequence of float, default 0.0
        ``λ >= 0``.  For a :class:`BlockDiagonal`, one value per block is accepted.
    on_failure : {"raise", "warn", "ignore"}
        What to do when the status is not ``SUCCESS``: raise
        :class:`~invhvp.errors.ConvergenceError` (carrying the result), warn, or return quietly.

    Returns
    -------
    SolveResult
        ``x`` has the type, device, dtype and shape of ``rhs``.  ``residual_norm`` is the
        true residual per column.  When the operator is PSD and ``λ > 0``,
        ``info["error_bound"]`` holds ``‖r‖/λ >= ‖x − x*‖`` per column.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> A = ih.Dense(np.array([[2.0, 1.0], [1.0, 2.0]]))
    >>> res = ih.solve(A, np.array([1.0, 0.0]), damping=1.0)
    >>> res.x, res.status.value, res.info["method"]
    (array([ 0.375, -0.125]), 'success', 'cholesky')
    """
    if not isinstance(operator, Operator):
        raise DTypeError(
            f"operator: expected an invhvp operator (Dense, LowRankPlusIdentity, BlockDiagonal, "
            f"MatrixFree), got {type(operator).__name__}; wrap a matrix with invhvp.Dense(matrix)"
        )
    if on_failure not in ("raise", "warn", "ignore"):
        raise InputError(f"on_failure: expected 'raise', 'warn' or 'ignore', got {on_failure!r}")
    B = _check_rhs(operator, rhs)
    lam = check_damping(operator, damping)
    info: dict = {}
    if solver is None:
        solver, reason = choose_solver(operator)
        info["auto"] = reason
    elif not isinstance(solver, Solver):
        raise DTypeError(
            f"solver: expected an invhvp solver instance such as invhvp.CG(), got {solver!r}"
        )
    solver._check_supported(operator)

    counted = Counted(operator)
    out = solver._run(counted, B, lam)
    X = out.x
    status = out.status
    xp = operator.xp
    finite = bool(xp.all(xp.isfinite(X)))
    if not finite and status is Status.SUCCESS:
        status = Status.NONFINITE
    R = B - (operator._matmat(X) + damping_array(operator, lam) * X)
    rnorm = xp.linalg.vector_norm(R, axis=0)
    info.update(out.info)
    info["solver"] = solver.name
    info["damping"] = lam
    lam_min = min(lam) if isinstance(lam, tuple) else lam
    if operator.psd and lam_min > 0:
        bound = rnorm / lam_min
        info["error_bound"] = bound[0] if rhs.ndim == 1 else bound
    if rhs.ndim == 1:
        X, rnorm = X[:, 0], rnorm[0]
    result = SolveResult(
        x=X, status=status, n_iter=out.n_iter, n_matvec=counted.n, residual_norm=rnorm, info=info
    )
    if status is not Status.SUCCESS:
        msg = f"{solver.name} solve ended with status {status.value}"
        if "advice" in info:
            msg += f": {info['advice']}"
        if on_failure == "raise":
            raise ConvergenceError(msg, result)
        if on_failure == "warn":
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return result


def _check_rhs(op: Operator, rhs):
    Bk.check_compatible(rhs, xp=op.xp, dtype=op.dtype, device=op.device, name="rhs")
    if rhs.ndim not in (1, 2) or rhs.shape[0] != op.size or (rhs.ndim == 2 and rhs.shape[1] == 0):
        raise ShapeError(
            f"rhs: expected shape ({op.size},) or ({op.size}, k) with k >= 1 for an operator of "
            f"size {op.size}, got {tuple(rhs.shape)}"
        )
    Bk.check_finite(op.xp, rhs, "rhs")
    return rhs[:, None] if rhs.ndim == 1 else rhs


def check_damping(op: Operator, damping):
    """Validate ``damping``; return a float or (BlockDiagonal) a tuple of floats."""
    if Bk.is_real_scalar(damping):
        v = float(damping)
        if not (v >= 0.0 and v < float("inf")):
            raise DampingError(f"damping: expected a finite number >= 0, got {v}")
        return v
    try:
        values = [float(v) for v in damping]
    except (TypeError, ValueError):
        raise DampingError(
            f"damping: expected a number or a sequence of numbers, got {type(damping).__name__}"
        ) from None
    if not isinstance(op, BlockDiagonal):
        raise DampingError(
            f"damping: a sequence of {len(values)} values needs a BlockDiagonal operator; "
            f"{type(op).__name__} takes a single number"
        )
    if len(values) != op.n_blocks:
        raise DampingError(
            f"damping: expected one value per block ({op.n_blocks}), got {len(values)} values"
        )
    bad = [i for i, v in enumerate(values) if not (v >= 0.0 and v < float("inf"))]
    if bad:
        raise DampingError(f"damping: block {bad[0]} has {values[bad[0]]}; expected finite values >= 0")
    return tuple(values)


def _exact_is_cheap(op: Operator) -> tuple[bool, str]:
    if isinstance(op, Dense):
        return op.size <= AUTO_DENSE_MAX, f"dense d={op.size}"
    if isinstance(op, LowRankPlusIdentity):
        n, d = op.factor.shape
        m = min(int(n), int(d))
        return m <= AUTO_DENSE_MAX, f"low-rank n={n}, d={d} ({'woodbury' if n < d else 'dense'})"
    if isinstance(op, BlockDiagonal):
        checks = [_exact_is_cheap(b) for b in op.blocks]
        return all(c for c, _ in checks), f"{op.n_blocks} blocks"
    if isinstance(op, MatrixFree):
        return False, f"matrix-free d={op.size}"
    return False, type(op).__name__


def choose_solver(operator: Operator) -> tuple[Solver, str]:
    """The solver ``solve(..., solver=None)`` uses, and why.

    Exact whenever structure makes it cheap: dense blocks up to ``d = 4096`` (Cholesky),
    low-rank-plus-identity blocks whose smaller side ``min(n, d)`` is at most 4096
    (Woodbury when ``n < d``), block-diagonal operators whose blocks all qualify.
    Everything else, matrix-free operators in particular, gets ``CG()`` with its defaults.
    """
    cheap, why = _exact_is_cheap(operator)
    if cheap:
        return Exact(), f"Exact: structure makes a direct solve cheap ({why})"
    return CG(), f"CG: a direct solve is not cheap or not possible ({why})"
