"""Block-diagonal inverses: one inverse per block, combined (docs/theory.md §3)."""

from __future__ import annotations

import numpy as np

from .. import _checks as C
from ..errors import ShapeError
from ..result import Status
from .inverse import FAILURE_POLICIES, Inverse

__all__ = ["BlockInverse"]


class BlockInverse(Inverse):
    """``diag((A_1 + λ_1 I)⁻¹, …, (A_L + λ_L I)⁻¹)``: each block factored and checked on its own.

    A solve splits the right-hand side by blocks; every block verifies its own contract
    against its own residual, the status is the worst block's, ``residual_norm`` and
    ``info["error_bound"]`` combine the blocks' (root sum of squares), ``info["blocks"]`` holds
    each block's report.  The quadratic forms sum over blocks and accept per-block row
    sequences or one ``(m, d)`` array.
    """

    def __init__(self, solver, counted, damping: tuple, parts: list):
        super().__init__(solver, counted, damping)
        self.parts = parts
        self.kind = "direct" if all(p.kind == "direct" for p in parts) else "iterative"
        self.setup_status = Status.worst(p.setup_status for p in parts)
        self.info = {"method": "block-diagonal", "blocks": [p.info for p in parts]}
        advice = [f"block {i}: {p.info['advice']}" for i, p in enumerate(parts) if "advice" in p.info]
        if advice:
            self.info["advice"] = "; ".join(advice)

    def _solve2d(self, B, check: bool):
        xp = self.operator.xp
        Xs, statuses, iters, infos, rn2, n_mv, n_check = [], [], [], [], 0.0, 0, 0
        for p, Bl in zip(self.parts, self.operator.split(B)):
            X, st, it, mv, inf, rn, nc = p._solve2d(Bl, check)
            Xs.append(X)
            statuses.append(st)
            iters.append(it)
            infos.append({**p.info, **inf})
            n_mv += mv
            n_check += nc
            rn2 = None if rn is None or rn2 is None else rn2 + rn**2
        status = Status.worst(statuses)
        info = {"method": "block-diagonal", "blocks": infos, "block_status": [s.value for s in statuses]}
        for key in ("error_bound", "approximation_bound"):  # per-column bounds combine as ‖(e_1, …, e_L)‖
            vals = [inf.get(key) for inf in infos]
            if all(v is not None for v in vals):
                info[key] = np.sqrt(sum(np.asarray(v) ** 2 for v in vals))
        advice = [f"block {i}: {d['advice']}" for i, d in enumerate(infos) if "advice" in d and statuses[i] is not Status.SUCCESS]
        if advice:
            info["advice"] = "; ".join(advice)
        info["checked"] = bool(check)
        rnorm = None if rn2 is None else np.sqrt(rn2)
        return xp.concat(Xs, axis=0), status, max(iters), n_mv, info, rnorm, n_check

    # ----------------------------------------------------------------- quadratic forms
    def _split(self, x, name):
        op = self.operator
        if isinstance(x, (list, tuple)):
            if len(x) != op.n_blocks:
                raise ShapeError(f"{name}: expected {op.n_blocks} per-block arrays, got {len(x)}")
            return list(x)
        self._rows_arg(x, name)
        return [x[:, s] for s in op.slices()]

    def _same_rows(self):
        """The blocks' own factors must describe the same samples (one row per training point)."""
        counts = {getattr(p.operator, "n_rows", None) for p in self.parts}
        if len(counts) > 1:
            raise ShapeError(
                f"right/rows: the blocks' own factors have different numbers of rows {sorted(map(str, counts))}; "
                "pass the rows explicitly"
            )

    def quad(self, left, right=None, *, side="auto", chunk_size=None, on_failure=None, results=None, progress=None):
        policy = self.on_failure if on_failure is None else C.choice(on_failure, "on_failure", FAILURE_POLICIES)
        Ls = self._split(left, "left")
        if right is None:
            self._same_rows()
        Rs = [None] * len(self.parts) if right is None else self._split(right, "right")
        out = None
        for i, (p, Lb, Rb) in enumerate(zip(self.parts, Ls, Rs)):
            q = p.quad(Lb, Rb, side=side, chunk_size=chunk_size, on_failure=policy, results=results)
            out = q if out is None else out + q
            if progress is not None:
                progress(i + 1, len(self.parts))
        return out

    def quad_diag(self, rows=None, *, chunk_size=None, on_failure=None, results=None, progress=None):
        policy = self.on_failure if on_failure is None else C.choice(on_failure, "on_failure", FAILURE_POLICIES)
        if rows is None:
            self._same_rows()
        Gs = [None] * len(self.parts) if rows is None else self._split(rows, "rows")
        out = None
        for i, (p, Gb) in enumerate(zip(self.parts, Gs)):
            q = p.quad_diag(Gb, chunk_size=chunk_size, on_failure=policy, results=results)
            out = q if out is None else out + q
            if progress is not None:
                progress(i + 1, len(self.parts))
        return out
