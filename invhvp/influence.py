r"""Influence matrices, self-influence and test-averaged scores from per-block gradients.

Sign convention (docs/theory.md §1, DataInf eq. 2 and 5; pyDVL uses the opposite sign):

.. math:: I(z_t, z_i) = -\,g_t^T (G + \lambda I)^{-1} g_i,\qquad
          G = \operatorname{diag}(G_1, \dots, G_L),\; G_l = \tfrac1n U_l^T U_l

summed over blocks ``l``.  **Positive = up-weighting ``z_i`` raises the test loss at
``z_t`` = harmful.**  This module holds no solver formula: it builds the block-diagonal
Gram operator, asks :func:`invhvp.inverse` for ``(G_l + λ_l I)⁻¹`` and uses the inverse's
quadratic forms (:meth:`invhvp.Inverse.quad`, :meth:`invhvp.Inverse.quad_diag`), whose
closed forms live in each solver's module (docs/theory.md §10).

Gradients are given per block: ``train_grads`` is an ``(n, d)`` array or a sequence of
``(n, d_l)`` arrays (a list, a :class:`~invhvp.GradientStore` of memory maps, a
``BlockGradients``), ``test_grads`` likewise ``(m, d_l)``; numpy or torch (any device,
float32/float64, all the same).  ``damping=None`` uses the paper's rule
``λ_l = damping_factor · tr(G_l)/d_l`` (:func:`invhvp.default_damping`).
"""

from __future__ import annotations

from collections.abc import Sequence

from . import _backend as Bk
from . import _checks as C
from .damping import DEFAULT_FACTOR, default_damping
from .errors import InputError, NonFiniteError, ShapeError
from .operators import BlockDiagonal, LowRankPlusIdentity
from .solvers.api import inverse
from .solvers.base import Solver
from .solvers.inverse import FAILURE_POLICIES

__all__ = ["influence_matrix", "self_influence", "average_influence", "gradient_inverse"]


# ----------------------------------------------------------------------------- inputs
def _as_blocks(grads, name):
    if grads is None:
        raise InputError(f"{name}: expected an (n, d) array or a non-empty sequence of them, got None")
    many = _is_block_sequence(grads)
    blocks = list(grads) if many else [grads]
    if not blocks:
        raise InputError(f"{name}: expected an (n, d) array or a non-empty sequence of them")
    names = [f"{name}[{i}]" for i in range(len(blocks))] if many else [name]
    for g, nm in zip(blocks, names):
        Bk.check_factor(g, nm)
    return blocks, names


def _is_block_sequence(grads) -> bool:
    """A list/tuple of blocks, or a sequence object such as a GradientStore or BlockGradients."""
    return isinstance(grads, (list, tuple)) or (isinstance(grads, Sequence) and not hasattr(grads, "shape"))


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
            raise ShapeError(f"{nm}: has {g.shape[0]} rows, but {tnames[0]} has {n}: one row per training point")
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


def gradient_inverse(
    train_grads, solver=None, *, damping=None, damping_factor=DEFAULT_FACTOR, on_failure="raise", progress=None
):
    r"""``(G + λI)⁻¹`` for per-block training gradients, factored once (an :class:`~invhvp.Inverse`).

    ``G = diag(U_lᵀU_l/n)`` as a :class:`~invhvp.LowRankPlusIdentity` (one block) or a
    :class:`~invhvp.BlockDiagonal` of them; ``damping=None`` applies the paper's rule with
    ``damping_factor``.  Reuse it across :func:`influence_matrix`, :func:`self_influence`
    and :func:`average_influence` calls (``inverse=`` argument) to pay the one-time work once.
    ``progress(done, total)`` is called after each block's one-time work.
    """
    _, train, _ = _prepare(train_grads, None, need_test=False)
    f = C.real(damping_factor, "damping_factor", minimum=0.0, strict=True)
    C.choice(on_failure, "on_failure", FAILURE_POLICIES)
    if solver is not None and not isinstance(solver, Solver):
        raise InputError(f"solver: expected an invhvp solver instance such as invhvp.DataInf(), got {solver!r}")
    ops = []
    for i, g in enumerate(train):
        try:
            ops.append(LowRankPlusIdentity(g))  # checks finiteness
        except NonFiniteError as exc:
            name = "train_grads" if len(train) == 1 and not _is_block_sequence(train_grads) else f"train_grads[{i}]"
            raise NonFiniteError(str(exc).replace("factor", name, 1)) from None
    op = ops[0] if len(ops) == 1 else BlockDiagonal(ops)
    if damping is None:
        lams = default_damping(op, f)
    else:
        lams = C.damping_values(damping, len(ops))
        if isinstance(lams, tuple) and len(ops) == 1:
            lams = lams[0]
    return inverse(op, solver, damping=lams, on_failure=on_failure, progress=progress)


def _inverse_for(train, solver, damping, damping_factor, on_failure, inv):
    if inv is None:
        return gradient_inverse(train, solver, damping=damping, damping_factor=damping_factor, on_failure=on_failure)
    from .solvers.inverse import Inverse

    if not isinstance(inv, Inverse):
        raise InputError(f"inverse: expected an invhvp.Inverse from gradient_inverse(...), got {type(inv).__name__}")
    ops = list(inv.operator.blocks) if hasattr(inv.operator, "blocks") else [inv.operator]
    if len(ops) != len(train) or any(getattr(o, "factor", None) is not g for o, g in zip(ops, train)):
        raise InputError(
            "inverse: it was not built from these train_grads (gradient_inverse(train_grads, ...) with the "
            "same per-block arrays); influence values need the inverse of these gradients' Gram"
        )
    return inv


def _left(test):
    return test if len(test) > 1 else test[0]


# ------------------------------------------------------------------------ public API
def influence_matrix(
    train_grads,
    test_grads,
    solver: Solver | None = None,
    *,
    damping=None,
    damping_factor: float = DEFAULT_FACTOR,
    side: str = "auto",
    chunk_size: int | None = None,
    on_failure: str = "raise",
    return_results: bool = False,
    inverse=None,
    progress=None,
):
    r"""Influence of every training point on every test point, ``m×n``.

    .. math:: I_{t i} = -\sum_l v_{t,l}^T\,(G_l + \lambda_l I)^{-1} g_{i,l},\qquad G_l = \tfrac1n U_l^TU_l

    **Sign**: positive = up-weighting training point ``i`` raises the loss at test point
    ``t`` (harmful); docs/theory.md §1 / DataInf convention (opposite to pyDVL).

    ``−inv.quad(T)`` of the inverse (:meth:`invhvp.Inverse.quad`), per block; its cost
    (``n`` train, ``m`` test, ``d = d_l``; never a ``d×d`` matrix):

    - :class:`~invhvp.Exact` with ``n < d``: push-through Woodbury, ``mnd + mn²`` after the
      ``n²d + n³/3`` factorization; ``d <= n``: ``md²`` solves then ``mnd``;
    - :class:`~invhvp.DataInf`: three products ``3mnd``, or ``mnd + n²d + mn²`` through the
      ``n×n`` Gram when cheaper; bound the gap to exact influence with
      :func:`invhvp.bounds.datainf_influence_error_bound`;
    - :class:`~invhvp.Identity` (Hessian-free): ``−T Uᵀ``, ``mnd``;
    - other solvers (CG, LiSSA): solves with the smaller side's gradients as right-hand
      sides (``side="test"``/``"train"`` forces one) in chunks, then one product.

    Parameters
    ----------
    train_grads, test_grads : array (n|m, d) or sequence of arrays (n|m, d_l)
        Per-sample gradients with the same block structure.
    solver : Solver, optional
        Default: the automatic choice of :func:`invhvp.inverse` (exact when cheap).
    damping : float, sequence of float, or None
        ``λ_l``; ``None`` uses ``damping_factor · tr(G_l)/d_l`` (the paper's rule).
    damping_factor : float, default 0.1
    side : {"auto", "test", "train"}
        Which gradients are the right-hand sides of a generic solve (ignored by closed forms).
    chunk_size : int, optional
        Rows/columns per chunk; default keeps temporaries near ``2**24`` elements.
    on_failure : {"raise", "warn", "ignore"}
        Policy when a solve's (or a closed form's setup) status is not SUCCESS.
    return_results : bool, default False
        Also return the reports: one :class:`~invhvp.SolveResult` per chunk solve (``x=None``),
        or one record per block for a closed form (its setup status and ``info``).
    inverse : Inverse, optional
        A :func:`gradient_inverse` of these training gradients to reuse (then ``solver``,
        ``damping`` and ``damping_factor`` are ignored).
    progress : callable, optional
        ``progress(done, total)`` after each block.

    Returns
    -------
    array (m, n), or (array, list of SolveResult) with ``return_results=True``

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
    C.integer(chunk_size, "chunk_size", minimum=1, optional=True)
    side = {"auto": "auto", "test": "left", "train": "right"}[C.choice(side, "side", ("auto", "test", "train"))]
    C.flag(return_results, "return_results")
    _, train, test = _prepare(train_grads, test_grads)
    inv = _inverse_for(train, solver, damping, damping_factor, on_failure, inverse)
    results: list = []
    out = -inv.quad(
        _left(test), side=side, chunk_size=chunk_size, on_failure=on_failure, results=results, progress=progress
    )
    return (out, results) if return_results else out


def self_influence(
    train_grads,
    solver: Solver | None = None,
    *,
    damping=None,
    damping_factor: float = DEFAULT_FACTOR,
    chunk_size: int | None = None,
    on_failure: str = "raise",
    return_results: bool = False,
    inverse=None,
    progress=None,
):
    r"""Self-influence ``I(z_i, z_i) = −Σ_l g_{i,l}ᵀ (G_l + λ_l I)⁻¹ g_{i,l}``, length ``n``.

    **Sign**: docs/theory.md §1, so for a positive definite inverse every value is ``<= 0``
    (up-weighting a point lowers its own loss).  For mislabeled-data detection rank by
    ``−self_influence`` (large magnitude = suspicious), or use :func:`average_influence`
    whose large *positive* values flag harmful points.

    ``−inv.quad_diag()``; never forms the ``n×n`` influence matrix.  Cost per block: exact
    with ``n < d``: ``n³`` on the ``n×n`` Gram; DataInf: ``n²d`` from Gram rows ``chunk×n`` at a
    time; Identity: ``nd``; other solvers: solves with the training gradients as right-hand
    sides in chunks.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> U = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> ih.self_influence(U, ih.Exact(), damping=1.0)        # −[1/1.5, 4/3]
    array([-0.66666667, -1.33333333])
    >>> ih.self_influence(U, ih.DataInf(), damping=1.0)      # −[0.75, 4·0.6]
    array([-0.75, -2.4 ])
    """
    C.integer(chunk_size, "chunk_size", minimum=1, optional=True)
    C.flag(return_results, "return_results")
    _, train, _ = _prepare(train_grads, None, need_test=False)
    inv = _inverse_for(train, solver, damping, damping_factor, on_failure, inverse)
    results: list = []
    out = -inv.quad_diag(chunk_size=chunk_size, on_failure=on_failure, results=results, progress=progress)
    return (out, results) if return_results else out


def average_influence(
    train_grads,
    test_grads,
    solver: Solver | None = None,
    *,
    damping=None,
    damping_factor: float = DEFAULT_FACTOR,
    chunk_size: int | None = None,
    on_failure: str = "raise",
    inverse=None,
):
    r"""Average influence over the test set, ``s_i = (1/m) Σ_t I(z_t, z_i)``, length ``n``.

    The score used for mislabeled-data detection: **large positive = the training point
    raises the average test loss (harmful, likely mislabeled)**; docs/theory.md §1 sign.  By
    linearity it is ``−v̄ᵀ(G + λI)⁻¹ g_i`` with the mean test gradient ``v̄``: one right-hand
    side instead of ``m`` (exact for linear inverses; in expectation for LiSSA).

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
        inverse=inverse,
    )[0, :]
