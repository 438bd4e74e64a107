"""Reference runs on a few samples: the engines' self-checks and the memory estimate for chunks.

A *probe* runs ``loss_fn`` forward on a few samples taken alone (no vmap, no hooks
engine), counting the bytes of the tensors autograd saves for the backward pass
(saved-tensor hooks; parameter and buffer storages excluded): that sizes the chunks.  Its
losses are the reference for the engines' losses of the same samples (a loss that mixes
the samples of a batch gives different values), and while it runs, the modules the hooks
engine will use are checked to see the samples in their leading dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import EngineError, SampleCouplingError
from .vmap_engine import call_loss

__all__ = ["DEFAULT_MEMORY_BUDGET", "Probe", "chunk_rows", "probe_samples"]

#: Default ``memory_budget`` of :func:`per_sample_gradients`: 1 GiB of working memory per chunk.
DEFAULT_MEMORY_BUDGET = 2**30


@dataclass
class Probe:
    start: int  # the samples batch[start:stop] were run
    stop: int
    losses: torch.Tensor  # (stop - start,), detached
    saved_bytes: int  # activations autograd saved, per sample


def _layout_hook(name: str, m: int):
    def hook(module, args, kwargs, out):
        a = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(a, torch.Tensor) and (a.ndim < 2 or a.shape[0] != m):
            raise EngineError(
                f"engine: module {name!r} received an input of shape {tuple(a.shape)} for a batch of {m} "
                "sample(s); the hooks engine needs the samples in the leading dimension (batch-first "
                "inputs, not flattened (batch·tokens, features)). Use engine='vmap'"
            )

    return hook


def probe_samples(model, loss_fn, chosen: dict, batch, start: int, stop: int, *, layers=()) -> Probe:
    """Losses and saved-activation bytes per sample of ``batch[start:stop]`` run alone.

    ``layers``: the hooks engine's layers, whose inputs must have ``stop − start`` rows
    (:class:`EngineError` otherwise).
    """
    from .batches import _tree_map

    m = stop - start
    sample = _tree_map(lambda t: t[start:stop].clone(), batch)
    params = {n: p.detach().requires_grad_(True) for n, p in chosen.items()}
    exclude = set()
    for t in list(model.parameters()) + list(model.buffers()):
        try:
            exclude.add(t.untyped_storage().data_ptr())
        except RuntimeError:
            pass
    seen: set = set()
    total = [0]

    def pack(t):
        try:
            st = t.untyped_storage()
            ptr = st.data_ptr()
        except (RuntimeError, NotImplementedError):
            return t
        if ptr not in exclude and ptr not in seen:
            seen.add(ptr)
            total[0] += st.nbytes()
        return t

    handles = [
        lay.module.register_forward_hook(_layout_hook(lay.name, m), with_kwargs=True) for lay in layers
    ]
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            losses = call_loss(loss_fn, model, params, sample, m)
    finally:
        for h in handles:
            h.remove()
    return Probe(start, stop, losses.detach(), -(-total[0] // m))


def bytes_per_sample(saved_bytes: int, d: int, itemsize: int) -> int:
    """Working memory of one sample in a chunk: ``2·saved + 3·d·itemsize``.

    Autograd's saved activations (measured) count twice (the backward pass's temporaries
    are of the same order), and three gradient-sized buffers (per-sample gradients, their
    flattened copy, the storage-dtype copy) are added.
    """
    return 2 * int(saved_bytes) + 3 * int(d) * int(itemsize)


def chunk_rows(size: int, per_sample: int, budget: int) -> int:
    """Samples per chunk: ``budget // per_sample``, between 1 and ``size``."""
    return max(1, min(int(size), int(budget) // max(1, int(per_sample))))


def _tol(dtype) -> float:
    return 1e-3 if dtype == torch.float32 else 1e-8


def close(a: torch.Tensor, b: torch.Tensor) -> tuple[bool, float]:
    """``(max|a − b| <= tol·(max|b| + tiny), max|a − b|)`` with a dtype-dependent ``tol``."""
    diff = float((a - b.to(a.dtype)).abs().max()) if a.numel() else 0.0
    scale = float(b.abs().max()) if b.numel() else 0.0
    return diff <= _tol(a.dtype) * (scale + 1e-6), diff


def check_losses(batched: torch.Tensor, single: torch.Tensor) -> None:
    """Raise :class:`SampleCouplingError` if losses in a batch differ from those of the samples alone."""
    ok, diff = close(batched.detach(), single.detach())
    if not ok:
        raise SampleCouplingError(
            f"loss_fn: the losses of a batch differ from the losses of its samples taken one at a time "
            f"(max difference {diff:.3g}): the loss is not per-sample (it couples samples, e.g. batch "
            "normalization in train mode, or normalizes over the batch). Call model.eval() or fix loss_fn; "
            "pass check_per_sample=False to skip this check"
        )
