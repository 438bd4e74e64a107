"""The k largest (or smallest) scores per test point, merged chunk by chunk and across ranks.

Memory is ``O(m·k)`` whatever ``n`` is: each chunk's ``m×rows`` scores are reduced to ``m×k``
candidates (``numpy.argpartition`` / ``torch.topk``, no full sort) and merged with the running
candidates.  Indices are global training-row indices.  The final lists are sorted by value
(descending for the largest), ties by ascending index, so they do not depend on how the rows
were chunked or sharded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import _backend as Bk
from ..distributed import all_gather_rows

__all__ = ["TopK", "RunningTopK"]


@dataclass(frozen=True)
class TopK:
    """``values`` and global row ``indices`` (both ``m×k``), row ``t`` for test point ``t``, best first."""

    values: object
    indices: object

    def __iter__(self):  # values, indices = result.top_harmful
        return iter((self.values, self.indices))


def _select(xp, V, k, largest):
    """Positions (along axis 1) of the ``k`` largest/smallest entries of ``V``, unsorted."""
    r = int(V.shape[1])
    if k >= r:
        return None
    if Bk.is_torch(xp):
        return xp.topk(V, k, dim=1, largest=largest, sorted=False).indices
    import numpy as np

    return np.argpartition(-V if largest else V, k - 1, axis=1)[:, :k]


class RunningTopK:
    """Running ``k`` best scores per row of ``m×r`` blocks (``largest=True``: most harmful)."""

    def __init__(self, xp, k: int, largest: bool):
        self.xp, self.k, self.largest = xp, int(k), bool(largest)
        self.values = self.indices = None

    def update(self, V, first: int):
        """Add the scores ``V`` (``m×r``) of global rows ``first, ..., first + r − 1``."""
        xp = self.xp
        r = int(V.shape[1])
        if r == 0:
            return
        idx = xp.arange(first, first + r, dtype=xp.int64, device=Bk.device_of(V))
        idx = xp.broadcast_to(idx[None, :], V.shape)
        self._merge(V, idx)

    def _merge(self, V, idx):
        xp = self.xp
        if self.values is not None:
            V = xp.concat([self.values, V], axis=1)
            idx = xp.concat([self.indices, idx], axis=1)
        pos = _select(xp, V, self.k, self.largest)
        if pos is not None:
            V = xp.take_along_axis(V, pos, axis=1)
            idx = xp.take_along_axis(idx, pos, axis=1)
        self.values, self.indices = V, idx

    def result(self, m: int, dtype, device, k: int) -> TopK:
        """The ``k`` best per row, sorted (value, then index); empty ``m×0`` if no rows were seen."""
        xp = self.xp
        if self.values is None:
            return TopK(
                xp.zeros((m, 0), dtype=dtype, device=device), xp.zeros((m, 0), dtype=xp.int64, device=device)
            )
        V, idx = self.values, self.indices
        o = xp.argsort(idx, axis=1, stable=True)
        V, idx = xp.take_along_axis(V, o, axis=1), xp.take_along_axis(idx, o, axis=1)
        o = xp.argsort(V, axis=1, descending=self.largest, stable=True)
        V, idx = xp.take_along_axis(V, o, axis=1), xp.take_along_axis(idx, o, axis=1)
        return TopK(V[:, :k], idx[:, :k])

    def merged_across_ranks(self, m: int, dtype, device, k: int) -> TopK:
        """Gather every rank's candidates (padded to ``k`` with ±inf, index −1) and keep the global ``k``."""
        xp = self.xp
        local = self.result(m, dtype, device, k)
        have = int(local.values.shape[1])
        V, idx = local.values, local.indices
        if have < k:  # a rank with fewer than k rows: sentinels that never win
            pad = -math.inf if self.largest else math.inf
            V = xp.concat([V, xp.full((m, k - have), pad, dtype=dtype, device=device)], axis=1)
            idx = xp.concat([idx, xp.full((m, k - have), -1, dtype=xp.int64, device=device)], axis=1)
        gv, gi = all_gather_rows(V[None, ...]), all_gather_rows(idx[None, ...])
        out = RunningTopK(xp, k, self.largest)
        out._merge(xp.concat([gv[r] for r in range(int(gv.shape[0]))], axis=1),
                   xp.concat([gi[r] for r in range(int(gi.shape[0]))], axis=1))  # fmt: skip
        return out.result(m, dtype, device, k)
