r"""Influence of up to millions of training points in bounded memory, on one process or many.

:func:`influence_scores` reads the training gradients in passes (docs/scale.md):

1. **sums over rows** (docs/theory.md §9): per block ``Σ_i ‖g_i‖²`` (→ the default damping) and,
   for the exact primal route, the Gram ``UᵀU`` (``d×d``); the dual route (``n < d``, small ``n``)
   keeps the rows.  DataInf needs a second sum, ``Σ_i w_i u_i (u_iᵀ Tᵀ)``, whose weights need
   ``λ``: one more pass when ``λ`` comes from the rule (3 in all), none when it is given (2).
2. **the inverse, once**: ``W_l = (G_l + λ_l I)⁻¹ T_lᵀ`` (``d_l×m``) through :func:`invhvp.inverse`
   (Exact on the accumulated ``Dense(UᵀU/n)``: Cholesky with a condition estimate; or Woodbury on
   the gathered rows), or DataInf's ``R_l T_lᵀ``.
3. **scores**: every training row needs only itself and ``W``: ``I_{t i} = −Σ_l g_{i,l}ᵀ W_l[:, t]``.
   The ``m×n`` matrix is reduced on the fly to the average over test points, the top ``k``
   per test point and (optionally) self-influence.

With a ``torch.distributed`` process group each rank passes its own rows (the default for a
store is ``store.shard()``); the sums are combined with
:func:`invhvp.distributed.all_reduce_sum` and the top-``k`` candidates and per-row scores are
gathered.  Without one, the same code is the single-process computation.

Sign (docs/theory.md §1): positive influence = up-weighting the training point raises the test
loss = harmful.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from .. import _backend as Bk
from .. import _checks as C
from ..damping import DEFAULT_FACTOR, damping_from_sums
from ..distributed import all_reduce_sum, world
from ..errors import DampingError, InputError, NonFiniteError, OperatorTooLargeError
from ..result import Status
from ..solvers.exact import AUTO_DENSE_MAX
from ..solvers.inverse import FAILURE_POLICIES
from ._blocks import Block, chunk_sq_norm_sum, host_floats, route_for
from ._run import choose, gathered, open_out, passer, too_large
from ._source import Rows, test_blocks
from ._topk import RunningTopK, TopK

__all__ = ["influence_scores", "InfluenceScores", "TopK"]


@dataclass(frozen=True)
class InfluenceScores:
    """What :func:`influence_scores` computed (sign: positive = harmful).

    Attributes
    ----------
    average : array (n,)
        ``(1/m) Σ_t I(z_t, z_i)`` per training row: large positive = harmful on average
        (mislabeled-data detection).  Rows ``rows`` of the training set (all of them unless
        ``gather=False``).
    top_harmful, top_helpful : TopK
        ``values`` and global row ``indices`` (``m×k``): per test point the ``k`` largest
        (most harmful) and smallest (most helpful) influences, best first.
    self_influence : array (n,) or None
        ``−Σ_l g_{i,l}ᵀ (G_l + λ_l I)⁻¹ g_{i,l}`` (``<= 0``), when asked for.
    matrix : array (m, n) or None
        The full influence matrix, only with ``return_matrix=True``.
    damping : tuple of float
        ``λ_l`` per block.
    rows : slice
        The global rows that ``average``/``self_influence``/``matrix`` cover.
    n : int
        Training rows over all ranks.
    status : Status
        The worst status of the inverse setups and solves (``SUCCESS`` for DataInf, an approximation).
    info : dict
        ``solver``, ``blocks`` (per block: route, method, statuses, condition estimate,
        floats all-reduced), ``passes`` (name, seconds, rows, bytes_read), ``bytes_read``,
        ``seconds``, ``chunk_rows``, ``world_size``, ``self_influence`` (or why not).
    """

    average: object
    top_harmful: TopK
    top_helpful: TopK
    self_influence: object
    matrix: object
    damping: tuple
    rows: slice
    n: int
    status: Status
    info: dict = field(repr=False)


def influence_scores(
    train,
    test_grads,
    solver=None,
    *,
    damping=None,
    damping_factor: float = DEFAULT_FACTOR,
    k: int = 10,
    self_influence: bool = False,
    chunk_rows: int | None = None,
    rows: slice | None = None,
    return_matrix: bool = False,
    out=None,
    gather: bool = True,
    max_dense: int = AUTO_DENSE_MAX,
    on_failure: str = "raise",
    progress: bool = False,
) -> InfluenceScores:
    r"""Influence of every training row on ``m`` test points, streamed in bounded memory.

    .. math:: I_{t i} = -\sum_l v_{t,l}^T (G_l + \lambda_l I)^{-1} g_{i,l},\qquad G_l = \tfrac1n U_l^TU_l

    **Sign**: positive = up-weighting training row ``i`` raises the loss at test point ``t``
    (harmful); docs/theory.md §1.  Equal (to rounding) to :func:`invhvp.influence_matrix`,
    :func:`invhvp.average_influence` and :func:`invhvp.self_influence` on the same gradients.

    Cost (``n`` rows, ``m`` test points, block width ``d``), passes over the data and memory
    beyond one chunk:

    - exact, primal route (``d <= n``, ``d <= max_dense``): 2 passes; ``n·d²`` for the Gram,
      ``d³/3`` Cholesky, ``2·n·d·m`` for the scores; ``d²`` floats per block (all-reduced);
      self-influence adds ``2·n·d²`` (a solve per row with the factor);
    - exact, dual route (``n < d``, ``n <= max_dense``, ``n·d <= max_dense²``): the rows are held
      (gathered over ranks) for Woodbury, ``n²·d + n³/3``;
    - DataInf: ``2·n·d·m`` for ``Σ U_sᵀD_s(U_sTᵀ)`` (``d·m`` floats all-reduced), 3 passes with the
      default damping, 2 with ``damping`` given; self-influence accumulates the ``d×d`` matrix
      ``Σ w_i u_i u_iᵀ`` instead (``n·d²``), so it needs ``d <= max_dense``.

    Parameters
    ----------
    train : GradientStore, array (n, d) or sequence of arrays (n, d_l)
        Per-sample training gradients per block.  Under ``torch.distributed`` each rank passes
        its own rows: the store (its rows default to ``store.shard()``), or its slice of the
        arrays (ranks' rows are concatenated in rank order).
    test_grads : array (m, d) or sequence of arrays (m, d_l)
        Test gradients; they define the array library, dtype (float32/float64) and device of
        the computation (a store is read as such chunks).  In-memory ``train`` must match them.
    solver : None, "exact", "datainf", Exact or DataInf
        ``None``: exact when every block has a route within ``max_dense``, else DataInf
        (``info["auto"]`` says why).  ``"exact"`` refuses (OperatorTooLargeError) when a block fits
        no route.
    damping : float, sequence of float, or None
        ``λ_l > 0``; ``None``: ``damping_factor · tr(G_l)/d_l`` from the global sums.
    damping_factor : float, default 0.1
    k : int, default 10
        Top-``k`` per test point (``min(k, n)``).
    self_influence : bool, default False
        Also compute self-influence (cost above).
    chunk_rows : int, optional
        Rows per chunk; default about ``2**24`` elements over all blocks.
    rows : slice, optional
        For a store: the rows of this rank (default ``store.shard()``).  Ranks' rows must be
        disjoint and together contiguous.
    return_matrix : bool, default False
        Also return the ``m×n`` influence matrix (held in memory).
    out : str or PathLike, optional
        Write the ``m×n`` influence matrix to this new ``.npy`` file (``numpy.load(out,
        mmap_mode="r")`` reads it back); every rank writes its own columns.
    gather : bool, default True
        Under torch.distributed, gather ``average``/``self_influence``/``matrix`` onto every rank;
        ``False`` keeps this rank's rows only (``result.rows``).
    max_dense : int, default 4096
        Largest ``d×d`` (primal) or ``n×n`` (dual) Gram an exact route may form.
    on_failure : {"raise", "warn", "ignore"}
        Policy when an exact inverse's status is not SUCCESS (e.g. INACCURATE: ill-conditioned).
    progress : bool, default False
        tqdm progress bars (rank 0).

    Returns
    -------
    InfluenceScores

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> rng = np.random.default_rng(0)
    >>> U = [rng.standard_normal((500, 8)), rng.standard_normal((500, 4))]  # 2 blocks, n = 500
    >>> T = [rng.standard_normal((3, 8)), rng.standard_normal((3, 4))]      # m = 3 test points
    >>> res = ih.scale.influence_scores(U, T, "exact", k=2, self_influence=True)
    >>> full = ih.influence_matrix(U, T, ih.Exact())                        # m×n, in memory
    >>> bool(np.allclose(res.average, full.mean(axis=0)))
    True
    >>> bool((res.top_harmful.indices == np.argsort(-full, axis=1)[:, :2]).all())
    True
    >>> bool(np.allclose(res.self_influence, ih.self_influence(U, ih.Exact())))
    True
    >>> res.info["blocks"][0]["route"], res.status.value, [p["name"] for p in res.info["passes"]]
    ('primal', 'success', ['gram', 'score'])
    """
    t_start = time.perf_counter()
    k = C.integer(k, "k", minimum=1)
    f = C.real(damping_factor, "damping_factor", minimum=0.0, strict=True)
    want_self = C.flag(self_influence, "self_influence")
    want_matrix = C.flag(return_matrix, "return_matrix")
    gather, progress = C.flag(gather, "gather"), C.flag(progress, "progress")
    chunk_rows = C.integer(chunk_rows, "chunk_rows", minimum=1, optional=True)
    max_dense = C.integer(max_dense, "max_dense", minimum=1)
    policy = C.choice(on_failure, "on_failure", FAILURE_POLICIES)
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise InputError(f"out: expected a file path (str or os.PathLike), got {type(out).__name__}")
    xp, dtype, device, T = test_blocks(test_grads)
    src = Rows(train, rows, xp, dtype, device)
    src.check_widths([int(t.shape[1]) for t in T])
    L, m = len(src.sizes), int(T[0].shape[0])
    lam_given = C.damping_values(damping, L, allow_none=True)
    if lam_given is not None:
        lam_given = lam_given if isinstance(lam_given, tuple) else (lam_given,) * L
        if not all(v > 0.0 for v in lam_given):
            raise DampingError(f"damping: influence_scores needs λ > 0 for every block, got {lam_given}")
    src.agree()
    n = src.n
    kind, exact, reason = choose(solver, n, src.sizes, max_dense)
    if kind == "exact" and any(route_for(n, d, max_dense) is None for d in src.sizes):
        raise too_large(src.sizes, n, max_dense)
    if kind == "datainf" and want_self and max(src.sizes) > max_dense:
        raise OperatorTooLargeError(
            f"self_influence: DataInf's self-influence sums the d×d matrix Σ w_i u_i u_iᵀ, but a block has "
            f"d = {max(src.sizes)} > max_dense = {max_dense}; pass self_influence=False or raise max_dense"
        )
    blocks = [
        Block(j, d, route_for(n, d, max_dense) if kind == "exact" else "datainf", xp, device, dtype)
        for j, d in enumerate(src.sizes)
    ]
    T64 = [xp.astype(t, xp.float64) for t in T]
    passes: list = []
    run = passer(src, chunk_rows, progress, log=passes)
    sq = [xp.zeros((), dtype=xp.float64, device=device) for _ in blocks]

    def add_norms(_, chunk):
        for j, U in enumerate(chunk):
            sq[j] = sq[j] + chunk_sq_norm_sum(xp, U)

    def add_gram(sl, chunk):
        add_norms(sl, chunk)
        for b, U in zip(blocks, chunk):
            b.add_exact(U)

    def damping_values():
        tot = host_floats(all_reduce_sum(xp.stack(sq)))
        for j, s in enumerate(tot):
            if not np.isfinite(s):
                raise NonFiniteError(
                    f"train[{j}]: contains NaN or infinite values, or squared row norms that "
                    f"overflow {dtype} (their sum is {s})"
                )
        if lam_given is not None:
            return lam_given
        return tuple(
            damping_from_sums(s, n, d, f, what=f"train block {j}")
            for j, (s, d) in enumerate(zip(tot, src.sizes))
        )

    if kind == "exact":
        run("gram", add_gram)
        lams = damping_values()
    else:
        if lam_given is None:
            run("norms", add_norms)
            lams = damping_values()
        else:
            lams = lam_given
        for b, lam in zip(blocks, lams):
            b.lam = lam

        def add_datainf(sl, chunk):
            if lam_given is not None:
                add_norms(sl, chunk)
            for b, U, t in zip(blocks, chunk, T):
                b.add_datainf(U, n, t, want_self)

        run("datainf", add_datainf)
        if lam_given is not None:
            damping_values()  # the finiteness check on all ranks
    t0 = time.perf_counter()
    for b, lam, t64 in zip(blocks, lams, T64):
        b.lam = lam
        if kind == "exact":
            b.finish_exact(t64, n, exact, policy, want_self, src.rank_offset, src.n_local)
        else:
            b.finish_datainf(t64, want_self)
    setup_s = time.perf_counter() - t0

    k_eff = min(k, n)
    top_h, top_l = RunningTopK(xp, k_eff, largest=True), RunningTopK(xp, k_eff, largest=False)
    avg, selfs, mats = [], [], []
    np_dtype = np.float64 if Bk.eps(dtype) < 1e-10 else np.float32
    mm = open_out(out, m, n, np_dtype) if out is not None else None

    def score(sl, chunk):
        S = chunk[0] @ blocks[0].W
        for b, U in zip(blocks[1:], chunk[1:]):
            S = S + U @ b.W
        infl = -S  # (rows, m)
        avg.append(xp.mean(infl, axis=1))
        top_h.update(infl.T, sl.start)
        top_l.update(infl.T, sl.start)
        if want_matrix:
            mats.append(infl)
        if mm is not None:
            mm[:, sl.start - src.first : sl.stop - src.first] = Bk.to_host(infl.T)
        if want_self:
            loc = slice(sl.start - src.start, sl.stop - src.start)
            s = blocks[0].self_quad(chunk[0], loc)
            for b, U in zip(blocks[1:], chunk[1:]):
                s = s + b.self_quad(U, loc)
            selfs.append(xp.astype(-s, dtype))

    run("score", score)
    if mm is not None:
        mm.flush()
        del mm
        all_reduce_sum(0)  # every rank's columns are written before any rank returns

    def joined(parts, width=None):
        if parts:
            return xp.concat(parts, axis=0)
        shape = (0,) if width is None else (0, width)
        return xp.zeros(shape, dtype=dtype, device=device)

    average = gathered(xp, joined(avg), src, gather)
    self_vals = gathered(xp, joined(selfs), src, gather) if want_self else None
    matrix = gathered(xp, joined(mats, m), src, gather).T if want_matrix else None
    harmful = top_h.merged_across_ranks(m, dtype, device, k_eff)
    helpful = top_l.merged_across_ranks(m, dtype, device, k_eff)
    rank, size = world()
    statuses = [s for b in blocks for s in b.statuses]
    info = {
        "solver": kind,
        "blocks": [b.info for b in blocks],
        "passes": passes,
        "bytes_read": sum(p["bytes_read"] for p in passes),
        "setup_seconds": setup_s,
        "seconds": time.perf_counter() - t_start,
        "chunk_rows": src.chunk_rows(chunk_rows),
        "rank": rank,
        "world_size": size,
        "self_influence": "computed" if want_self else "not requested (self_influence=True)",
    }
    if reason is not None:
        info["auto"] = reason
    if kind == "datainf":
        info["note"] = (
            "DataInf approximates (G + λI)⁻¹ (docs/theory.md §4); status 'success' means applied as specified"
        )
    local = slice(src.start, src.start + src.n_local)
    return InfluenceScores(
        average=average,
        top_harmful=harmful,
        top_helpful=helpful,
        self_influence=self_vals,
        matrix=matrix,
        damping=tuple(lams),
        rows=slice(src.first, src.first + n) if gather else local,
        n=n,
        status=Status.worst(statuses),
        info=info,
    )
