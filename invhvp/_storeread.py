"""Read access of :class:`invhvp.GradientStore`: memory maps, chunked numpy/torch iteration.

The mixin :class:`StoreReader` needs from its host class: ``n``, ``sizes``, ``names``,
``dtype``, ``__len__``, ``_file(j)`` and a ``_maps`` dict (cleared whenever ``n`` changes).
"""

from __future__ import annotations

import numpy as np

from . import _storeio as io
from ._arrays import row_chunks, rows_per_chunk
from .distributed import shard_rows, world
from .errors import DeviceError, DTypeError, InputError

__all__ = ["StoreReader", "BlockIndexError"]


class BlockIndexError(InputError, IndexError):
    """A block index or name that the store does not have."""


def _as_int(x, what, minimum):
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or int(x) < minimum:
        raise InputError(f"{what}: expected an int >= {minimum}, got {x!r}")
    return int(x)


class StoreReader:
    """Reading methods shared by every open :class:`~invhvp.GradientStore`."""

    def _index(self, block) -> int:
        L = len(self)
        if isinstance(block, str):
            if block not in self.names:
                raise BlockIndexError(f"block: no block named {block!r}; blocks are {self.names}")
            return self.names.index(block)
        if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or not -L <= block < L:
            raise BlockIndexError(f"block: expected a block index in [-{L}, {L}) or a name, got {block!r}")
        return int(block) % L

    def _map(self, j, mode):
        """Memory map of block ``l``'s committed rows; mode "r" (read-only) or "c" (copy-on-write)."""
        key = (j, mode)
        if key not in self._maps:
            dt = io.DTYPES[self.dtype]
            if mode == "c" and self.dtype == "bfloat16":
                dt = np.dtype("<i2")  # torch has no uint16 view to bfloat16 on every version
            shape = (self.n, self.sizes[j])
            if self.n == 0:
                mm = np.empty(shape, dt)
                mm.flags.writeable = mode == "c"
            else:
                mm = np.memmap(self._file(j), dtype=dt, mode=mode, shape=shape)
            self._maps[key] = mm
        return self._maps[key]

    def _rows(self, rows) -> slice:
        if rows is None:
            return slice(0, self.n)
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise InputError(f"rows: expected None or a slice with step 1, got {rows!r}")
        start, stop, _ = rows.indices(self.n)
        return slice(start, max(start, stop))

    def _target(self, backend, device, dtype):
        """(backend, output dtype name) for numpy/torch access, validated."""
        if backend not in ("numpy", "torch"):
            raise InputError(f"backend: expected 'numpy' or 'torch', got {backend!r}")
        if backend == "numpy":
            if device is not None and str(device) != "cpu":
                raise DeviceError(f"device: numpy chunks live on the host; got device={device!r}")
            out = ("float32" if self.dtype == "bfloat16" else self.dtype) if dtype is None else dtype
            out = io.store_dtype_name(out)
            if out == "bfloat16":
                raise DTypeError("dtype: numpy has no bfloat16; use dtype='float32' or backend='torch'")
            return backend, out
        return backend, self.dtype if dtype is None else io.store_dtype_name(dtype)

    def _span(self, j, sl, mode):
        """A fresh map of rows ``sl`` of block ``j``: unmapped when the chunk is dropped, so
        the pages a long iteration touched do not accumulate in this process's RSS."""
        d = self.sizes[j]
        dt = np.dtype("<i2") if (mode == "c" and self.dtype == "bfloat16") else io.DTYPES[self.dtype]
        rows = sl.stop - sl.start
        if rows <= 0:
            return self._map(j, mode)[sl]
        mm = np.memmap(self._file(j), dtype=dt, mode=mode, offset=sl.start * d * dt.itemsize, shape=(rows, d))
        return np.asarray(mm)

    def _chunk(self, j, sl, backend, device, out, whole=False):
        if backend == "numpy":
            raw = self._map(j, "r") if whole else self._span(j, sl, "r")
            if self.dtype == "bfloat16":
                raw = io.bf16_bits_to_f32(raw)
                return raw if out == "float32" else raw.astype(np.float64)
            return raw if out == self.dtype else raw.astype(io.DTYPES[out])
        import torch

        t = torch.from_numpy(self._map(j, "c") if whole else self._span(j, sl, "c"))
        if self.dtype == "bfloat16":
            t = t.view(torch.bfloat16)
        return t.to(device=device, dtype=io.torch_dtype(out))

    # ------------------------------------------------------------------ reading
    def numpy(self, block=None):
        """Read-only ``numpy.memmap`` of a block's committed rows (all blocks if ``block`` is None).

        Not available for bfloat16 stores (numpy has no bfloat16): use :meth:`block_chunks`
        or :meth:`iter_rows` (float32 chunks) or :meth:`torch`.
        """
        if self.dtype == "bfloat16":
            raise DTypeError(
                "numpy has no bfloat16: read a bfloat16 store with block_chunks()/iter_rows() "
                "(float32 chunks) or torch() (bfloat16 tensors backed by the file)"
            )
        if block is None:
            return [self._map(j, "r") for j in range(len(self))]
        return self._map(self._index(block), "r")

    def torch(self, block=None, *, device=None, dtype=None):
        """Torch tensor(s) of the committed rows (all blocks if ``block`` is None).

        On the CPU in the store dtype (``device=None``, ``dtype=None``) the tensor is backed
        by a private copy-on-write map of the file: nothing is read until used, and writes
        to it never reach the file.  Another ``device``/``dtype`` copies the whole block.
        """
        _, out = self._target("torch", device, dtype)
        if block is None:
            return [self._chunk(j, None, "torch", device, out, True) for j in range(len(self))]
        return self._chunk(self._index(block), None, "torch", device, out, True)

    def block_chunks(self, block, chunk_rows=None, *, rows=None, backend="numpy", device=None, dtype=None):
        """Iterate over ``(row_slice, chunk)`` of one block, ``chunk_rows`` rows at a time.

        Same options as :meth:`iter_rows`; the default ``chunk_rows`` keeps a chunk near
        ``invhvp._arrays.CHUNK_ELEMENTS`` entries.
        """
        j = self._index(block)
        sl, (backend, out) = self._rows(rows), self._target(backend, device, dtype)
        c = self._chunk_rows(chunk_rows, self.sizes[j])
        spans = [slice(sl.start + r.start, sl.start + r.stop) for r in row_chunks(sl.stop - sl.start, c)]
        return ((s, self._chunk(j, s, backend, device, out)) for s in spans)

    def iter_rows(self, chunk_rows=None, *, rows=None, backend="numpy", device=None, dtype=None):
        """Iterate over row chunks of all blocks: ``(row_slice, [chunk_0, ..., chunk_{L-1}])``.

        Parameters
        ----------
        chunk_rows : int, optional
            Rows per chunk (the last may be shorter); default: about
            ``invhvp._arrays.CHUNK_ELEMENTS`` entries over all blocks.
        rows : slice, optional
            Only these rows (step 1), e.g. ``store.shard()`` for this rank's rows.
        backend : {"numpy", "torch"}
        device : torch device, optional
            Where torch chunks go (default CPU).
        dtype : optional
            Output dtype; default the store dtype (float32 for numpy on a bfloat16 store).

        Yields
        ------
        row_slice : slice
            The global rows of this chunk.
        chunks : list
            ``(rows, d_l)`` per block.  Chunks in the store dtype on the CPU are views of the
            mapped files (read-only for numpy, copy-on-write for torch); others are fresh
            arrays.  Memory stays ``O(chunk_rows · Σ d_l)`` beyond the page cache.

        Examples
        --------
        A bfloat16 store read as float32 numpy chunks and as bfloat16 tensors; rank 1 of 2
        reads only its own rows:

        >>> import shutil, tempfile, numpy as np, torch, invhvp as ih
        >>> path = tempfile.mkdtemp() + "/g"
        >>> with ih.GradientStore.create(path, [2], "bfloat16") as st:
        ...     st.append([np.array([[1.0, 1 / 3], [2.0, 3.0], [4.0, 5.0]])])
        3
        >>> st = ih.GradientStore.open(path)
        >>> [(rows, U.dtype, U[0, 1]) for rows, (U,) in st.iter_rows(2)]
        [(slice(0, 2, None), dtype('float32'), np.float32(0.33398438)), (slice(2, 3, None), dtype('float32'), np.float32(5.0))]
        >>> [(rows, U.dtype) for rows, (U,) in st.iter_rows(rows=st.shard(1, 2), backend="torch")]
        [(slice(2, 3, None), torch.bfloat16)]
        >>> shutil.rmtree(path)
        """
        sl, (backend, out) = self._rows(rows), self._target(backend, device, dtype)
        c = self._chunk_rows(chunk_rows, sum(self.sizes))
        L = len(self)

        def gen():
            for r in row_chunks(sl.stop - sl.start, c):
                s = slice(sl.start + r.start, sl.start + r.stop)
                yield s, [self._chunk(j, s, backend, device, out) for j in range(L)]

        return gen()

    def _chunk_rows(self, chunk_rows, width):
        if chunk_rows is None:
            return rows_per_chunk(width)
        return _as_int(chunk_rows, "chunk_rows", 1)

    def shard(self, rank=None, world_size=None) -> slice:
        """Contiguous rows owned by ``rank`` of ``world_size`` (default: this process's rank
        in the torch.distributed group, or all rows): pass it as ``rows=`` to :meth:`iter_rows`."""
        r, w = world()
        return shard_rows(self.n, r if rank is None else rank, w if world_size is None else world_size)
