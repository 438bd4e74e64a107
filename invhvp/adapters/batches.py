"""Batches as users hold them: one batch, or an iterable (DataLoader) of batches.

A *batch* is a tensor, a tuple/list of tensors (and nested tuples/lists/dicts of tensors)
or a dict of tensors (e.g. a transformers ``BatchEncoding``), every tensor with the same
leading (batch) dimension.  ``data`` is either one batch or an iterable of batches:

- a tensor, a dict, a tuple with at least one tensor element, or a list of two or more
  elements with at least one tensor is **one** batch (``data=(X, Y)`` and ``[X, Y]`` are
  the batch ``(X, Y)``, not two batches);
- a one-element list ``[b]`` is a list holding the one batch ``b`` (so ``[X]`` passes the
  tensor ``X`` itself, as ``[(X, Y)]`` passes ``(X, Y)``);
- a tuple/list whose elements are all tuples/lists/dicts is a list of batches;
- any other iterable (a DataLoader, a generator) yields batches.

Several single-tensor batches go in as ``[(X1,), (X2,)]``, a generator or a DataLoader.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from ..errors import DeviceError, ShapeError
from .errors import BatchError

__all__ = ["iter_batches", "sample_signature"]


def _tree_map(fn, tree):
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, Mapping):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
    return tuple(_tree_map(fn, v) for v in tree)


def _leaves(tree):
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, Mapping):
        return [x for v in tree.values() for x in _leaves(v)]
    return [x for v in tree for x in _leaves(v)]


def _slice(batch, start, stop):
    return _tree_map(lambda t: t[start:stop], batch)


def sample_signature(batch) -> tuple:
    """Per-sample shapes and dtypes of the leaves (what memory per sample depends on)."""
    return tuple((tuple(t.shape[1:]), t.dtype) for t in _leaves(batch))


def _is_one_batch(data) -> bool:
    if isinstance(data, (torch.Tensor, Mapping)):
        return True
    if isinstance(data, tuple) or (isinstance(data, list) and len(data) > 1):
        return any(isinstance(x, torch.Tensor) for x in data)
    return False


def _check_batch(batch, i: int, name: str, single: bool) -> int:
    """Validate one batch (tensor, tuple/list or dict of tensors) and return its size."""
    where = name if single else f"{name}: batch {i}"

    def walk(x, path):
        if isinstance(x, torch.Tensor):
            if x.ndim == 0:
                raise ShapeError(f"{where} has a 0-d tensor at {path or 'top level'}; need a batch dimension")
            return
        if isinstance(x, Mapping):
            for k, v in x.items():
                walk(v, f"{path}[{k!r}]")
            return
        if isinstance(x, (tuple, list)):
            for j, v in enumerate(x):
                walk(v, f"{path}[{j}]")
            return
        hint = ""
        if type(x).__module__ == "numpy":
            hint = " (convert numpy arrays with torch.as_tensor)"
        elif isinstance(x, str):
            hint = " (tokenize text with return_tensors='pt')"
        raise BatchError(
            f"{where} contains a {type(x).__name__} at {path or 'top level'}; expected a tensor, "
            f"or a tuple/list/dict of tensors with a leading batch dimension{hint}"
        )

    walk(batch, "")
    sizes = {int(t.shape[0]) for t in _leaves(batch)}
    if not sizes:
        raise BatchError(f"{where} contains no tensor")
    if len(sizes) > 1:
        hint = ""
        if isinstance(batch, tuple) and all(isinstance(x, torch.Tensor) for x in batch):
            hint = (
                "; a tuple/list of tensors is ONE batch (e.g. (inputs, labels)): to pass several "
                "batches, use a list of tuples [(X1,), (X2,)] or a DataLoader"
            )
        raise ShapeError(f"{where} has tensors with different leading sizes {sorted(sizes)}{hint}")
    return sizes.pop()


def _to_device(batch, device: torch.device, where: str):
    def move(t):
        if t.device == device:
            return t
        if t.device.type == "cpu":
            return t.to(device, non_blocking=True)
        raise DeviceError(
            f"{where} has a tensor on {t.device} but the model is on {device}; "
            "move it to the model's device (CPU tensors are moved automatically)"
        )

    return _tree_map(move, batch)


def _normalize(batch):
    if isinstance(batch, Mapping):
        return dict(batch)  # e.g. transformers BatchEncoding
    if isinstance(batch, list):
        return tuple(batch)
    return batch


def iter_batches(data, device, name: str = "data"):
    """Yield ``(batch, size)`` with ``batch`` a tensor, dict or tuple of tensors on ``device``.

    Parameters
    ----------
    data : batch or iterable of batches
        See the module docstring for what counts as one batch.
    device : torch.device
        CPU tensors are moved there; tensors on another accelerator raise ``DeviceError``.
    name : str
        Argument name used in error messages.

    Raises
    ------
    BatchError
        ``data`` is neither a batch nor an iterable of batches, or a batch holds a non-tensor.
    ShapeError
        Tensors of one batch with different leading sizes, or 0-d tensors.

    Examples
    --------
    >>> import torch
    >>> from invhvp.adapters.batches import iter_batches
    >>> X, y = torch.zeros(5, 3), torch.zeros(5)
    >>> [s for _, s in iter_batches((X, y), "cpu")]  # one batch
    [5]
    >>> [s for _, s in iter_batches([(X[:2], y[:2]), (X[2:], y[2:])], "cpu")]  # two
    [2, 3]
    """
    device = torch.device(device)
    if _is_one_batch(data):
        batch = _normalize(data)
        size = _check_batch(batch, 0, name, single=True)
        yield _to_device(batch, device, name), size
        return
    if isinstance(data, (str, bytes)) or type(data).__module__ == "numpy" or not isinstance(data, Iterable):
        hint = " (convert numpy arrays with torch.as_tensor)" if type(data).__module__ == "numpy" else ""
        raise BatchError(
            f"{name}: expected an iterable of batches (e.g. a DataLoader) or one batch (a tensor, a "
            f"tuple/list or dict of tensors), got {type(data).__name__}{hint}"
        )
    for i, batch in enumerate(data):
        if not isinstance(batch, (torch.Tensor, Mapping, tuple, list)):
            raise BatchError(
                f"{name}: batch {i} is a {type(batch).__name__}; expected a tensor, or a tuple/list/dict "
                "of tensors with a leading batch dimension"
            )
        batch = _normalize(batch)
        size = _check_batch(batch, i, name, single=False)
        yield _to_device(batch, device, f"{name}: batch {i}"), size


def total_samples(data) -> int | None:
    """Number of samples when cheaply known (a DataLoader's dataset, a single batch), else None."""
    if _is_one_batch(data):
        first = (
            data
            if isinstance(data, torch.Tensor)
            else next(
                (
                    x
                    for x in (data.values() if isinstance(data, Mapping) else data)
                    if isinstance(x, torch.Tensor)
                ),
                None,
            )
        )
        return int(first.shape[0]) if first is not None and first.ndim else None
    ds = getattr(data, "dataset", None)
    if ds is not None:
        try:
            return len(ds)
        except TypeError:
            return None
    return None
