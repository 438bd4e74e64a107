"""On-disk per-block gradient store: memory-mapped, appendable, crash-safe (issue 12).

A :class:`GradientStore` holds per-sample gradients split into blocks, one raw row-major
``(n, d_l)`` file per block plus a JSON manifest (format in :mod:`invhvp._storeio`).  It is
a ``Sequence`` of per-block ``(n, d_l)`` arrays, like :class:`~invhvp.adapters.BlockGradients`,
but nothing is read until used: blocks are memory maps and :meth:`GradientStore.iter_rows`
streams row chunks with bounded memory.

**Commit protocol** (what makes a killed append harmless): rows are written past the
committed ones, the block files are fsync'ed, then the manifest with the new ``n`` is
written to a temp file, fsync'ed and ``os.replace``'d over the old one.  Readers see only
the rows of the manifest they read; bytes past them are ignored, and truncated when the
store is next opened for appending.

**dtypes**: float32, float64 or bfloat16 on disk.  numpy has no bfloat16: for a bfloat16
store, numpy access (``backend="numpy"``, :meth:`~GradientStore.block_chunks`) yields
float32 chunks decoded chunk by chunk, while :meth:`~GradientStore.torch` and indexing return
``torch.bfloat16`` tensors backed by the mapped file.  For float32/float64 stores indexing
returns read-only ``numpy.memmap`` arrays.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from . import _storeio as io
from ._storeio import StoreFormatError, fingerprint_module
from ._storeread import StoreReader, _as_int
from .errors import InputError, ShapeError

__all__ = ["GradientStore", "StoreFormatError", "fingerprint_module"]


def _check_layout(sizes, names, param_names):
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) == 0:
        raise InputError(f"sizes: expected a non-empty sequence of block sizes d_l, got {sizes!r}")
    sizes = [_as_int(s, f"sizes[{j}]", 1) for j, s in enumerate(sizes)]
    L = len(sizes)
    names = [f"block{j}" for j in range(L)] if names is None else names
    names = list(names) if not isinstance(names, str) else [names]
    if len(names) != L or not all(isinstance(s, str) for s in names):
        raise InputError(f"names: expected {L} str (one per block), got {names!r}")
    if len(set(names)) != L:
        raise InputError(f"names: block names must be unique, got {names!r}")
    if param_names is not None:
        param_names = [list(p) if not isinstance(p, str) else None for p in param_names]
        if len(param_names) != L or not all(p is not None and io._is_str_list(p) for p in param_names):
            raise InputError(f"param_names: expected {L} lists of str (one per block), got {param_names!r}")
    return sizes, names, param_names


class GradientStore(StoreReader, Sequence):
    """Per-block per-sample gradients on disk: a ``Sequence`` of ``(n, d_l)`` arrays.

    Create with :meth:`create`, reopen with :meth:`open`; do not call the constructor.

    Attributes
    ----------
    path : str
    mode : {"r", "a"}
    n : int
        Committed rows (grows with :meth:`append`; a reader sees a snapshot, see :meth:`refresh`).
    sizes, names, param_names : list
        Block sizes ``d_l``, block names, parameter names per block (or ``None``).
    dtype : str
        ``'float32'``, ``'bfloat16'`` or ``'float64'``.
    fingerprint : str, dict or None
        User-supplied identity of the model (e.g. :func:`fingerprint_module`).

    Examples
    --------
    >>> import shutil, tempfile, numpy as np, invhvp as ih
    >>> path = tempfile.mkdtemp() + "/grads"
    >>> with ih.GradientStore.create(path, [3, 2], names=["a", "b"], fingerprint="model-v1") as st:
    ...     st.append([np.ones((4, 3)), np.zeros((4, 2))])
    ...     st.append([np.ones((1, 3)), np.zeros((1, 2))])
    4
    5
    >>> st = ih.GradientStore.open(path)
    >>> st.n, st.sizes, st.names, st.dtype, st.fingerprint
    (5, [3, 2], ['a', 'b'], 'float32', 'model-v1')
    >>> st[0].shape, float(st[0].sum())
    ((5, 3), 15.0)
    >>> for rows, (a, b) in st.iter_rows(3):
    ...     print(rows, a.shape, b.shape)
    slice(0, 3, None) (3, 3) (3, 2)
    slice(3, 5, None) (2, 3) (2, 2)
    >>> st.close(); shutil.rmtree(path)
    """

    def __init__(self, path, manifest, mode, lock=None, fsync=True):
        self._path = os.fspath(path)
        self._m = manifest
        self._mode = mode
        self._lock = lock
        self._fsync = bool(fsync)
        self._maps: dict = {}
        self._files = None
        if mode == "a":
            self._files = [open(self._file(j), "r+b", buffering=0) for j in range(len(self))]

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path,
        sizes,
        dtype="float32",
        *,
        names=None,
        param_names=None,
        fingerprint=None,
        overwrite: bool = False,
        fsync: bool = True,
    ) -> GradientStore:
        """Create an empty store (``n = 0``) at directory ``path``, open for appending.

        Parameters
        ----------
        path : str or os.PathLike
            A directory that does not exist yet or is empty.  With ``overwrite=True`` it
            may hold a gradient store, which is deleted first (a directory holding anything
            else is never deleted).
        sizes : sequence of int
            Block sizes ``d_l`` (e.g. ``BlockGradients.sizes``).
        dtype : {"float32", "bfloat16", "float64"} or numpy/torch dtype
        names : sequence of str, optional
            Unique block names (default ``block0, block1, ...``).
        param_names : sequence of sequences of str, optional
            Parameter names of each block (e.g. ``BlockGradients.param_names``).
        fingerprint : str or JSON-serializable dict, optional
            Identity of the model the gradients belong to (see :func:`fingerprint_module`).
        fsync : bool, default True
            fsync data and manifest on every append, so a commit survives power loss.
            Without it a commit survives the death of the process but not of the machine.

        Raises
        ------
        InputError
            Bad sizes/names, an existing non-empty ``path`` without ``overwrite``, or a store
            that another process has open for appending.
        DTypeError
            Unsupported ``dtype``.
        """
        dtype = io.store_dtype_name(dtype)
        sizes, names, param_names = _check_layout(sizes, names, param_names)
        fingerprint = io.normalize_fingerprint(fingerprint)
        path = os.fspath(path)
        owned = []
        if os.path.lexists(path):
            if not os.path.isdir(path):
                raise InputError(f"path: {path!r} exists and is not a directory")
            entries = sorted(set(os.listdir(path)) - {io.LOCK})
            if entries and not overwrite:
                raise InputError(
                    f"path: {path!r} already exists and is not empty; pass overwrite=True to replace "
                    "a gradient store there, or choose a new path"
                )
            if entries:
                if os.path.exists(os.path.join(path, io.MANIFEST)):
                    try:
                        old = io.read_manifest(path)
                    except StoreFormatError as exc:
                        raise InputError(
                            f"path: refusing to overwrite {path!r}: it is not a gradient store ({exc})"
                        ) from None
                    owned = [io.MANIFEST] + [b["file"] for b in old["blocks"]]
                else:  # a create() that died before its first manifest: only block files
                    owned = [e for e in entries if re.fullmatch(r"block_\d{5}\.bin", e)]
                other = [e for e in entries if e not in owned and not e.startswith(io.TMP_PREFIX)]
                if other:
                    raise InputError(
                        f"path: refusing to overwrite {path!r}: it holds files that are not part of the "
                        f"gradient store, e.g. {other[0]!r}"
                    )
        os.makedirs(path, exist_ok=True)
        lock = io.Lock(path)
        try:
            for name in owned:  # manifest first: a crash here leaves no store, never a damaged one
                try:
                    os.remove(os.path.join(path, name))
                except FileNotFoundError:
                    pass
            io.remove_temps(path)
            blocks = []
            for j, (d, nm) in enumerate(zip(sizes, names)):
                with open(os.path.join(path, io.block_file(j)), "wb"):
                    pass
                pn = None if param_names is None else param_names[j]
                blocks.append({"name": nm, "size": d, "file": io.block_file(j), "param_names": pn})
            from . import __version__

            m = {
                "format": io.FORMAT_NAME,
                "version": io.FORMAT_VERSION,
                "dtype": dtype,
                "byteorder": "little",
                "layout": "row-major",
                "n": 0,
                "blocks": blocks,
                "fingerprint": fingerprint,
                "invhvp_version": __version__,
            }
            io.write_manifest(path, m, fsync=fsync)
        except BaseException:
            lock.release()
            raise
        return cls(path, m, "a", lock, fsync)

    @classmethod
    def open(cls, path, mode: str = "r", *, fingerprint=None, fsync: bool = True) -> GradientStore:
        """Open an existing store: ``mode="r"`` to read, ``"a"`` to read and append.

        Opening is lazy: it reads the manifest and checks the file sizes; blocks are mapped
        when first used.  ``mode="a"`` takes the store's lock (one appender at a time) and
        truncates bytes left past the committed rows by an interrupted append.

        Parameters
        ----------
        fingerprint : str or dict, optional
            If given, must equal the stored fingerprint (InputError otherwise): a guard
            against mixing gradients of different models.

        Raises
        ------
        StoreFormatError
            No manifest, a corrupt one, a newer format version, or a block file shorter than
            the committed rows.
        """
        if mode not in ("r", "a"):
            raise InputError(f"mode: expected 'r' or 'a', got {mode!r}")
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise StoreFormatError(f"path: {path!r} is not a directory holding a gradient store")
        lock = io.Lock(path) if mode == "a" else None
        try:
            m = io.read_manifest(path)
            io.check_files(path, m)
            if fingerprint is not None and io.normalize_fingerprint(fingerprint) != m["fingerprint"]:
                raise InputError(
                    f"fingerprint: the store at {path!r} was written for fingerprint {m['fingerprint']!r}, "
                    f"not {fingerprint!r}: its gradients belong to another model or parameter set"
                )
            if mode == "a":
                item = io.DTYPES[m["dtype"]].itemsize
                for b in m["blocks"]:
                    os.truncate(os.path.join(path, b["file"]), m["n"] * b["size"] * item)
                io.remove_temps(path)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return cls(path, m, mode, lock, fsync)

    # ------------------------------------------------------------------ properties
    path = property(lambda self: self._path)
    mode = property(lambda self: self._mode)
    n = property(lambda self: int(self._opened()["n"]))
    dtype = property(lambda self: self._opened()["dtype"])
    fingerprint = property(lambda self: self._opened()["fingerprint"])
    sizes = property(lambda self: [b["size"] for b in self._opened()["blocks"]])
    names = property(lambda self: [b["name"] for b in self._opened()["blocks"]])
    param_names = property(lambda self: [b["param_names"] for b in self._opened()["blocks"]])
    closed = property(lambda self: self._m is None)

    @property
    def nbytes(self) -> int:
        """Bytes of committed data (all blocks)."""
        return self.n * sum(self.sizes) * io.DTYPES[self.dtype].itemsize

    def __len__(self) -> int:
        return len(self._opened()["blocks"])

    def __getitem__(self, block):
        """Block ``block`` (index or name): ``numpy.memmap``, or a bfloat16 tensor for bfloat16."""
        if isinstance(block, slice):
            return [self[j] for j in range(len(self))[block]]
        return self.torch(block) if self.dtype == "bfloat16" else self.numpy(block)

    def __iter__(self):
        return (self[j] for j in range(len(self)))

    def __repr__(self) -> str:
        if self.closed:
            return f"GradientStore({self._path!r}, closed)"
        return (
            f"GradientStore({self._path!r}, mode={self._mode!r}, n={self.n}, blocks={len(self)}, "
            f"sizes={self.sizes}, dtype={self.dtype!r})"
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Release the lock and files.  Arrays handed out earlier stay valid."""
        if self._files:
            for f in self._files:
                f.close()
        if self._lock is not None:
            self._lock.release()
        self._files = self._lock = self._m = None
        self._maps = {}

    def refresh(self) -> int:
        """Re-read the manifest (a reader sees rows committed since it opened); return ``n``."""
        m = io.read_manifest(self._path)
        io.check_files(self._path, m)
        if [b["size"] for b in m["blocks"]] != [b["size"] for b in self._opened()["blocks"]]:
            raise StoreFormatError(f"path: the store at {self._path!r} was replaced by one of another layout")
        self._m, self._maps = m, {}
        return self.n

    # ------------------------------------------------------------------ helpers
    def _opened(self):
        if self._m is None:
            raise InputError(f"the GradientStore at {self._path!r} is closed")
        return self._m

    def _file(self, j):
        return os.path.join(self._path, self._opened()["blocks"][j]["file"])

    # ------------------------------------------------------------------ writing
    def append(self, chunks) -> int:
        """Append ``k`` rows to every block and commit them; return the new ``n``.

        Parameters
        ----------
        chunks : sequence of arrays
            One ``(k, d_l)`` numpy array or torch tensor (any device, any float dtype) per
            block, the same ``k`` for all; e.g. a ``BlockGradients``.  Cast to the store
            dtype (tensors on their device) and checked to be finite there.

        Either all ``k`` rows are committed or none: on an error, or if the process dies,
        the store keeps its previous ``n``.

        Raises
        ------
        ShapeError
            Wrong number of blocks, wrong ``d_l``, different ``k`` across blocks.
        NonFiniteError
            NaN or infinity in the store dtype (naming the block).
        """
        m = self._opened()
        if self._mode != "a":
            raise InputError(f"the GradientStore at {self._path!r} is open read-only; open it with mode='a'")
        if io.is_array(chunks) or not isinstance(chunks, Sequence):
            raise ShapeError(
                f"chunks: expected a sequence with one (k, d_l) array per block ({len(self)}), "
                f"got {type(chunks).__name__}"
            )
        if len(chunks) != len(self):
            raise ShapeError(f"chunks: expected {len(self)} arrays (one per block), got {len(chunks)}")
        what = [f"chunks[{j}] (block {nm!r})" for j, nm in enumerate(self.names)]
        ks = [io.check_chunk_shape(x, d, w) for x, d, w in zip(chunks, self.sizes, what)]
        if len(set(ks)) > 1:
            raise ShapeError(f"chunks: every block needs the same number of rows k, got {ks}")
        k, n = ks[0], self.n
        if k == 0:
            return n
        item = io.DTYPES[self.dtype].itemsize
        try:
            for j, (x, d) in enumerate(zip(chunks, self.sizes)):
                io.pwrite_all(self._files[j].fileno(), io.encode_chunk(x, self.dtype, what[j]), n * d * item)
            if self._fsync:
                for f in self._files:
                    os.fsync(f.fileno())
            new = dict(m, n=n + k)
            io.write_manifest(self._path, new, fsync=self._fsync)
        except BaseException:
            for f, d in zip(self._files, self.sizes):  # best effort: drop the uncommitted tail
                try:
                    f.truncate(n * d * item)
                except OSError:
                    pass
            raise
        self._m, self._maps = new, {}
        return self.n
