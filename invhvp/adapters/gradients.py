"""Per-sample loss gradients of a torch model, by the hooks or the vmap engine, in chunks.

The pieces live in sibling modules: :mod:`.selection` (which parameters, blocks, model
checks), :mod:`.batches` (what ``data`` may be), :mod:`.hooks_engine` and
:mod:`.vmap_engine` (the two engines), :mod:`.probe` (one-sample references and the memory
estimate), :mod:`.runner` (engine choice, fallback, chunking, the sink) and
:mod:`.block_gradients` (the result type and its safetensors files).  The helpers other
modules import from here are re-exported below.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from ..errors import DTypeError, InputError
from .batches import _leaves, _slice, _tree_map, iter_batches  # noqa: F401 (used by .operators)
from .block_gradients import BlockGradients, MemorySink
from .errors import BatchError, EngineError, SampleCouplingError
from .probe import DEFAULT_MEMORY_BUDGET
from .runner import compute_gradients
from .selection import (  # noqa: F401 (model_device, warn_if_dropout: used by .operators)
    TrainModeWarning,
    group_parameters,
    model_device,
    refuse_batchnorm_in_train_mode,
    select_parameters,
    warn_if_dropout,
)
from .vmap_engine import _Functional, call_loss  # noqa: F401 (used by .operators)

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "BatchError",
    "BlockGradients",
    "EngineError",
    "SampleCouplingError",
    "TrainModeWarning",
    "per_sample_gradients",
    "select_parameters",
]

ENGINES = ("auto", "hooks", "vmap")


def per_sample_gradients(
    model: torch.nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    data,
    *,
    params=None,
    blocks="tensor",
    engine: str = "auto",
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    check_per_sample: bool = True,
    store=None,
    store_dtype=None,
) -> BlockGradients:
    r"""Per-sample gradients :math:`g_i = \nabla_\theta \ell(z_i)`, grouped into blocks.

    Two engines, chosen automatically (``engine="auto"``):

    - ``"hooks"``, when every selected parameter is the weight or bias of an ``nn.Linear``
      (peft's LoRA ``lora_A``/``lora_B`` are such modules) or a transformers ``Conv1D``:
      one batched forward and backward of :math:`\sum_i \ell_i` per chunk, with forward
      hooks recording each layer's input :math:`a_{i,t}` and output gradient
      :math:`\delta_{i,t}`; then :math:`\nabla_W\ell_i = \sum_t \delta_{i,t} a_{i,t}^T`,
      :math:`\nabla_b\ell_i = \sum_t \delta_{i,t}` (one ``bmm`` per layer).  No ``vmap``,
      so the model runs as written (transformers' data-dependent attention masks, SDPA).
    - ``"vmap"`` otherwise: ``torch.func.vmap(grad(loss of one sample))``, for any
      parameters of a model that ``torch.func`` can batch.

    In auto mode, if the hooks engine cannot represent the model (a selected weight also
    used outside its module's forward, inputs that are not batch-first) it falls back to
    vmap; if vmap cannot run either, an :class:`EngineError` names the failing module and
    source line and the fix.  ``result.info["engine"]`` says which engine ran.

    Chunks: ``chunk_size=None`` sizes them from ``memory_budget``: per sample,
    ``2 × (activation bytes autograd saves for one sample, measured on a one-sample probe
    for each new per-sample input shape) + 3 × d × itemsize``.  Nothing leaves the model's
    device.

    Parameters
    ----------
    model : torch.nn.Module
        A plain module or a peft LoRA model.  Call ``model.eval()`` first: active dropout
        gives random gradients (a :class:`TrainModeWarning`); batch normalization in train
        mode couples samples (a :class:`SampleCouplingError`).
    loss_fn : callable
        ``loss_fn(model, batch) -> losses`` of shape ``(batch_size,)`` (per-sample, e.g.
        ``cross_entropy(..., reduction="none")``).  ``model`` is the module (hooks engine)
        or a callable stand-in for it (vmap engine): call it as you would call the module.
    data : batch or iterable of batches
        One batch — a tensor, a tuple/list of tensors such as ``(X, y)``, or a dict of
        tensors such as a tokenizer's ``BatchEncoding`` — or an iterable of batches (a
        DataLoader, a list of tuples/dicts).  All tensors of a batch share the leading
        (batch) dimension; CPU tensors are moved to the model's device.
    params : None, sequence of str, or callable
        Which parameters (see :func:`select_parameters`; default: LoRA A/B tensors if any,
        else every trainable parameter).
    blocks : {"tensor", "module"} or callable
        One block per parameter tensor (as the DataInf reference does), one per module
        (``"module"``: A and B of one LoRA layer together), or ``blocks(name) -> key``.
    engine : {"auto", "hooks", "vmap"}, default "auto"
        See above.  ``"hooks"`` raises :class:`EngineError` if a selected parameter is not
        a linear layer's weight/bias; neither explicit engine falls back to the other.
    chunk_size : int or None, default None
        Samples per engine call; ``None`` = from ``memory_budget``.
    memory_budget : int or None, default None
        Bytes of working memory per chunk for ``chunk_size=None``;
        ``None`` = :data:`DEFAULT_MEMORY_BUDGET` (1 GiB).
    dtype : torch.float32, torch.float64 or None, default None
        Storage dtype of the gradients; ``None`` = the selected parameters' dtype
        (computation is always in the model's dtype).
    progress : bool, default False
        Show a tqdm progress bar over samples.
    store : str, os.PathLike or GradientStore, optional
        Stream the gradients to an on-disk :class:`~invhvp.GradientStore` chunk by chunk
        instead of keeping them in memory: a path creates a new store (its fingerprint is
        :func:`~invhvp.fingerprint_module` of the selected parameters); an open store
        (``GradientStore.open(path, mode="a")``) is appended to (its block sizes must match).
        The result's blocks are then CPU tensors backed by the store's files (lazy, read-only
        copy-on-write maps), ``result.info["store"]`` is the store's path.  An interrupted
        run leaves the rows of the chunks completed so far.
    store_dtype : {"float32", "bfloat16", "float64"}, optional
        Dtype of a new store (default: ``dtype``).
    check_per_sample : bool, default True
        On the first chunk of each engine, check against plain autograd.  hooks: the loss
        of sample 0 in the batch against sample 0 alone, and the gradient the hooked calls
        explain (``Σ δ aᵀ``) against the ordinary gradient of the summed loss (a weight also
        used outside its module); the one-sample probe also checks that hooked modules see
        batch-first inputs.  vmap: its per-sample losses against a batched forward of up to
        8 samples.  A loss that couples samples raises :class:`SampleCouplingError`; a
        hooks mismatch makes auto fall back to vmap (``engine="hooks"`` raises
        :class:`EngineError`).

    Returns
    -------
    BlockGradients
        Sequence of ``(n, d_l)`` tensors, plus names, per-sample losses and ``info``.

    Raises
    ------
    InputError
        No trainable parameters; empty data; bad ``chunk_size``, ``memory_budget``, ``engine``.
    SampleCouplingError
        Batch normalization in train mode; a loss that couples samples.
    EngineError
        The requested engine (or, in auto mode, both) cannot run this model.
    BatchError
        ``data`` is not a batch or an iterable of batches (an ``InputError``).
    ShapeError
        ``loss_fn`` does not return shape ``(batch_size,)``; inconsistent batch sizes.
    DeviceError
        Parameters on several devices, or a batch on another accelerator.

    Examples
    --------
    >>> import torch
    >>> from invhvp.adapters import per_sample_gradients
    >>> model = torch.nn.Linear(3, 2)
    >>> loss = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")
    >>> X, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    >>> g = per_sample_gradients(model, loss, (X, y))
    >>> g.names, g.sizes, g.n, g.info["engine"]
    (['weight', 'bias'], [6, 2], 5, 'hooks')
    """
    chosen = select_parameters(model, params)
    if engine not in ENGINES:
        raise InputError(f"engine: expected one of {ENGINES}, got {engine!r}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise InputError(f"chunk_size: expected a positive int or None, got {chunk_size!r}")
    if memory_budget is None:
        memory_budget = DEFAULT_MEMORY_BUDGET
    elif isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1:
        raise InputError(f"memory_budget: expected a positive number of bytes (int), got {memory_budget!r}")
    if dtype is None:
        dtype = functools.reduce(torch.promote_types, (p.dtype for p in chosen.values()))
    elif dtype not in (torch.float32, torch.float64):
        raise DTypeError(f"dtype: expected torch.float32, torch.float64 or None, got {dtype!r}")
    if not callable(loss_fn):
        raise InputError(f"loss_fn: expected a callable loss_fn(model, batch), got {type(loss_fn).__name__}")
    refuse_batchnorm_in_train_mode(model)
    noisy = warn_if_dropout(model)
    groups = group_parameters(list(chosen), blocks)
    # every finished chunk goes to sink.append([(k, d_l) tensor per block]): memory or a store
    sink = MemorySink() if store is None else _store_sink(store, store_dtype or dtype, model, chosen, groups)
    losses, info = compute_gradients(
        model,
        loss_fn,
        data,
        chosen,
        groups,
        sink,
        engine=engine,
        chunk_size=chunk_size,
        memory_budget=memory_budget,
        dtype=dtype,
        progress=progress,
        check=check_per_sample,
        noisy=noisy,
    )
    if store is not None:
        info["store"] = str(sink.path)
        if sink is not store:  # we created it: close it (a store the caller opened stays open)
            sink.close()
        blocks_out = _reopen(sink.path)
    else:
        blocks_out = sink.blocks()
    return BlockGradients(
        blocks_out,
        [k for k, _ in groups],
        [pn for _, pn in groups],
        {n: tuple(p.shape) for n, p in chosen.items()},
        losses,
        info,
    )


def _store_sink(store, dtype, model, chosen, groups):
    """An on-disk GradientStore open for appending, with the blocks of ``groups``."""
    from ..store import GradientStore, fingerprint_module

    sizes = [sum(chosen[n].numel() for n in names) for _, names in groups]
    names = [k for k, _ in groups]
    if isinstance(store, GradientStore):
        if store.mode != "a":
            raise InputError("store: the GradientStore is open read-only; open it with mode='a' to append")
        if list(store.sizes) != sizes:
            raise InputError(f"store: its block sizes {list(store.sizes)} differ from the model's blocks {sizes}")
        return store
    dt = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16"}.get(dtype, dtype)
    return GradientStore.create(
        store,
        sizes,
        dtype=dt,
        names=names,
        param_names=[list(pn) for _, pn in groups],
        fingerprint=fingerprint_module(model, params=list(chosen)),
    )


def _reopen(path):
    from ..store import GradientStore

    return GradientStore.open(path).torch()
