"""torch.distributed helpers for sharded reductions over training rows (docs/theory.md §8).

Communication is torch.distributed's (gloo on CPU, NCCL on GPU, launched by ``torchrun``);
invhvp manages no processes or sockets.  Without an initialized process group every
function is the single-process identity, so one code path serves both::

    rank, world_size = ih.distributed.world()
    rows = store.shard()                          # this rank's contiguous rows
    G = sum(U.T @ U for _, (U,) in store.iter_rows(rows=rows, dtype="float64"))
    G = ih.distributed.all_reduce_sum(G)          # U^T U over all ranks

Every collective first exchanges a few integers of metadata (shape, dtype, ``src``), so an
argument that differs across ranks raises the same clear error on every rank instead of
hanging or failing inside the backend.  numpy arrays travel as CPU tensors (moved to the
current CUDA device under NCCL) and come back as numpy arrays.  Importing this module does
not import torch.
"""

from __future__ import annotations

import sys
from numbers import Number

import numpy as np

from .errors import DTypeError, InputError, ShapeError

__all__ = ["is_distributed", "world", "shard_rows", "all_reduce_sum", "all_gather_rows", "broadcast"]

_MAX_NDIM = 8


def is_distributed() -> bool:
    """Whether a torch.distributed process group is initialized (never imports torch)."""
    if "torch" not in sys.modules:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` without a process group."""
    if not is_distributed():
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def _int(x, what, minimum):
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or int(x) < minimum:
        raise InputError(f"{what}: expected an int >= {minimum}, got {x!r}")
    return int(x)


def shard_rows(n: int, rank: int, world_size: int) -> slice:
    """The contiguous rows ``rank`` owns when ``n`` rows are split over ``world_size`` ranks.

    Balanced: the first ``n % world_size`` ranks get ``n // world_size + 1`` rows, the
    others ``n // world_size``; the slices are in rank order and cover ``range(n)``.

    Examples
    --------
    >>> from invhvp.distributed import shard_rows
    >>> [shard_rows(10, r, 3) for r in range(3)]
    [slice(0, 4, None), slice(4, 7, None), slice(7, 10, None)]
    """
    n = _int(n, "n", 0)
    world_size = _int(world_size, "world_size", 1)
    rank = _int(rank, "rank", 0)
    if rank >= world_size:
        raise InputError(f"rank: expected 0 <= rank < world_size = {world_size}, got {rank}")
    q, r = divmod(n, world_size)
    start = rank * q + min(rank, r)
    return slice(start, start + q + (rank < r))


# ----------------------------------------------------------------------------- internals


def _torch():
    import torch
    import torch.distributed as dist

    return torch, dist


def _dtype_table():
    torch, _ = _torch()
    return [
        torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
        torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128,
    ]  # fmt: skip


def _check_array(x, what):
    """``x`` if it is a numpy array or torch tensor (without importing torch)."""
    if isinstance(x, np.ndarray) or type(x).__module__.startswith("torch"):
        return x
    raise DTypeError(f"{what}: expected a numpy array or torch tensor, got {type(x).__name__}")


def _as_tensor(x, what):
    """(tensor sharing x's memory where possible, is_numpy) for a numpy array or torch tensor."""
    torch, _ = _torch()
    if isinstance(x, torch.Tensor):
        return x, False
    if isinstance(x, np.ndarray):
        try:
            return torch.from_numpy(np.ascontiguousarray(x)), True
        except TypeError:
            raise DTypeError(f"{what}: numpy dtype {x.dtype} has no torch equivalent") from None
    raise DTypeError(f"{what}: expected a numpy array or torch tensor, got {type(x).__name__}")


def _comm_device(t):
    """A device the process group's backend can communicate ``t`` on."""
    torch, dist = _torch()
    backend = str(dist.get_backend())
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    if backend == "gloo":
        return torch.device("cpu")
    return t.device  # e.g. "cpu:gloo,cuda:nccl": each device has its backend


def _meta(t, *extra):
    """int64 metadata vector: extra..., dtype code, ndim, shape (padded with -1)."""
    torch, _ = _torch()
    table = _dtype_table()
    code = table.index(t.dtype) if t is not None and t.dtype in table else -1
    shape = list(t.shape) if t is not None else []
    ndim = len(shape) if len(shape) <= _MAX_NDIM else -1
    pad = (shape + [-1] * _MAX_NDIM)[:_MAX_NDIM]
    return torch.tensor([*extra, code, ndim, *pad], dtype=torch.int64)


def _gather_meta(meta):
    """All ranks' metadata vectors as a (world_size, len) int64 CPU tensor."""
    torch, dist = _torch()
    dev = _comm_device(meta)
    parts = [torch.empty_like(meta, device=dev) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, meta.to(dev))
    return torch.stack(parts).cpu()


def _shape(row, k):
    """(dtype code, ndim, shape) from a metadata row whose first k entries are extras."""
    code, ndim = int(row[k]), int(row[k + 1])
    return code, ndim, tuple(int(s) for s in row[k + 2 : k + 2 + max(ndim, 0)])


def _to_numpy_dtype(dtype, what):
    try:
        if type(dtype).__module__.startswith("torch"):
            torch, _ = _torch()
            return torch.empty(0, dtype=dtype).numpy().dtype
        return np.dtype(dtype)
    except TypeError:
        raise DTypeError(f"{what}: {dtype!r} has no numpy equivalent") from None


def _to_torch_dtype(dtype, what):
    torch, _ = _torch()
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype
    except TypeError:
        raise DTypeError(f"{what}: {dtype!r} is not a dtype torch can communicate") from None


# ----------------------------------------------------------------------------- collectives


def all_reduce_sum(x, *, dtype=None, deterministic: bool = False):
    """Elementwise sum of ``x`` over all ranks, returned on every rank.

    Parameters
    ----------
    x : numpy array, torch tensor or Python number
        The same shape and dtype on every rank.
    dtype : numpy or torch dtype, optional
        Cast before reducing and return in this dtype (e.g. float64 to sum float32
        partial sums without further rounding).
    deterministic : bool, default False
        Gather every rank's contribution and add them in rank order, so the result is the
        same bits on every rank and for every backend (equal to
        ``((x_0 + x_1) + x_2) + ...``); costs ``world_size`` times the memory of ``x``.
        The default uses the backend's all-reduce, whose summation order is its own.

    Returns
    -------
    The sum, of the same kind as ``x`` (numpy → numpy, tensor → tensor on ``x``'s device,
    number → number).  A torch tensor is reduced **in place** and returned (as
    ``torch.distributed.all_reduce`` does) unless ``dtype`` changes its dtype; a numpy array
    is never modified.  Without a process group: ``x`` itself (cast if ``dtype`` is given).

    Examples
    --------
    >>> import numpy as np
    >>> from invhvp.distributed import all_reduce_sum
    >>> all_reduce_sum(np.arange(3.0))          # one process: the identity
    array([0., 1., 2.])
    """
    if isinstance(x, Number) and not isinstance(x, bool):
        return all_reduce_sum(np.asarray(x), dtype=dtype, deterministic=deterministic).item()
    if not is_distributed():
        if dtype is None:
            return x
        if isinstance(x, np.ndarray):
            return x.astype(_to_numpy_dtype(dtype, "dtype"), copy=False)
        return x.to(_to_torch_dtype(dtype, "dtype"))
    torch, dist = _torch()
    t, is_np = _as_tensor(x, "x")
    if dtype is not None:
        td = _to_torch_dtype(dtype, "dtype")
        if is_np:
            _to_numpy_dtype(td, "dtype")
        if td != t.dtype:
            t = t.to(td)
    elif is_np:
        t = t.clone()  # from_numpy shares x's memory: never modify a numpy input
    _agree(_gather_meta(_meta(t)), 0, "all_reduce_sum")
    dev = _comm_device(t)
    work = t if (t.device == dev and t.is_contiguous()) else t.to(dev).contiguous()
    if deterministic:
        parts = [torch.empty_like(work) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, work)
        work.copy_(parts[0])
        for p in parts[1:]:
            work += p
    else:
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
    if is_np:
        return work.cpu().numpy()
    if work is not t:
        t.copy_(work)
    return t


def _agree(metas, k, op, rows_may_differ=False):
    """Raise the same DTypeError/ShapeError on every rank unless all ranks' arrays agree."""
    specs = [_shape(m, k) for m in metas]
    desc = "; ".join(f"rank {r}: dtype {_dtype_name(c)} shape {s}" for r, (c, _, s) in enumerate(specs))
    if any(c < 0 for c, _, _ in specs) or len({c for c, _, _ in specs}) > 1:
        raise DTypeError(f"x: {op} needs the same supported dtype on every rank; got {desc}")
    ndims = {nd for _, nd, _ in specs}
    shapes = {s[1:] if rows_may_differ else s for _, _, s in specs}
    if len(shapes) > 1 or min(ndims) < int(rows_may_differ):
        what = "a row dimension and the same trailing shape" if rows_may_differ else "the same shape"
        raise ShapeError(f"x: {op} needs {what} on every rank (at most {_MAX_NDIM} dimensions); got {desc}")
    return specs


def _dtype_name(code):
    return str(_dtype_table()[code]).removeprefix("torch.") if code >= 0 else "unsupported"


def all_gather_rows(x):
    """Concatenate every rank's rows in rank order: ``(Σ_r k_r, ...)`` from ``(k_r, ...)``.

    The row counts ``k_r`` may differ (zero included); the other dimensions and the dtype
    must agree.  Rows are padded to the largest ``k_r`` for the transfer.  Returns the same
    kind as ``x`` (numpy array, or tensor on ``x``'s device); without a process group, ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> from invhvp.distributed import all_gather_rows
    >>> all_gather_rows(np.ones((2, 3))).shape
    (2, 3)
    """
    if not is_distributed():
        if _check_array(x, "x").ndim < 1:
            raise ShapeError(f"x: expected an array with a row dimension, got shape {tuple(x.shape)}")
        return x
    torch, dist = _torch()
    t, is_np = _as_tensor(x, "x")
    specs = _agree(_gather_meta(_meta(t)), 0, "all_gather_rows", rows_may_differ=True)
    counts = [s[0] for _, _, s in specs]
    trail = tuple(t.shape[1:])
    dev = _comm_device(t)
    kmax = max(counts)
    if kmax == 0:
        out = torch.empty((0, *trail), dtype=t.dtype)
    else:
        pad = torch.zeros((kmax, *trail), dtype=t.dtype, device=dev)
        pad[: t.shape[0]] = t
        parts = [torch.empty_like(pad) for _ in counts]
        dist.all_gather(parts, pad)
        out = torch.cat([p[:c] for p, c in zip(parts, counts)])
    return out.cpu().numpy() if is_np else out.to(t.device)


def broadcast(x, src: int = 0):
    """``src``'s array on every rank.

    ``x`` on ``src`` is a numpy array or torch tensor; on the other ranks it is either an
    array of the same shape and dtype (a torch tensor is then overwritten in place and
    returned, like ``torch.distributed.broadcast``) or ``None`` (a new array of ``src``'s
    kind is returned: numpy, or a tensor on the backend's device).  A numpy array is never
    modified.  Without a process group: ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> from invhvp.distributed import broadcast
    >>> broadcast(np.eye(2))
    array([[1., 0.],
           [0., 1.]])
    """
    rank, size = world()
    src = _int(src, "src", 0)
    if src >= size:
        raise InputError(f"src: expected a rank in [0, {size}), got {src}")
    if not is_distributed():
        if x is None:
            raise InputError("x: None is only allowed on ranks other than src")
        return _check_array(x, "x")
    torch, dist = _torch()
    t, is_np = (None, False) if x is None else _as_tensor(x, "x")
    metas = _gather_meta(_meta(t, src, x is not None, is_np))
    srcs = {int(m[0]) for m in metas}
    if len(srcs) > 1:
        raise InputError(f"src: every rank must pass the same src, got {sorted(srcs)}")
    ref = metas[src]
    if not int(ref[1]) or int(ref[3]) < 0:
        raise InputError(f"x: rank src={src} must pass a numpy array or tensor of a supported dtype")
    code, ndim, shape = _shape(ref, 3)
    bad = [r for r, m in enumerate(metas) if int(m[1]) and _shape(m, 3) != (code, ndim, shape)]
    if bad:
        raise ShapeError(
            f"x: ranks {bad} passed arrays whose shape or dtype differ from src's "
            f"({_dtype_name(code)} {shape}); pass None or a matching array"
        )
    dev = _comm_device(t if t is not None else torch.empty(0))
    if rank == src or t is None or is_np:
        buf = t.to(dev) if rank == src else torch.empty(shape, dtype=_dtype_table()[code], device=dev)
        buf = buf.contiguous()
    else:
        buf = t if (t.device == dev and t.is_contiguous()) else t.to(dev).contiguous()
    dist.broadcast(buf, src)
    if rank == src:
        return x
    if t is not None and not is_np:
        if buf is not t:
            t.copy_(buf)
        return t
    return buf.cpu().numpy() if (is_np or (t is None and int(ref[2]))) else buf
