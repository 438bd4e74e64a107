"""Front ends: :func:`inverse` (factor once), :func:`solve` (one use of it), :func:`choose_solver`."""

from __future__ import annotations

from .. import _checks as C
from ..errors import DTypeError, InvhvpError, UnsupportedOperatorError
from ..operators import BlockDiagonal, Operator
from ..operators.convert import from_scipy
from .base import Counted, Solver
from .block import BlockInverse
from .cg import CG
from .exact import Exact, exact_cost
from .inverse import FAILURE_POLICIES, Inverse, check_rhs

__all__ = ["inverse", "solve", "choose_solver", "as_operator"]


def as_operator(operator) -> Operator:
    """``operator`` as an invhvp operator: scipy LinearOperators, sparse matrices and 2-D arrays
    are wrapped (:func:`invhvp.interop.from_scipy`); anything else is a DTypeError."""
    if isinstance(operator, Operator):
        return operator
    return from_scipy(operator)


def choose_solver(operator) -> tuple[Solver, str]:
    """The solver ``solver=None`` uses, and why.

    Exact whenever structure makes it cheap (``exact_cost`` in ``solvers/exact.py``): dense
    blocks up to ``d = 4096`` (Cholesky), low-rank-plus-identity blocks whose smaller side
    ``min(n, d)`` is at most 4096 (Woodbury when ``n < d``), block-diagonal operators whose
    blocks all qualify.  Everything else, matrix-free operators in particular, gets
    ``CG(preconditioner="nystrom")``: an adaptive Nyström sketch per block makes the iteration
    count nearly independent of the damping (:class:`~invhvp.NystromPreconditioner`).
    """
    op = as_operator(operator)
    cost = exact_cost(op)
    if cost is not None:
        return Exact(), f"Exact: structure makes a direct solve cheap (about {cost:.3g} flops)"
    return CG(preconditioner="nystrom"), (
        f"CG with the Nyström preconditioner: no cheap direct solve for {type(op).__name__} of size {op.size}"
    )


def inverse(
    operator, solver: Solver | None = None, *, damping=0.0, on_failure: str = "raise", progress=None
) -> Inverse:
    r"""``(A + λI)⁻¹`` as ``solver`` applies it: do the one-time work, apply it many times.

    Parameters
    ----------
    operator : invhvp operator, scipy LinearOperator, scipy sparse matrix or 2-D array
    solver : Solver, optional
        ``Exact()``, ``CG(...)``, ``DataInf()``, ``LiSSA(...)``, ``Nystrom(rank)``, ``Identity()``; ``None`` chooses
        automatically (:func:`choose_solver`; the reason is in ``inv.info["auto"]``).
    damping : float or sequence of float, default 0.0
        ``λ >= 0``; for a :class:`~invhvp.BlockDiagonal`, one value per block is accepted.
    on_failure : {"raise", "warn", "ignore"}
        Default policy of the inverse's solves when a status is not SUCCESS.
    progress : callable, optional
        ``progress(done, total)`` after each block's one-time work (for progress bars).

    Returns
    -------
    Inverse
        ``inv.solve(rhs)`` → :class:`~invhvp.SolveResult`; ``inv @ rhs`` → array;
        ``inv.quad(T)`` → ``T (A+λI)⁻¹ Uᵀ``; ``inv.quad_diag()``.  A block-diagonal operator
        gives a :class:`~invhvp.solvers.block.BlockInverse` with one inverse per block
        (unless the solver works jointly, e.g. ``CG(per_block=False)``).

    Cost: the solver's one-time work (Exact: the factorization and a condition estimate;
    DataInf: row norms and certificates; CG: its preconditioner; LiSSA: estimates and plan),
    reported in ``inv.info`` and ``inv.setup_matvec``.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> U = np.random.default_rng(0).standard_normal((50, 400))
    >>> inv = ih.inverse(ih.LowRankPlusIdentity(U), ih.Exact(), damping=0.1)
    >>> x1 = inv @ np.ones(400)                     # factor reused by both applies
    >>> x2 = inv.solve(np.ones((400, 3))).x
    >>> bool(np.allclose(x1, x2[:, 0]))
    True
    """
    op = as_operator(operator)
    policy = C.choice(on_failure, "on_failure", FAILURE_POLICIES)
    is_block = isinstance(op, BlockDiagonal)
    lam = C.damping_values(damping, op.n_blocks if is_block else None)
    reason = None
    if solver is None:
        solver, reason = choose_solver(op)
    elif not isinstance(solver, Solver):
        raise DTypeError(f"solver: expected an invhvp solver instance such as invhvp.CG(), got {solver!r}")
    _precheck(solver, op, "operator")  # refuse before any work
    counted = Counted(op)
    leaves = [0, _count_leaves(op, solver)]
    inv = _build(solver, counted, lam, None, _Tick(leaves, progress))
    inv.setup_matvec = counted.n
    inv.on_failure = policy
    if reason is not None:
        inv.info["auto"] = reason
    return inv


def _precheck(solver, op, where):
    if isinstance(op, BlockDiagonal) and solver.splits_blocks():
        for i, b in enumerate(op.blocks):
            _precheck(solver, b, f"blocks[{i}]" if where == "operator" else f"{where}.blocks[{i}]")
        return
    try:
        solver.check_supported(op)
    except UnsupportedOperatorError as exc:
        if where == "operator":
            raise
        raise type(exc)(f"{where}: {exc}") from None


def _renamed(exc, message):
    try:
        return type(exc)(message)
    except TypeError:  # an exception type with another signature: keep it unchanged
        return exc


def _count_leaves(op, solver) -> int:
    if isinstance(op, BlockDiagonal) and solver.splits_blocks():
        return sum(_count_leaves(b, solver) for b in op.blocks)
    return 1


class _Tick:
    def __init__(self, state, progress):
        self.state, self.progress = state, progress

    def __call__(self):
        self.state[0] += 1
        if self.progress is not None:
            self.progress(self.state[0], self.state[1])


def _build(solver, counted, lam, rng, tick):
    """One inverse per block (recursively for nested block-diagonal operators), or one joint inverse."""
    op = counted.op
    if not (isinstance(op, BlockDiagonal) and solver.splits_blocks()):
        inv = solver._factor(counted, lam, rng)
        tick()
        return inv
    lams = lam if isinstance(lam, tuple) else (lam,) * op.n_blocks
    parts = []
    for i, (b, (cfg, r), lb) in enumerate(zip(op.blocks, solver._per_block(op, rng), lams)):
        n0 = counted.n
        try:
            part = _build(cfg, Counted(b, counted.counter), lb, r, tick)
        except InvhvpError as exc:  # name the block; typed errors keep their type
            if str(exc).startswith("blocks["):
                raise
            raise _renamed(exc, f"blocks[{i}]: {exc}") from exc
        part.setup_matvec = counted.n - n0
        parts.append(part)
    return BlockInverse(solver, counted, lams, parts)


def solve(operator, rhs, solver: Solver | None = None, *, damping=0.0, on_failure: str = "raise"):
    r"""Solve ``(A + λI) x = b`` and report how well it went: ``inverse(...).solve(rhs)``.

    Parameters
    ----------
    operator : invhvp operator, scipy LinearOperator, scipy sparse matrix or 2-D array
        ``Dense``, ``BlockDiagonal``, ``LowRankPlusIdentity``, ``MatrixFree`` (or a subclass);
        other inputs are wrapped by :func:`invhvp.interop.from_scipy` (taken as PSD).
    rhs : array, shape (d,) or (d, k)
        numpy array or torch tensor of the operator's array library, dtype and device.
    solver : Solver, optional
        ``None`` chooses automatically (see :func:`choose_solver`).
    damping : float or sequence of float, default 0.0
        ``λ >= 0``; for a :class:`BlockDiagonal`, one value per block is accepted.
    on_failure : {"raise", "warn", "ignore"}
        When the status is not ``SUCCESS``: raise :class:`~invhvp.errors.ConvergenceError`
        (carrying the result), warn, or return quietly.

    Returns
    -------
    SolveResult
        ``x`` has the type, device, dtype and shape of ``rhs``; ``residual_norm`` is the true
        residual per column; the status is verified against it (docs/theory.md §7).

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> A = ih.Dense(np.array([[2.0, 1.0], [1.0, 2.0]]))
    >>> res = ih.solve(A, np.array([1.0, 0.0]), damping=1.0)
    >>> res.x, res.status.value, res.info["method"]
    (array([ 0.375, -0.125]), 'success', 'cholesky')
    """
    op = as_operator(operator)
    C.choice(on_failure, "on_failure", FAILURE_POLICIES)
    check_rhs(op, rhs)  # cheap errors before the one-time work
    return inverse(op, solver, damping=damping, on_failure=on_failure).solve(rhs)
