r"""Influence matrices, self-influence and test-averaged scores from per-block gradients.

Sign convention (THEORY.md §1, DataInf eq. 2 and 5; pyDVL uses the opposite sign):

.. math:: I(z_t, z_i) = -\,g_t^T (G + \lambda I)^{-1} g_i,\qquad
          G = \operatorname{diag}(G_1, \dots, G_L),\; G_l = \tfrac1n U_l^T U_l

summed over blocks ``l``.  **Positive = up-weighting ``z_i`` raises the test loss at
``z_t`` = harmful.**  ``(G_l + λ_l I)⁻¹`` is replaced by whatever the solver applies:
exact (Woodbury), CG, LiSSA, DataInf's closed form, or the identity (Hessian-free).

Gradients are given per block: ``train_grads`` is an ``(n, d)`` array or a sequence of
``(n, d_l)`` arrays, ``test_grads`` likewise ``(m, d_l)``; numpy or torch (any device,
float32/float64, all the same).  ``damping=None`` uses the paper's rule
``λ_l = damping_factor · tr(G_l)/d_l`` (:func:`invhvp.default_damping`).
"""

from __future__ import annotations

from dataclasses import replace

from . import _backend as Bk
from ._arrays import CHUNK_ELEMENTS, row_chunks, row_sq_norms
from .damping import default_damping
from .errors import DampingError, InputError, ShapeError
from .operators import BlockDiagonal, LowRankPlusIdentity
from .solvers.api import choose_solver, solve
from .solvers.base import Solver
from .solvers.datainf import DataInf
from .solvers.exact import Exact
from .solvers.identity import Identity

__all__ = ["influence_matrix", "self_influence", "average_influence"]

#: Largest n×n Gram (elements) the closed forms may hold at once.
GRAM_MAX_ELEMENTS = 1 << 26


# ----------------------------------------------------------------------------- inputs
def _as_blocks(grads, name):
    if grads is None:
        raise InputError(f"{name}: expected an (n, d) array or a non-empty sequence of them, got None")
    blocks = list(grads) if isinstance(grads, (list, tuple)) else [grads]
    if not blocks:
        raise InputError(f"{name}: expected an (n, d) array or a non-empty sequence of them")
    names = [name] if not isinstance(grads, (list, tuple)) else [f"{name}[{i}]" for i in range(len(blocks))]
    for g, nm in zip(blocks, names):
        Bk.check_factor(g, nm)
    return blocks, names


def _prepare(train_grads, test_grads, *, need_test=True):
    if need_test and test_grads is None:
        _as_blocks(None, "test_grads")  # raises InputError naming the argument
    train, tnames = _as_blocks(train_grads, "train_grads")
    first = train[0]
    xp = Bk.namespace(first)
    dtype, device = first.dtype, Bk.device_of(first)
    n = int(first.shape[0])
    for g, nm in zip(train, tnames):
        Bk.check_compatible(g, xp=xp, dtype=dtype, device=device, name=nm)
        if int(g.shape[0]) != n:
            raise ShapeError(
                f"{nm}: has {g.shape[0]} rows, but {tnames[0]} has {n}: one row per training point"
            )
        Bk.check_finite(xp, g, nm)
    test = None
    if test_grads is not None:
        test, vnames = _as_blocks(test_grads, "test_grads")
        if len(test) != len(train):
            raise ShapeError(f"test_grads: expected {len(train)} blocks like train_grads, got {len(test)}")
        m = int(test[0].shape[0])
        for v, g, nm in zip(test, train, vnames):
            Bk.check_compatible(v, xp=xp, dtype=dtype, device=device, name=nm)
            if int(v.shape[1]) != int(g.shape[1]):
                raise ShapeError(f"{nm}: has {v.shape[1]} columns, but the training block has {g.shape[1]}")
            if int(v.shape[0]) != m:
                raise ShapeError(f"{nm}: has {v.shape[0]} rows, but {vnames[0]} has {m}")
            Bk.check_finite(xp, v, nm)
    return xp, train, test


def _damping(train, damping, damping_factor, solver):
    if damping is None:
        lams = default_damping(train, factor=damping_factor)
    elif Bk.is_real_scalar(damping):
        lams = (float(damping),) * len(train)
    else:
        try:
            lams = tuple(float(v) for v in damping)
        except (TypeError, ValueError):
            raise DampingError(
                f"damping: expected None, a number or one number per block, got {type(damping).__name__}"
            ) from None
        if len(lams) != len(train):
            raise DampingError(f"damping: expected one value per block ({len(train)}), got {len(lams)}")
    for i, lam in enumerate(lams):
        if not (lam >= 0.0 and lam < float("inf")):
            raise DampingError(f"damping: block {i} has {lam}; expected a finite number >= 0")
        if lam == 0.0 and isinstance(solver, DataInf):
            raise DampingError(
                f"damping: DataInf needs damping > 0, block {i} has 0 "
                "(all-zero gradients give 0 with the default rule)"
            )
    return lams


def _solver(solver, train):
    if solver is None:
        op = _operator(train)
        solver, _ = choose_solver(op)
    elif not isinstance(solver, Solver):
        raise InputError(
            f"solver: expected an invhvp solver instance such as invhvp.DataInf(), got {solver!r}"
        )
    return solver


def _operator(train):
    ops = [LowRankPlusIdentity(g) for g in train]
    return ops[0] if len(ops) == 1 else BlockDiagonal(ops)


def _rows(d: int, chunk_size) -> int:
    return int(chunk_size) if chunk_size is not None else max(1, CHUNK_ELEMENTS // max(int(d), 1))


def _check_chunk(chunk_size):
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise InputError(f"chunk_size: expected a positive int or None, got {chunk_size!r}")


def _exact_fast(solver, U) -> bool:
    n, d = (int(v) for v in U.shape)
    return (
        isinstance(solver, Exact)
        and solver.woodbury is not False
        and (n < d or solver.woodbury is True)
        and n * n <= GRAM_MAX_ELEMENTS
    )


# ------------------------------------------------------------------- block kernels
def _datainf_route(n, d, m, route):
    if route is not None:
        return route
    gram_flops = n * n * d + m * n * n
    return "gram" if gram_flops < 2 * m * n * d and n * n <= GRAM_MAX_ELEMENTS else "products"


def _datainf_block(out, T, U, lam, chunk_size, route=None):
    """``out -= T R Uᵀ`` for DataInf's ``R`` on one block (``O(mnd)``·3 or Gram route)."""
    n, d = (int(v) for v in U.shape)
    m = int(T.shape[0])
    t = row_sq_norms(U, chunk_rows=chunk_size)
    w = 1.0 / (n * (lam + t))  # D_ii / n
    route = _datainf_route(n, d, m, route)
    K = U @ U.T if route == "gram" else None
    for sl in row_chunks(m, _rows(max(d, n), chunk_size)):
        P = T[sl, :] @ U.T  # m_c × n
        Q = (P * w[None, :]) @ K if K is not None else ((P * w[None, :]) @ U) @ U.T
        Q -= P
        Q /= lam
        out[sl, :] += Q  # = −(1/λ)[P − (P D/n) U Uᵀ]


def _exact_factor(xp, U, lam):
    n = int(U.shape[0])
    K = U @ U.T
    C = K + (n * lam) * xp.eye(n, dtype=U.dtype, device=Bk.device_of(U))
    return K, Bk.cholesky(xp, C, "n×n matrix n·damping·I + U Uᵀ")


def _exact_block(xp, out, T, U, lam, chunk_size):
    """``out -= T (UᵀU/n + λI)⁻¹ Uᵀ = n·T Uᵀ (nλI + UUᵀ)⁻¹`` (push-through Woodbury)."""
    n, d = (int(v) for v in U.shape)
    _, L = _exact_factor(xp, U, lam)
    for sl in row_chunks(int(T.shape[0]), _rows(max(d, n), chunk_size)):
        P = T[sl, :] @ U.T
        out[sl, :] -= n * Bk.cho_solve(xp, L, P.T).T


def _generic(xp, out, train, test, lams, solver, chunk_size, on_failure, rhs_side, results=None):
    """``out -= T (G + λI)⁻¹ Uᵀ`` through :func:`solve`, the ``rhs_side`` gradients as right-hand sides."""
    op = _operator(train)
    damp = lams if len(lams) > 1 else lams[0]
    rhs_blocks, other = (test, train) if rhs_side == "test" else (train, test)
    for sl in row_chunks(int(rhs_blocks[0].shape[0]), _rows(op.size, chunk_size)):
        rhs = xp.concat([v[sl, :].T for v in rhs_blocks], axis=0)
        res = solve(op, rhs, solver, damping=damp, on_failure=on_failure)
        X = res.x
        if results is not None:
            results.append(replace(res, x=None))  # the report, without the solution block
        off = 0
        for g in other:
            dl = int(g.shape[1])
            P = g @ X[off : off + dl, :]  # (other rows) × chunk
            off += dl
            if rhs_side == "test":
                out[sl, :] -= P.T
            else:
                out[:, sl] -= P


# ------------------------------------------------------------------------ public API
def influence_matrix(
    train_grads,
    test_grads,
    solver: Solver | None = None,
    *,
    damping=None,
    damping_factor: float = 0.1,
    side: str = "auto",
    chunk_size: int | None = None,
    on_failure: str = "raise",
    return_results: bool = False,
):
    r"""Influence of every training point on every test point, ``m×n``.

    .. math:: I_{t i} = -\sum_l v_{t,l}^T\,(G_l + \lambda_l I)^{-1} g_{i,l},\qquad G_l = \tfrac1n U_l^TU_l

    **Sign**: positive = up-weighting training point ``i`` raises the loss at test point
    ``t`` (harmful); THEORY.md §1 / DataInf convention (opposite to pyDVL).

    How ``(G_l + λ_l I)⁻¹`` is applied, and the cost per block (``n`` train, ``m`` test,
    ``d = d_l``); no ``d×d`` matrix is ever formed:

    - :class:`~invhvp.DataInf`: closed form ``I_l = −(1/λ)[P − (P D/n) U Uᵀ]`` with
      ``P = T Uᵀ``, ``D = diag(1/(λ + ||g_i||²))``: three ``m×d·d×n``-sized products
      (``3mnd``), or ``mnd + n²d + mn²`` through the ``n×n`` Gram when that is cheaper
      (many test points); ``O((m+n)·n·d)`` either way.  ``DataInf(certify=...)`` is not used
      here: bound the deviation from exact influence with
      :func:`invhvp.bounds.datainf_influence_error_bound`.
    - :class:`~invhvp.Exact` (``n < d``): push-through Woodbury
      ``I_l = −n·P (nλI + UUᵀ)⁻¹``: ``mnd + n²d + n³/3 + mn²``.
    - :class:`~invhvp.Identity` (Hessian-free): ``I = −T Uᵀ``, ``mnd``.
    - any other solver (CG, LiSSA, ...): :func:`invhvp.solve` on the block-diagonal Gram
      operator with the ``m`` test gradients as right-hand sides (``side="test"``) or the
      ``n`` training gradients (``side="train"``; ``"auto"`` picks the smaller), in chunks of
      ``chunk_size`` columns, then one product with the other side's gradients.

    Parameters
    ----------
    train_grads : array (n, d) or sequence of arrays (n, d_l)
        Per-sample training gradients, one array per block.
    test_grads : array (m, d) or sequence of arrays (m, d_l)
        Test gradients with the same block structure.
    solver : Solver, optional
        Default: the automatic choice of :func:`invhvp.solve` (exact when cheap).
    damping : float, sequence of float, or None
        ``λ_l``; ``None`` uses ``damping_factor · tr(G_l)/d_l`` (the paper's rule).
    damping_factor : float, default 0.1
    side : {"auto", "test", "train"}
        Which gradients are the right-hand sides of a generic solve (ignored by the closed forms).
    chunk_size : int, optional
        Rows/columns per chunk; default keeps temporaries near ``2**24`` elements.
    on_failure : {"raise", "warn", "ignore"}
        Passed to :func:`invhvp.solve`.
    return_results : bool, default False
        Also return the reports of the solves: a list with one
        :class:`~invhvp.SolveResult` per chunk of a generic solve (``x`` set to ``None``;
        ``status``, ``n_matvec``, ``residual_norm`` and ``info`` kept), empty for the
        closed forms (DataInf, Exact, Identity), which cannot fail silently.  Use it with
        ``on_failure="ignore"`` to inspect statuses instead of catching warnings.

    Returns
    -------
    array (m, n), or (array, list of SolveResult) with ``return_results=True``
        Same array type, dtype and device as the gradients.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> U = np.array([[1.0, 0.0], [0.0, 2.0]])          # G = UᵀU/2 = diag(0.5, 2)
    >>> T = np.array([[1.0, 1.0]])
    >>> ih.influence_matrix(U, T, ih.Exact(), damping=1.0)   # −[1/1.5, 2/3]
    array([[-0.66666667, -0.66666667]])
    >>> ih.influence_matrix(U, T, ih.DataInf(), damping=1.0)  # −T R Uᵀ, R = diag(0.75, 0.6)
    array([[-0.75, -1.2 ]])
    >>> ih.influence_matrix(U, T, ih.Identity())              # −T Uᵀ
    array([[-1., -2.]])
    """
    _check_chunk(chunk_size)
    if side not in ("auto", "test", "train"):
        raise InputError(f"side: expected 'auto', 'test' or 'train', got {side!r}")
    xp, train, test = _prepare(train_grads, test_grads)
    solver = _solver(solver, train)
    lams = _damping(train, damping, damping_factor, solver)
    n, m = int(train[0].shape[0]), int(test[0].shape[0])
    out = xp.zeros((m, n), dtype=train[0].dtype, device=Bk.device_of(train[0]))
    results: list = []
    if isinstance(solver, Identity):
        for g, v in zip(train, test):
            out -= v @ g.T
    elif isinstance(solver, DataInf):
        cs = chunk_size if chunk_size is not None else solver.chunk_size
        for g, v, lam in zip(train, test, lams):
            _datainf_block(out, v, g, lam, cs)
    elif all(_exact_fast(solver, g) for g in train):
        for g, v, lam in zip(train, test, lams):
            _exact_block(xp, out, v, g, lam, chunk_size)
    else:
        rhs_side = "train" if side == "train" or (side == "auto" and n < m) else "test"
        _generic(xp, out, train, test, lams, solver, chunk_size, on_failure, rhs_side, results)
    return (out, results) if return_results else out


def self_influence(
    train_grads,
    solver: Solver | None = None,
    *,
    damping=None,
    damping_factor: float = 0.1,
    chunk_size: int | None = None,
    on_failure: str = "raise",
):
    r"""Self-influence ``I(z_i, z_i) = −Σ_l g_{i,l}ᵀ (G_l + λ_l I)⁻¹ g_{i,l}``, length ``n``.

    **Sign**: THEORY.md §1 convention, so for a positive definite inverse every value is
    ``<= 0`` (up-weighting a point lowers its own loss).  For mislabeled-data detection rank
    by ``−self_influence`` (large magnitude = suspicious), or use :func:`average_influence`
    whose large *positive* values flag harmful points.

    Never forms the ``n×n`` influence matrix. Cost per block:

    - :class:`~invhvp.DataInf`: ``−(1/λ)[||g_i||² − (1/n) Σ_j (g_jᵀg_i)²/(λ + ||g_j||²)]``
      from Gram rows computed ``chunk_size`` at a time: ``n²d`` time, ``chunk×n`` memory.
    - :class:`~invhvp.Exact` (``n < d``): ``−n·[K (nλI + K)⁻¹]_ii`` with ``K = UUᵀ``:
      ``n²d + n³`` (the ``n×n`` Gram is intrinsic to the exact Woodbury solve).
    - :class:`~invhvp.Identity`: ``−||g_i||²``, ``nd``.
    - other solvers: :func:`invhvp.solve` with the training gradients as right-hand sides in
      chunks, then column-wise inner products.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> U = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> ih.self_influence(U, ih.Exact(), damping=1.0)        # −[1/1.5, 4/3]
    array([-0.66666667, -1.33333333])
    >>> ih.self_influence(U, ih.DataInf(), damping=1.0)      # −[0.75, 4·0.6]
    array([-0.75, -2.4 ])
    """
    _check_chunk(chunk_size)
    xp, train, _ = _prepare(train_grads, None, need_test=False)
    solver = _solver(solver, train)
    lams = _damping(train, damping, damping_factor, solver)
    n = int(train[0].shape[0])
    out = xp.zeros((n,), dtype=train[0].dtype, device=Bk.device_of(train[0]))
    if isinstance(solver, Identity):
        for g in train:
            out -= row_sq_norms(g, chunk_rows=chunk_size)
        return out
    if isinstance(solver, DataInf):
        cs = chunk_size if chunk_size is not None else solver.chunk_size
        for g, lam in zip(train, lams):
            t = row_sq_norms(g, chunk_rows=cs)
            w = 1.0 / (n * (lam + t))
            parts = []
            for sl in row_chunks(n, _rows(max(n, int(g.shape[1])), cs)):
                Kc = g[sl, :] @ g.T
                parts.append((Kc * Kc) @ w - t[sl])
            out += xp.concat(parts, axis=0) / lam
        return out
    if all(_exact_fast(solver, g) for g in train):
        for g, lam in zip(train, lams):
            K, L = _exact_factor(xp, g, lam)
            Y = Bk.cho_solve(xp, L, K)  # (nλI + K)⁻¹ K, symmetric product
            out -= n * xp.linalg.diagonal(Y)
        return out
    op = _operator(train)
    damp = lams if len(lams) > 1 else lams[0]
    parts = []
    for sl in row_chunks(n, _rows(op.size, chunk_size)):
        rhs = xp.concat([g[sl, :].T for g in train], axis=0)
        X = solve(op, rhs, solver, damping=damp, on_failure=on_failure).x
        parts.append(-xp.sum(X * rhs, axis=0))
    return out + xp.concat(parts, axis=0)


def average_influence(
    train_grads,
    test_grads,
    solver: Solver | None = None,
    *,
    damping=None,
    damping_factor: float = 0.1,
    chunk_size: int | None = None,
    on_failure: str = "raise",
):
    r"""Average influence over the test set, ``s_i = (1/m) Σ_t I(z_t, z_i)``, length ``n``.

    The score used for mislabeled-data detection: **large positive = the training point
    raises the average test loss (harmful, likely mislabeled)**; THEORY.md §1 sign.  By
    linearity it is ``−v̄ᵀ(G + λI)⁻¹ g_i`` with the mean test gradient ``v̄``: one right-hand
    side instead of ``m`` (DataInf/Identity/CG/Exact give exactly the mean of the rows of
    :func:`influence_matrix`; a stochastic solver such as LiSSA gives it in expectation).
    Cost: ``md`` for the mean plus :func:`influence_matrix` with ``m = 1`` (``3nd`` for DataInf).

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> U = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> T = np.array([[1.0, 1.0], [3.0, -1.0]])
    >>> ih.average_influence(U, T, ih.Identity())            # −mean(T) Uᵀ = −[2, 0]
    array([-2.,  0.])
    """
    xp, train, test = _prepare(train_grads, test_grads)
    means = [xp.mean(v, axis=0)[None, :] for v in test]
    return influence_matrix(
        train,
        means,
        solver,
        damping=damping,
        damping_factor=damping_factor,
        chunk_size=chunk_size,
        on_failure=on_failure,
    )[0, :]
