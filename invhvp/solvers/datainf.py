r"""DataInf (Kwon et al. 2023): the closed-form approximate inverse of THEORY.md §4."""

from __future__ import annotations

from dataclasses import dataclass

from .._arrays import CHUNK_ELEMENTS, row_chunks, row_sq_norms
from ..bounds.datainf import datainf_certificates
from ..errors import DampingError, InputError, UnsupportedOperatorError
from ..operators import BlockDiagonal, LowRankPlusIdentity, Operator
from .base import Counted, Outcome, Solver, damping_for_blocks

__all__ = ["DataInf", "datainf_apply"]

_NOTE = (
    "DataInf is an approximation of (A + damping·I)⁻¹: the residual against the exact operator is "
    "not small by design. Status 'success' means the approximation was applied as specified; "
    "its distance to the exact solution is bounded by info['approximation_bound'] and by "
    "info['error_bound'] (= ||r||/λ)."
)


def _chunk_rows(k: int, chunk_size) -> int:
    if chunk_size is not None:
        return int(chunk_size)
    # the temporaries are (rows × k) and one d × k: only k decides whether chunking helps
    return max(1, CHUNK_ELEMENTS // max(int(k), 1))


def datainf_apply(U, B, lam: float, *, scale=None, chunk_size=None, sq_norms=None):
    r"""``R B`` for the DataInf inverse of ``λI + scale·UᵀU`` (no validation).

    .. math:: R B = \tfrac1\lambda\,[\,B - s\,U^T (D\,(U B))\,],\qquad
              D = \operatorname{diag}\big(1/(\lambda + n s\,\|u_i\|^2)\big)

    which is THEORY.md §4 with ``g̃_i = sqrt(n s)·u_i``.  Two matrix products,
    ``O(ndk)``, over chunks of ``chunk_size`` rows of ``U`` (temporaries
    ``chunk_size×k`` plus one ``d×k``; by default one chunk unless ``n·k > 2**24``).
    """
    n, d = (int(v) for v in U.shape)
    k = int(B.shape[1])
    s = 1.0 / n if scale is None else float(scale)
    if sq_norms is None:
        sq_norms = row_sq_norms(U, chunk_rows=chunk_size)
    w = s / (lam + (n * s) * sq_norms)  # s·D_ii
    c = _chunk_rows(k, chunk_size)
    if c >= n:
        acc = U.T @ (w[:, None] * (U @ B))
    else:
        acc = None
        for sl in row_chunks(n, c):
            Uc = U[sl, :]
            term = Uc.T @ (w[sl, None] * (Uc @ B))
            if acc is None:
                acc = term
            else:
                acc += term
    return (B - acc) / lam


def _leaves(op, damping):
    """(operator, damping) for every LowRankPlusIdentity leaf, in coordinate order."""
    if isinstance(op, BlockDiagonal):
        out = []
        for b, lam in zip(op.blocks, damping_for_blocks(op, damping)):
            out.extend(_leaves(b, lam))
        return out
    return [(op, float(damping))]


@dataclass(frozen=True)
class DataInf(Solver):
    r"""DataInf: average of rank-one inverses instead of the inverse of the average.

    For a :class:`~invhvp.LowRankPlusIdentity` block ``A = μI + s·UᵀU`` (rows ``u_i`` =
    per-sample gradients) and ``λ = μ + damping > 0``, with ``g̃_i = sqrt(n s)·u_i``:

    .. math::

        (A + \text{damping}\,I)^{-1} \approx R
        = \frac1n\sum_i (\tilde g_i\tilde g_i^T + \lambda I)^{-1}
        = \frac1\lambda\Big[I - \frac1n\,\tilde G^T D\,\tilde G\Big],\quad
        D = \operatorname{diag}\Big(\frac{1}{\lambda + \|\tilde g_i\|^2}\Big)

    applied as ``R B = (1/λ)[B − s·Uᵀ(D(U B))]``: two matrix products per block,
    ``O(n d k)`` for ``k`` right-hand sides, chunked over rows of ``U`` so temporaries stay
    below ``chunk_size × k`` elements plus one ``d×k``; never a ``d×d`` matrix and
    never a Python loop over samples.  A :class:`~invhvp.BlockDiagonal` of such blocks is
    handled per block with per-block damping (as in the paper).  Other operators are refused
    up front: DataInf needs the per-sample factors.

    DataInf is an *approximation*: ``result.residual_norm`` against the exact ``A + λI`` is
    not small, and :func:`invhvp.solve` still reports ``SUCCESS`` (the approximation was
    applied as specified).  How far it is from the exact solution is certified by the
    bounds of :mod:`invhvp.bounds.datainf`; ``result.info`` holds

    - ``"certificates"``: one dict per block (see
      :func:`~invhvp.bounds.datainf_certificates`): ``paper_bound``, ``certificate``,
      ``lambda_max`` (+ method), ``intermediate``, ``true_error``, ``bound``;
    - ``"approximation_bound"``: per column, ``||x − x_exact|| <= sqrt(Σ_l (bound_l·||b_l||)²)``;
    - ``"damping_total"``: ``λ = shift + damping`` per block.

    With ``certify=False`` (default) only the ``O(nd)`` certificates are computed (``λ_max``
    bounded by the trace); ``certify=True`` adds the exact ``λ_max`` from the ``n×n`` Gram
    (``O(n²d)``, when ``n <= 2048``), the intermediate bound and the true spectral error
    (when ``min(n, d)`` is small enough) -- costs that can exceed the solve itself.
    ``result.n_matvec`` is 0: DataInf never applies the operator.

    Parameters
    ----------
    certify : bool, default False
        Compute the expensive certificates too.
    chunk_size : int, optional
        Rows of ``U`` per chunk; default keeps the ``rows×k`` temporary near ``2**24``
        elements (one chunk for ``n·k <= 2**24``).

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> U = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> op = ih.LowRankPlusIdentity(U)                   # G = UᵀU/2 = diag(0.5, 2)
    >>> res = ih.solve(op, np.array([1.0, 1.0]), ih.DataInf(), damping=1.0)
    >>> res.x                                            # (1/2)Σ_i (u_i u_iᵀ + I)⁻¹ b
    array([0.75, 0.6 ])
    >>> res.status.value, res.info["certificates"][0]["bound"] >= 0
    ('success', True)
    """

    certify: bool = False
    chunk_size: int | None = None
    name = "datainf"

    def __post_init__(self):
        if not isinstance(self.certify, bool):
            raise InputError(f"certify: expected True or False, got {self.certify!r}")
        c = self.chunk_size
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise InputError(f"chunk_size: expected a positive int or None, got {c!r}")

    def _check_supported(self, op: Operator, where: str = "operator") -> None:
        if isinstance(op, BlockDiagonal):
            for i, b in enumerate(op.blocks):
                self._check_supported(b, f"{where}.blocks[{i}]")
        elif not isinstance(op, LowRankPlusIdentity):
            raise UnsupportedOperatorError(
                f"DataInf needs per-sample factors: {where} is {type(op).__name__}, but DataInf "
                "works only on LowRankPlusIdentity(U) (rows of U = per-sample gradients) or a "
                "BlockDiagonal of them. Build the operator from the gradients, or use "
                "invhvp.Exact() / invhvp.CG() for this operator"
            )

    def _run(self, counted: Counted, B, damping) -> Outcome:
        op = counted.op
        self._check_supported(op)
        xp = op.xp
        leaves = _leaves(op, damping)
        lams = []
        for i, (blk, dmp) in enumerate(leaves):
            lam = blk.shift + dmp
            if not lam > 0.0:
                where = "" if len(leaves) == 1 else f" for block {i}"
                raise DampingError(
                    f"damping: DataInf needs λ = shift + damping > 0{where} (every rank-one term is "
                    f"g gᵀ + λI); got shift={blk.shift}, damping={dmp}. Pass damping > 0, e.g. "
                    "invhvp.default_damping(operator)"
                )
            lams.append(lam)
        parts, certs, bound_sq = [], [], None
        offset = 0
        for (blk, _), lam in zip(leaves, lams):
            Bl = B[offset : offset + blk.size, :]
            offset += blk.size
            U = blk.factor
            t = row_sq_norms(U, chunk_rows=self.chunk_size)
            parts.append(datainf_apply(U, Bl, lam, scale=blk.scale, chunk_size=self.chunk_size, sq_norms=t))
            c = datainf_certificates(U, lam, scale=blk.scale, full=self.certify, sq_norms=t)
            certs.append(c)
            term = (c["bound"] * xp.linalg.vector_norm(Bl, axis=0)) ** 2
            bound_sq = term if bound_sq is None else bound_sq + term
        X = parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
        info = {
            "method": "datainf",
            "damping_total": lams[0] if not isinstance(op, BlockDiagonal) else tuple(lams),
            "certificates": certs,
            "approximation_bound": xp.sqrt(bound_sq),
            "certified": self.certify,
            "note": _NOTE,
        }
        return Outcome(x=X, n_iter=0, info=info)
