"""Reference runs on a few samples: the engines' self-checks and the memory estimate for chunks.

A *probe* runs ``loss_fn`` on a few samples with plain autograd (no vmap, no hooks), while
counting the bytes of the tensors autograd saves for the backward pass (saved-tensor hooks;
parameter and buffer storages excluded).  On one sample, its gradient is an independent
reference for the hooks engine's row of that sample; on a few, its losses are the batched
reference for the vmap engine's per-sample losses; its byte count sizes the chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import SampleCouplingError
from .vmap_engine import call_loss

__all__ = ["DEFAULT_MEMORY_BUDGET", "Probe", "chunk_rows", "probe_samples"]

#: Default ``memory_budget`` of :func:`per_sample_gradients`: 1 GiB of working memory per chunk.
DEFAULT_MEMORY_BUDGET = 2**30


@dataclass
class Probe:
    start: int  # the samples batch[start:stop] were run
    stop: int
    losses: torch.Tensor  # (stop - start,), detached
    grads: dict | None  # one sample with backward: name -> tensor of the parameter's shape
    saved_bytes: int  # activations autograd saved, per sample


def probe_samples(model, loss_fn, chosen: dict, batch, start: int, stop: int, *, backward: bool) -> Probe:
    """Losses, saved-activation bytes per sample and (one sample, ``backward``) the gradient of
    ``batch[start:stop]`` run alone with plain autograd."""
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

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        losses = call_loss(loss_fn, model, params, sample, m)
    grads = None
    if backward and m == 1:
        names = list(params)
        if losses.requires_grad:
            g = torch.autograd.grad(losses[0], [params[n] for n in names], allow_unused=True)
        else:
            g = [None] * len(names)
        grads = {n: torch.zeros_like(params[n]) if x is None else x for n, x in zip(names, g)}
    return Probe(start, stop, losses.detach(), grads, -(-total[0] // m))


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
