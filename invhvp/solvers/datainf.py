r"""DataInf (Kwon et al. 2023): the closed-form approximate inverse of docs/theory.md §4.

The one home of DataInf's formulas: the apply ``R B``, the influence block ``T R Uᵀ`` (three
products or the Gram route) and the self-influence diagonal.  Its certificates live in
:mod:`invhvp.bounds.datainf`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import _backend as Bk
from .. import _checks as C
from .._arrays import row_chunks, row_sq_norms, rows_per_chunk
from ..bounds._common import datainf_weights
from ..bounds.datainf import datainf_certificates
from ..errors import DampingError, NonFiniteError, UnsupportedOperatorError
from ..operators import LowRankPlusIdentity
from ..result import Status
from .base import Outcome, Solver
from .inverse import Inverse

__all__ = ["DataInf", "DataInfInverse", "datainf_weights", "datainf_partial", "datainf_finish"]

#: Largest n×n Gram (elements) the influence routes may hold at once.
GRAM_MAX_ELEMENTS = 1 << 26

_NOTE = (
    "DataInf is an approximation of (A + damping·I)⁻¹: the residual against the exact operator is "
    "not small by design. Status 'success' means the approximation was applied as specified; its "
    "distance to the exact solution is bounded by info['approximation_bound'] (certificate) and by "
    "info['error_bound'] (= (‖r‖ + δ)/λ)."
)


# The formula R B = (1/λ)[B − Σ_i w_i u_i (u_iᵀ B)], w_i = s/(λ + n s‖u_i‖²), in three pieces so that
# the sum over rows can run over chunks, files (GradientStore) or processes (torch.distributed).
def datainf_partial(U_rows, w_rows, B=None):
    """``Σ_{i in rows} w_i u_i (u_iᵀ B)`` for a chunk of rows (two products, ``O(rows·d·k)``).

    ``B=None`` stands for the identity: the ``d×d`` matrix ``M = Σ w_i u_i u_iᵀ``
    (``O(rows·d²)``), so that ``R = datainf_finish(I, M, λ)`` gives self-influence
    ``u_iᵀ R u_i`` for rows that are not in memory at once.
    """
    if B is None:
        return U_rows.T @ (w_rows[:, None] * U_rows)
    return U_rows.T @ (w_rows[:, None] * (U_rows @ B))


def datainf_finish(B, acc, lam: float):
    """``R B = (B − acc)/λ`` once ``acc`` holds the partial sums over all rows."""
    return (B - acc) / lam


@dataclass(frozen=True)
class DataInf(Solver):
    r"""DataInf: the average of rank-one inverses instead of the inverse of the average.

    For a :class:`~invhvp.LowRankPlusIdentity` block ``A = μI + s·UᵀU`` (rows ``u_i`` =
    per-sample gradients) and ``λ = μ + damping > 0``, with ``w_i = s/(λ + n s‖u_i‖²)``:

    .. math:: (A + \text{damping}\,I)^{-1} \approx R,\qquad
              R\,B = \tfrac1\lambda\,[\,B - U^T (w \odot (U B))\,]

    two products per block, ``O(ndk)``, chunked over rows of ``U``; never a ``d×d`` matrix
    and never a loop over samples.  A :class:`~invhvp.BlockDiagonal` of such blocks is handled
    per block with per-block damping.  Other operators are refused up front: DataInf needs
    the per-sample factors.

    Status SUCCESS means the approximation was applied as specified (its residual against
    ``A + λI`` is not small by design); ``info`` has ``certificates`` (per block, see
    :func:`~invhvp.bounds.datainf_certificates`), ``approximation_bound`` per column
    (``bound·‖b‖ >= ‖x − x_exact‖``) and the a-posteriori ``error_bound``.

    Parameters
    ----------
    certify : bool, default False
        Also compute the expensive certificates (exact ``λ_max`` from the ``n×n`` Gram, the
        intermediate bound, the true error when small): costs that can exceed the solve.
    chunk_size : int, optional
        Rows of ``U`` per chunk; default keeps temporaries near ``2**24`` elements.
    route : {"auto", "products", "gram"}
        How :meth:`~invhvp.Inverse.quad` forms ``T R Uᵀ``: three products (``3mnd``) or through
        the ``n×n`` Gram (``mnd + n²d + mn²``); ``"auto"`` takes the cheaper one.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> U = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> op = ih.LowRankPlusIdentity(U)                   # G = UᵀU/2 = diag(0.5, 2)
    >>> res = ih.solve(op, np.array([1.0, 1.0]), ih.DataInf(), damping=1.0)
    >>> res.x                                            # (1/2)Σ_i (u_i u_iᵀ + I)⁻¹ b
    array([0.75, 0.6 ])
    """

    certify: bool = False
    chunk_size: int | None = None
    route: str = "auto"
    name = "datainf"

    def __post_init__(self):
        C.flag(self.certify, "certify")
        C.integer(self.chunk_size, "chunk_size", minimum=1, optional=True)
        C.choice(self.route, "route", ("auto", "products", "gram"))

    def check_supported(self, op) -> None:
        if not isinstance(op, LowRankPlusIdentity):
            raise UnsupportedOperatorError(
                f"DataInf needs per-sample factors: the operator is {type(op).__name__}, but DataInf "
                "works only on LowRankPlusIdentity(U) (rows of U = per-sample gradients) or a "
                "BlockDiagonal of them. Build the operator from the gradients, or use "
                "invhvp.Exact() / invhvp.CG() for this operator"
            )

    def _factor(self, counted, damping, rng=None):
        op = counted.op
        self.check_supported(op)
        lam = op.shift + float(damping)
        if not lam > 0.0:
            raise DampingError(
                f"damping: DataInf needs λ = shift + damping > 0 (every rank-one term is g gᵀ + λI); "
                f"got shift={op.shift}, damping={damping}. Pass damping > 0, e.g. invhvp.default_damping(operator)"
            )
        return DataInfInverse(self, counted, float(damping), lam)


class DataInfInverse(Inverse):
    """DataInf's ``R`` for one block: row weights computed once, then two products per apply."""

    kind = "approximation"

    def __init__(self, solver: DataInf, counted, damping: float, lam: float):
        op = counted.op
        super().__init__(solver, counted, damping, {"method": "datainf", "damping_total": lam, "note": _NOTE})
        self.lam, self.U, self.s, self.chunk = lam, op.factor, op.scale, solver.chunk_size
        xp = op.xp
        t64 = row_sq_norms(self.U, dtype=xp.float64, chunk_rows=self.chunk)  # no float32 overflow
        w64 = datainf_weights(t64, lam, self.s, op.n_rows)  # s·D_ii
        self.t, self.w = xp.astype(t64, op.dtype), xp.astype(w64, op.dtype)
        if not (bool(xp.all(xp.isfinite(self.t))) and bool(xp.all((self.w > 0) | (w64 == 0)))):
            raise NonFiniteError(
                f"factor: DataInf's row norms or weights leave the range of {op.dtype} (squared row norms up to "
                f"{float(xp.max(t64)):.3g}); rescale the gradients or use float64"
            )
        cert = datainf_certificates(self.U, lam, scale=self.s, full=solver.certify, sq_norms=self.t)
        if not math.isfinite(cert["bound"]):
            raise NonFiniteError("factor: DataInf's certificate is not finite; rescale the gradients or use float64")
        # the computed R·b carries rounding of about u·sqrt(n + d)·‖b‖/λ on top of the certificate
        n, d = (int(v) for v in self.U.shape)
        self.bound = cert["bound"] + 10.0 * Bk.eps(op.dtype) * math.sqrt(n + d) / lam
        self.info["certificates"] = cert

    def _apply(self, B):
        U, w = self.U, self.w
        n = int(U.shape[0])
        acc = None
        for sl in row_chunks(n, rows_per_chunk(int(B.shape[1]), self.chunk)):
            term = datainf_partial(U[sl, :], w[sl], B)
            acc = term if acc is None else acc + term
        return Outcome(x=datainf_finish(B, acc, self.lam))

    def _verify(self, out, chk):
        return Status.SUCCESS, {"approximation_bound": self.bound * chk.b}

    def _quad_own(self, T, chunk_size):
        """``T R Uᵀ = (P − (P∘w) K)/λ`` with ``P = TUᵀ``: three products, or ``K = UUᵀ`` when cheaper."""
        xp, U = self.operator.xp, self.U
        n, d = (int(v) for v in U.shape)
        m = int(T.shape[0])
        route = self.solver.route
        if route == "auto":
            route = "gram" if n * n * d + m * n * n < 2 * m * n * d and n * n <= GRAM_MAX_ELEMENTS else "products"
        gram = route == "gram"
        K = U @ U.T if gram else None
        out = xp.zeros((m, n), dtype=T.dtype, device=Bk.device_of(T))
        for sl in row_chunks(m, rows_per_chunk(max(d, n), chunk_size)):
            P = T[sl, :] @ U.T
            Q = (P * self.w[None, :]) @ K if K is not None else ((P * self.w[None, :]) @ U) @ U.T
            out[sl, :] = (P - Q) / self.lam
        return out

    def _diag_own(self, chunk_size):
        """``u_iᵀ R u_i = (‖u_i‖² − Σ_j w_j (u_jᵀu_i)²)/λ`` from Gram rows, ``chunk × n`` at a time."""
        xp, U = self.operator.xp, self.U
        n, d = (int(v) for v in U.shape)
        parts = []
        for sl in row_chunks(n, rows_per_chunk(max(n, d), chunk_size)):
            Kc = U[sl, :] @ U.T
            parts.append((self.t[sl] - (Kc * Kc) @ self.w) / self.lam)
        return xp.concat(parts, axis=0)
