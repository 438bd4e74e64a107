"""On-disk format of :class:`invhvp.GradientStore`: manifest, dtype codecs, durable writes.

Layout of a store directory::

    manifest.json        the committed state (replaced atomically, never edited in place)
    block_00000.bin      block 0: raw little-endian row-major (n, d_0) array, no header
    block_00001.bin      ...
    .lock                advisory lock held by the one appending process (fcntl.flock)

``manifest.json`` (format version 1)::

    {"format": "invhvp.GradientStore", "version": 1, "dtype": "float32" | "bfloat16" | "float64",
     "byteorder": "little", "layout": "row-major", "n": <committed rows>,
     "blocks": [{"name": str, "size": d_l, "file": "block_00000.bin", "param_names": [str] | null}, ...],
     "fingerprint": str | dict | null, "invhvp_version": str}

bfloat16 entries are stored as the upper 16 bits of the float32 value (round to nearest
even), i.e. the bit pattern of ``torch.bfloat16``.  A block file may be *longer* than
``n·d_l·itemsize`` bytes (an append that was interrupted): bytes past the committed rows
are ignored by readers and truncated by the next appending session.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from . import _backend as Bk
from .errors import DTypeError, InputError, NonFiniteError, ShapeError

FORMAT_NAME = "invhvp.GradientStore"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
TMP_PREFIX = MANIFEST + ".tmp"

#: store dtype name -> (numpy storage dtype of the raw file, bytes per entry)
DTYPES = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8"), "bfloat16": np.dtype("<u2")}


class StoreFormatError(InputError):
    """A store directory is missing, corrupt, truncated, or written by a newer invhvp."""


def block_file(j: int) -> str:
    return f"block_{j:05d}.bin"


def store_dtype_name(dtype) -> str:
    """``'float32'``, ``'bfloat16'`` or ``'float64'`` from a name, numpy dtype or torch dtype."""
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
    elif type(dtype).__module__.startswith("torch"):
        name = str(dtype).removeprefix("torch.")
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = repr(dtype)
    if name not in DTYPES:
        raise DTypeError(f"dtype: expected 'float32', 'bfloat16' or 'float64', got {dtype!r}")
    return name


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}[name]


# ----------------------------------------------------------------------------- manifest


def _bad(path, what):
    return StoreFormatError(f"path: {os.fspath(path)!r} is not a readable gradient store: {what}")


def _is_int(x, minimum=0):
    return isinstance(x, int) and not isinstance(x, bool) and x >= minimum


def read_manifest(path) -> dict:
    """Read and validate ``path/manifest.json``; StoreFormatError on any problem."""
    mpath = os.path.join(path, MANIFEST)
    try:
        with open(mpath, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise _bad(path, f"no {MANIFEST}") from None
    except OSError as exc:
        raise _bad(path, f"cannot read {MANIFEST} ({exc})") from None
    try:
        m = json.loads(raw)
    except ValueError:
        raise _bad(path, f"{MANIFEST} is not valid JSON") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT_NAME:
        raise _bad(path, f"{MANIFEST} does not describe an {FORMAT_NAME}")
    v = m.get("version")
    if not _is_int(v, 1):
        raise _bad(path, f"invalid format version {v!r}")
    if v > FORMAT_VERSION:
        raise StoreFormatError(
            f"path: {os.fspath(path)!r} was written in format version {v} by a newer invhvp; this "
            f"version reads format versions up to {FORMAT_VERSION}. Upgrade invhvp to read it."
        )
    if m.get("dtype") not in DTYPES:
        raise _bad(path, f"unsupported dtype {m.get('dtype')!r}")
    if m.get("byteorder") != "little" or m.get("layout") != "row-major":
        raise _bad(path, "only little-endian row-major block files are supported")
    if not _is_int(m.get("n")):
        raise _bad(path, f"invalid row count n={m.get('n')!r}")
    blocks = m.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        raise _bad(path, "no blocks")
    for j, b in enumerate(blocks):
        ok = (
            isinstance(b, dict)
            and isinstance(b.get("name"), str)
            and _is_int(b.get("size"), 1)
            and isinstance(b.get("file"), str)
            and b["file"] == os.path.basename(b["file"])
            and b["file"] not in ("", ".", "..", MANIFEST, LOCK)
            and (b.get("param_names") is None or _is_str_list(b["param_names"]))
        )
        if not ok:
            raise _bad(path, f"block {j} entry is invalid: {b!r}")
    return m


def _is_str_list(x):
    return isinstance(x, list) and all(isinstance(s, str) for s in x)


def check_files(path, m) -> None:
    """StoreFormatError if a block file is missing or shorter than the committed rows."""
    item = DTYPES[m["dtype"]].itemsize
    for j, b in enumerate(m["blocks"]):
        fpath = os.path.join(path, b["file"])
        need = m["n"] * b["size"] * item
        try:
            have = os.stat(fpath).st_size
        except FileNotFoundError:
            raise _bad(path, f"block {j} ({b['name']!r}) file {b['file']} is missing") from None
        if have < need:
            raise StoreFormatError(
                f"path: {os.fspath(path)!r}: block {j} ({b['name']!r}) file {b['file']} has {have} bytes "
                f"but the manifest commits n={m['n']} rows of {b['size']} {m['dtype']} values "
                f"({need} bytes); the store was truncated or damaged"
            )


def write_manifest(path, m: dict, *, fsync: bool) -> None:
    """Atomically replace ``path/manifest.json``: write a temp file, fsync it, ``os.replace``."""
    data = json.dumps(m, indent=1, allow_nan=False).encode()
    tmp = os.path.join(path, f"{TMP_PREFIX}.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, os.path.join(path, MANIFEST))
    if fsync:
        fsync_dir(path)


def fsync_dir(path) -> None:
    """Make a rename inside ``path`` durable (best effort: not every platform can)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_temps(path) -> None:
    for name in os.listdir(path):
        if name.startswith(TMP_PREFIX):
            try:
                os.remove(os.path.join(path, name))
            except FileNotFoundError:
                pass


def normalize_fingerprint(fp, name="fingerprint"):
    """``None``, a str, or a JSON-serializable dict, returned as it will read back from disk."""
    if fp is None or isinstance(fp, str):
        return fp
    if not isinstance(fp, dict):
        raise InputError(f"{name}: expected None, a str or a JSON-serializable dict, got {type(fp).__name__}")
    try:
        return json.loads(json.dumps(fp, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: the dict is not JSON-serializable ({exc})") from None


# ----------------------------------------------------------------------------- locking


class Lock:
    """Exclusive advisory lock on ``path/.lock`` (released on close or process death)."""

    def __init__(self, path):
        self._f = open(os.path.join(path, LOCK), "a+b")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no locking
            return
        try:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._f.close()
            raise InputError(
                f"path: {os.fspath(path)!r} is open for appending by another process; "
                "only one process may append at a time (readers may open it with mode='r')"
            ) from None

    def release(self):
        self._f.close()


# ----------------------------------------------------------------------------- writing


def pwrite_all(fd: int, buf: np.ndarray, offset: int) -> None:
    """Write all bytes of the contiguous array ``buf`` at byte ``offset`` of ``fd``."""
    mv = memoryview(buf).cast("B")
    done = 0
    while done < len(mv):
        if hasattr(os, "pwrite"):
            w = os.pwrite(fd, mv[done:], offset + done)
        else:  # pragma: no cover - Windows
            os.lseek(fd, offset + done, os.SEEK_SET)
            w = os.write(fd, mv[done:])
        if w <= 0:  # pragma: no cover
            raise OSError(f"write returned {w}")
        done += w


def f32_to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of finite float32 ``a``, rounded to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    r = u >> np.uint32(16)  # one uint32 temporary, updated in place
    r &= np.uint32(1)
    r += u
    r += np.uint32(0x7FFF)
    r >>= np.uint32(16)
    return r.astype("<u2")


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 bit patterns (exact)."""
    return (np.asarray(b).astype(np.uint32) << np.uint32(16)).view(np.float32)


def is_array(x) -> bool:
    return isinstance(x, np.ndarray) or type(x).__module__.startswith("torch")


def check_chunk_shape(x, d: int, what: str) -> int:
    """Validate one ``(k, d)`` chunk; return ``k``."""
    if not is_array(x):
        raise DTypeError(f"{what}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ShapeError(f"{what}: expected a 2-D (k, {d}) array, got shape {tuple(x.shape)}")
    if int(x.shape[1]) != d:
        raise ShapeError(f"{what}: expected {d} columns (the block size d_l), got shape {tuple(x.shape)}")
    if isinstance(x, np.ndarray):
        ok = x.dtype.kind == "f"
    else:
        ok = x.is_floating_point()
    if not ok:
        raise DTypeError(f"{what}: expected a floating-point array, got dtype {x.dtype}")
    return int(x.shape[0])


def encode_chunk(x, name: str, what: str) -> np.ndarray:
    """``x`` as a contiguous host array in the raw storage dtype of store dtype ``name``.

    Values are cast (on ``x``'s device for tensors) and then checked: NonFiniteError if any
    is NaN or infinite in the store dtype (including finite values that overflow it).
    """
    if not isinstance(x, np.ndarray):  # torch tensor: cast and check on its device
        t = x.detach().to(torch_dtype(name))
        _check_finite(Bk.namespace(t), t, what, name)
        if name == "bfloat16":
            import torch

            return t.contiguous().view(torch.int16).cpu().numpy().view("<u2")
        return np.ascontiguousarray(t.cpu().numpy(), dtype=DTYPES[name])
    with np.errstate(over="ignore"):
        f = np.ascontiguousarray(x, dtype="<f8" if name == "float64" else "<f4")
    _check_finite(np, f, what, name)
    if name != "bfloat16":
        return f
    bits = f32_to_bf16_bits(f)
    overflow = int(np.count_nonzero((bits & np.uint16(0x7F80)) == np.uint16(0x7F80)))
    if overflow:
        raise NonFiniteError(
            f"{what}: {overflow} value(s) overflow bfloat16 (|x| > 3.39e38) and would be stored as infinity"
        )
    return bits


def _check_finite(xp, a, what, name):
    if a.shape[0]:
        with np.errstate(over="ignore"):  # a finite float32 chunk may overflow its own sum
            Bk.check_finite(xp, a, f"{what} (as {name}, the store dtype)")


def fingerprint_module(module, *, params=None, samples: int | None = 4096) -> str:
    """A cheap deterministic fingerprint of a torch module's named parameters.

    SHA-256 over each parameter's name, shape and dtype and the exact bits of ``samples``
    evenly spaced entries (all entries if it has at most ``samples``, or with
    ``samples=None``).  Only the samples leave the device.  Equal models give equal
    fingerprints on any device; a change confined to unsampled entries goes unnoticed
    (use ``samples=None`` for a full hash).

    Parameters
    ----------
    module : torch.nn.Module
    params : sequence of str, optional
        Names of the parameters to include (default: all, in ``named_parameters`` order).
    samples : int or None, default 4096

    Returns
    -------
    str
        ``"sha256:<hex>"``.

    Examples
    --------
    >>> import torch, invhvp as ih
    >>> a = torch.nn.Linear(3, 2); b = torch.nn.Linear(3, 2)
    >>> b.load_state_dict(a.state_dict())
    <All keys matched successfully>
    >>> ih.fingerprint_module(a) == ih.fingerprint_module(b)
    True
    >>> with torch.no_grad():
    ...     b.bias[0] += 1
    >>> ih.fingerprint_module(a) == ih.fingerprint_module(b)
    False
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise DTypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    if samples is not None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
            raise InputError(f"samples: expected None or an int >= 2, got {samples!r}")
    named = dict(module.named_parameters())
    if params is not None:
        missing = [p for p in params if p not in named]
        if isinstance(params, str) or missing:
            raise InputError(f"params: expected a sequence of parameter names of the module, got {params!r}")
        named = {k: v for k, v in named.items() if k in set(params)}
    h = hashlib.sha256(b"invhvp.fingerprint_module/1")
    for name, p in named.items():
        t = p.detach().reshape(-1)
        if samples is not None and t.numel() > samples:
            idx = torch.arange(samples, device=t.device) * (t.numel() - 1) // (samples - 1)
            t = t[idx]
        raw = t.contiguous().cpu().view(torch.uint8).numpy().tobytes()
        h.update(json.dumps([name, list(p.shape), str(p.dtype)]).encode())
        h.update(len(raw).to_bytes(8, "little") + raw)
    return "sha256:" + h.hexdigest()
