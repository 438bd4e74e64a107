"""Per-block state of a streaming influence computation: what pass 1 sums, and ``W_l``.

No solver formula lives here (one home per formula, docs/theory.md §10): the exact routes hand an
accumulated Gram (primal) or the gathered rows (dual) to :func:`invhvp.inverse` with
:class:`~invhvp.Exact`, and DataInf sums :func:`~invhvp.solvers.datainf.datainf_partial` over the
chunks and finishes with :func:`~invhvp.solvers.datainf.datainf_finish`.  Every sum over rows is
a plain sum over chunks, then over ranks (:func:`invhvp.distributed.all_reduce_sum`).

Accumulation and the ``d×d`` (or ``n×n``) work run in float64 on the data's device: the
products of a chunk are in the working dtype, their sum over up to millions of rows is not.
"""

from __future__ import annotations

from .. import _backend as Bk
from .._arrays import row_chunks, row_sq_norms
from ..distributed import all_gather_rows, all_reduce_sum
from ..operators import Dense, LowRankPlusIdentity
from ..solvers.api import inverse
from ..solvers.datainf import datainf_finish, datainf_partial, datainf_weights

__all__ = ["Block", "route_for"]

#: Elements of the float64 temporaries of self-influence (a few of them live at once).
SELF_CHUNK_ELEMENTS = 1 << 20


def route_for(n: int, d: int, max_dense: int) -> str | None:
    """``"primal"`` (``d×d`` Gram, ``d <= n``), ``"dual"`` (``n×n``, ``n < d``, rows held) or ``None``."""
    if d <= n and d <= max_dense:
        return "primal"
    if n < d and n <= max_dense and n * d <= max_dense * max_dense:
        return "dual"
    return None


class Block:
    """Block ``j``: its route, damping, accumulators and, after :meth:`finish`, ``W`` (``d×m``)."""

    def __init__(self, j, d, route, xp, device, dtype):
        self.j, self.d, self.route = j, d, route
        self.xp, self.device, self.dtype = xp, device, dtype
        self.lam = None
        self.acc = None  # primal: Σ UᵀU; datainf: Σ Uᵀ(D U Tᵀ) or Σ UᵀDU; dual: list of row chunks
        self.parts = []
        self.inv = None  # exact primal/dual: the Inverse
        self.R = None  # datainf with self-influence: the d×d matrix R (float64)
        self.self_dual = None  # dual + self-influence: this rank's values (float64)
        self.info = {"route": route, "d": d}

    def _f64(self, x):
        return self.xp.astype(x, self.xp.float64)

    def _add(self, term):
        term = self._f64(term)
        self.acc = term if self.acc is None else self.acc + term

    # ------------------------------------------------------------------ pass 1 (exact)
    def add_exact(self, U):
        if self.route == "primal":
            self._add(U.T @ U)
        else:
            self.parts.append(self._f64(U))

    # ------------------------------------------------------------------ pass 1/2 (DataInf)
    def add_datainf(self, U, n: int, T, want_matrix: bool):
        w = datainf_weights(row_sq_norms(U), self.lam, 1.0 / n, n)
        self._add(datainf_partial(U, w, None if want_matrix else T.T))

    # ------------------------------------------------------------------ setup
    def finish_exact(self, T64, n, solver, policy, want_self, rank_offset, n_local):
        """All-reduce (primal) or gather (dual), factor through :func:`invhvp.inverse`, solve ``W``."""
        xp = self.xp
        if self.route == "primal":
            G = (
                self.acc
                if self.acc is not None
                else xp.zeros((self.d, self.d), dtype=xp.float64, device=self.device)
            )
            G = all_reduce_sum(G)
            op = Dense((G + G.T) * (0.5 / n))
            self.info["allreduce_floats"] = self.d * self.d
        else:
            U = (
                xp.concat(self.parts, axis=0)
                if self.parts
                else xp.zeros((0, self.d), dtype=xp.float64, device=self.device)
            )
            U = all_gather_rows(U)
            op = LowRankPlusIdentity(U)
            self.info["allgather_floats"] = n * self.d
        self.acc, self.parts = None, []
        self.inv = inverse(op, solver, damping=self.lam, on_failure=policy)
        res = self.inv.solve(T64.T, on_failure=policy)
        self.W = xp.astype(res.x, self.dtype)
        self.info.update(
            method=self.inv.info.get("method"),
            setup_status=self.inv.setup_status.value,
            solve_status=res.status.value,
            condition_estimate=self.inv.info.get("condition_estimate"),
        )
        self.statuses = [self.inv.setup_status, res.status]
        if "advice" in res.info:
            self.info["advice"] = res.info["advice"]
        if want_self and self.route == "dual":
            diag = self.inv.quad_diag(on_failure=policy)  # closed form on the n×n Gram
            self.self_dual = diag[rank_offset : rank_offset + n_local]
        if self.route == "dual" and not want_self:
            self.inv = None  # the gathered rows are no longer needed

    def finish_datainf(self, T64, want_self):
        xp = self.xp
        shape = (self.d, self.d) if want_self else (self.d, int(T64.shape[0]))
        acc = self.acc if self.acc is not None else xp.zeros(shape, dtype=xp.float64, device=self.device)
        acc = all_reduce_sum(acc)
        self.acc = None
        self.info["allreduce_floats"] = shape[0] * shape[1]
        self.info["method"] = "datainf"
        Tt = T64.T
        if want_self:  # acc = M = Σ w_i u_i u_iᵀ, R = (I − M)/λ
            self.R = datainf_finish(xp.eye(self.d, dtype=xp.float64, device=self.device), acc, self.lam)
            acc = acc @ Tt
        self.W = xp.astype(datainf_finish(Tt, acc, self.lam), self.dtype)
        self.statuses = []

    # ------------------------------------------------------------------ pass 2: self-influence
    def self_quad(self, U, local_rows: slice):
        """``g_iᵀ (G_l + λ_l I)⁻¹ g_i`` (exact) or ``g_iᵀ R_l g_i`` (DataInf) for the rows of chunk ``U``, float64."""
        if self.route == "dual":
            return self.self_dual[local_rows]
        parts = []
        for sl in row_chunks(int(U.shape[0]), max(1, SELF_CHUNK_ELEMENTS // self.d)):
            U64 = self._f64(U[sl])  # float64 temporaries of SELF_CHUNK_ELEMENTS, not of the chunk
            if self.R is not None:
                parts.append(self.xp.sum((U64 @ self.R) * U64, axis=1))
            else:
                parts.append(self.inv.quad_diag(U64))
        return parts[0] if len(parts) == 1 else self.xp.concat(parts, axis=0)


def chunk_sq_norm_sum(xp, U):
    """``Σ_i ‖u_i‖²`` of a chunk, float64 (a 0-d array on the chunk's device)."""
    return xp.sum(row_sq_norms(U, dtype=xp.float64))


def device_zeros(xp, n, device):
    return xp.zeros((n,), dtype=xp.float64, device=device)


def host_floats(x):
    return [float(v) for v in Bk.to_host(x)]
