"""Where the training rows come from: a :class:`~invhvp.GradientStore` or per-block arrays, per rank.

:class:`Rows` holds the rows this process owns and knows, after :meth:`Rows.agree`, how they sit
among all ranks' rows (global ``n``, this rank's global offset).  Chunks come out in the working
array library, dtype and device, which the test gradients define.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import _backend as Bk
from .._arrays import row_chunks, rows_per_chunk
from ..distributed import all_gather_rows, world
from ..errors import InputError, ShapeError
from ..store import GradientStore

__all__ = ["Rows", "test_blocks", "place"]


def _blocks(x, name):
    """Per-block arrays: a list/tuple or other sequence of them (e.g. BlockGradients), or one array."""
    if isinstance(x, (list, tuple)) or (isinstance(x, Sequence) and not hasattr(x, "shape")):
        x = list(x)
        if not x:
            raise InputError(f"{name}: expected an (n, d) array or a non-empty sequence of them")
        return list(x), [f"{name}[{j}]" for j in range(len(x))]
    return [x], [name]


def test_blocks(test_grads):
    """``(xp, dtype, device, blocks)`` of the test gradients (``(m, d_l)`` per block, finite)."""
    if test_grads is None:
        raise InputError(
            "test_grads: expected an (m, d) array or a sequence of them (one per block), got None"
        )
    blocks, names = _blocks(test_grads, "test_grads")
    xp, m, _ = Bk.check_factor(blocks[0], names[0])
    dtype, device = blocks[0].dtype, Bk.device_of(blocks[0])
    for T, nm in zip(blocks, names):
        Bk.check_factor(T, nm)
        Bk.check_compatible(T, xp=xp, dtype=dtype, device=device, name=nm)
        if int(T.shape[0]) != m:
            raise ShapeError(f"{nm}: has {T.shape[0]} rows, but {names[0]} has {m}: one row per test point")
        Bk.check_finite(xp, T, nm)
    return xp, dtype, device, blocks


class Rows:
    """This rank's training rows, read ``chunk_rows`` at a time.

    Attributes
    ----------
    sizes : list of int
    n_local, start : int
        Rows owned here and the global index of the first one.
    n : int
        Rows over all ranks (after :meth:`agree`).
    row_bytes : int
        Bytes one row occupies in the source (what a pass reads per row).
    """

    def __init__(self, train, rows, xp, dtype, device):
        self.xp, self.dtype, self.device = xp, dtype, device
        self.torch = Bk.is_torch(xp)
        if isinstance(train, GradientStore):
            self._init_store(train, rows)
        else:
            if rows is not None:
                raise InputError(
                    "rows: only a GradientStore takes rows=; with arrays, pass this rank's rows themselves"
                )
            self._init_arrays(train)
        self.n = self.n_local
        self.spans = [(self.start, self.n_local)]

    def _init_store(self, st, rows):
        if st.closed:
            raise InputError(f"train: the GradientStore at {st.path!r} is closed")
        self.kind, self.store = "store", st
        self.sizes = list(st.sizes)
        if rows is None:
            sl = st.shard()
        elif isinstance(rows, slice) and rows.step in (None, 1):
            start, stop, _ = rows.indices(st.n)
            sl = slice(start, max(start, stop))
        else:
            raise InputError(f"rows: expected None or a slice with step 1 of the store's rows, got {rows!r}")
        self.start, self.n_local = sl.start, sl.stop - sl.start
        self.row_bytes = sum(self.sizes) * (2 if st.dtype == "bfloat16" else np.dtype(st.dtype).itemsize)
        self._dtype_name = "float64" if _is64(self.dtype) else "float32"

    def _init_arrays(self, train):
        blocks, names = _blocks(train, "train")
        self.kind, self.arrays = "arrays", blocks
        n = None
        for U, nm in zip(blocks, names):
            Bk.check_compatible(U, xp=self.xp, dtype=self.dtype, device=self.device, name=nm)
            if U.ndim != 2 or int(U.shape[1]) == 0:
                raise ShapeError(f"{nm}: expected a 2-D (n, d) array with d >= 1, got shape {tuple(U.shape)}")
            if n is not None and int(U.shape[0]) != n:
                raise ShapeError(
                    f"{nm}: has {U.shape[0]} rows, but {names[0]} has {n}: one row per training point"
                )
            n = int(U.shape[0])
        self.sizes = [int(U.shape[1]) for U in blocks]
        self.n_local = n
        self.start = 0  # set by agree(): rank order
        self.row_bytes = sum(self.sizes) * (8 if _is64(self.dtype) else 4)

    def check_widths(self, widths):
        if len(widths) != len(self.sizes):
            raise ShapeError(f"test_grads: expected {len(self.sizes)} blocks like train, got {len(widths)}")
        for j, (a, b) in enumerate(zip(widths, self.sizes)):
            if a != b:
                raise ShapeError(f"test_grads[{j}]: has {a} columns, but training block {j} has {b}")

    def agree(self):
        """Exchange ``(start, rows)`` with the other ranks: global ``n`` and this rank's offset.

        Arrays: ranks' rows are concatenated in rank order.  Store rows: the ranks' slices must
        be disjoint and together form one contiguous range of store rows.
        """
        rank, _ = world()
        if self.kind == "arrays":
            counts = all_gather_rows(np.array([self.n_local], dtype=np.int64))
            self.start = int(counts[:rank].sum())
        spans = all_gather_rows(np.array([[self.start, self.n_local]], dtype=np.int64))
        self.spans = [(int(a), int(c)) for a, c in spans]
        live = sorted((a, c) for a, c in self.spans if c > 0)
        for (a, c), (b, _) in zip(live, live[1:]):
            if a + c != b:
                raise InputError(
                    f"rows: the ranks' store rows must be disjoint and contiguous; got (start, rows) per rank "
                    f"{self.spans}. Pass rows=store.shard() (the default) on every rank"
                )
        self.n = sum(c for _, c in self.spans)
        if self.n == 0:
            raise ShapeError("train: no training rows (every rank holds 0 rows)")
        self.first = live[0][0]  # global index of the first training row
        self.rank_offset = sum(c for _, c in self.spans[:rank])  # where this rank's rows sit in a gather
        return self

    def chunk_rows(self, chunk_rows):
        return rows_per_chunk(sum(self.sizes), chunk_rows)

    def n_chunks(self, chunk_rows) -> int:
        c = self.chunk_rows(chunk_rows)
        return -(-self.n_local // c)

    def chunks(self, chunk_rows):
        """``(global slice, [chunk_l])`` over this rank's rows, in the working library/dtype/device."""
        c = self.chunk_rows(chunk_rows)
        if self.kind == "store":
            backend = "torch" if self.torch else "numpy"
            yield from self.store.iter_rows(
                c,
                rows=slice(self.start, self.start + self.n_local),
                backend=backend,
                device=self.device if self.torch else None,
                dtype=self._dtype_name,
            )
            return
        for s in row_chunks(self.n_local, c):
            yield slice(self.start + s.start, self.start + s.stop), [U[s] for U in self.arrays]


def _is64(dtype) -> bool:
    return Bk.eps(dtype) < 1e-10


def place(xp, gathered, spans, first):
    """Rows gathered in rank order (``spans`` = (start, rows) per rank) put in global row order."""
    starts = [a for a, c in spans if c > 0]
    if starts == sorted(starts):
        return gathered
    out = xp.zeros(gathered.shape, dtype=gathered.dtype, device=Bk.device_of(gathered))
    pos = 0
    for a, c in spans:
        out[a - first : a - first + c, ...] = gathered[pos : pos + c, ...]
        pos += c
    return out
