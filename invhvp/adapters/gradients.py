"""Per-sample loss gradients of a torch model with ``torch.func`` (vmap of grad, in chunks)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.func import functional_call, grad, vmap

from ..errors import DeviceError, DTypeError, InputError, ShapeError

__all__ = ["BlockGradients", "TrainModeWarning", "per_sample_gradients", "select_parameters"]


class TrainModeWarning(UserWarning):
    """The model is in train mode with active dropout: gradients and products are random."""


# ----------------------------------------------------------------- parameter selection


def select_parameters(model: torch.nn.Module, params=None) -> dict[str, torch.nn.Parameter]:
    """The named parameters whose gradients are taken, in the model's order.

    Parameters
    ----------
    model : torch.nn.Module
    params : None, sequence of str, or callable
        ``None``: the trainable (``requires_grad``) LoRA tensors (names containing
        ``lora_A``/``lora_B``, as peft names them) if there are any, otherwise every
        trainable parameter.  A sequence selects parameters by exact name (whether
        trainable or not); a callable ``params(name, parameter) -> bool`` filters
        ``model.named_parameters()``.

    Returns
    -------
    dict
        ``name -> parameter``, non-empty, all on one device.

    Examples
    --------
    >>> import torch
    >>> from invhvp.adapters import select_parameters
    >>> list(select_parameters(torch.nn.Linear(3, 2)))
    ['weight', 'bias']
    """
    if not isinstance(model, torch.nn.Module):
        raise DTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    named = dict(model.named_parameters())
    if params is None:
        chosen = {n: p for n, p in named.items() if p.requires_grad}
        lora = {n: p for n, p in chosen.items() if "lora_A" in n or "lora_B" in n}
        chosen = lora or chosen
        if not chosen:
            raise InputError(
                f"model: has no trainable parameters (all {len(named)} have requires_grad=False); "
                "unfreeze some or pass `params=` with parameter names"
            )
    elif callable(params):
        chosen = {n: p for n, p in named.items() if params(n, p)}
        if not chosen:
            raise InputError("params: the predicate selected no parameter of the model")
    else:
        if isinstance(params, str):
            params = [params]
        try:
            wanted = list(params)
        except TypeError:
            raise InputError(
                f"params: expected None, a sequence of parameter names or a callable, got {type(params).__name__}"
            ) from None
        missing = [n for n in wanted if n not in named]
        if missing:
            raise InputError(
                f"params: no parameter named {missing[0]!r} in the model (first of {len(missing)})"
            )
        if not wanted:
            raise InputError("params: empty selection; name at least one parameter")
        chosen = {n: named[n] for n in named if n in set(wanted)}
    devices = {p.device for p in chosen.values()}
    if len(devices) > 1:
        raise DeviceError(
            f"model: the selected parameters are on several devices {sorted(map(str, devices))}"
        )
    for n, p in chosen.items():
        if p.dtype not in (torch.float32, torch.float64):
            raise DTypeError(f"params: parameter {n!r} has dtype {p.dtype}; expected float32 or float64")
    return chosen


def _group_key(name: str, blocks) -> str:
    if callable(blocks):
        return str(blocks(name))
    if blocks == "tensor":
        return name
    # "module": LoRA A and B of one layer together, otherwise the owning module.
    m = re.search(r"(^|\.)lora_(embedding_)?[AB]\.", name)
    if m:
        return name[: m.start()] or "(root)"
    return name.rsplit(".", 1)[0] if "." in name else name


def _group(names: list[str], blocks) -> list[tuple[str, list[str]]]:
    if not (callable(blocks) or blocks in ("tensor", "module")):
        raise InputError(f"blocks: expected 'tensor', 'module' or a callable name -> key, got {blocks!r}")
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(_group_key(n, blocks), []).append(n)
    return list(groups.items())


# --------------------------------------------------------------------- batches


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


def _check_batch(batch, i: int, name: str):
    """Validate one batch (tensor, tuple/list or dict of tensors) and return its size."""

    def walk(x, path):
        if isinstance(x, torch.Tensor):
            if x.ndim == 0:
                raise ShapeError(
                    f"{name}: batch {i} has a 0-d tensor at {path or 'top level'}; need a batch dimension"
                )
            return
        if isinstance(x, Mapping):
            for k, v in x.items():
                walk(v, f"{path}[{k!r}]")
            return
        if isinstance(x, (tuple, list)):
            for j, v in enumerate(x):
                walk(v, f"{path}[{j}]")
            return
        raise DTypeError(
            f"{name}: batch {i} contains a {type(x).__name__} at {path or 'top level'}; expected a tensor, "
            "or a tuple/list/dict of tensors with a leading batch dimension"
        )

    walk(batch, "")
    sizes = {int(t.shape[0]) for t in _leaves(batch)}
    if not sizes:
        raise DTypeError(f"{name}: batch {i} contains no tensor")
    if len(sizes) > 1:
        raise ShapeError(f"{name}: batch {i} has tensors with different leading sizes {sorted(sizes)}")
    return sizes.pop()


def _to_device(batch, device: torch.device, i: int, name: str):
    def move(t):
        if t.device == device:
            return t
        if t.device.type == "cpu":
            return t.to(device, non_blocking=True)
        raise DeviceError(
            f"{name}: batch {i} has a tensor on {t.device} but the model is on {device}; "
            "move it to the model's device (CPU tensors are moved automatically)"
        )

    return _tree_map(move, batch)


def iter_batches(data, device, name: str = "data"):
    """Yield ``(batch, size)`` with ``batch`` a dict/tuple of tensors on ``device``."""
    if isinstance(data, (torch.Tensor, Mapping)):
        data = [data]
    try:
        it = iter(data)
    except TypeError:
        raise DTypeError(
            f"{name}: expected an iterable of batches (e.g. a DataLoader), got {type(data).__name__}"
        ) from None
    for i, batch in enumerate(it):
        if isinstance(batch, Mapping):
            batch = dict(batch)  # e.g. transformers BatchEncoding
        elif isinstance(batch, list):
            batch = tuple(batch)
        size = _check_batch(batch, i, name)
        yield _to_device(batch, device, i, name), size


def _slice(batch, start, stop):
    return _tree_map(lambda t: t[start:stop], batch)


def model_device(chosen: dict) -> torch.device:
    return next(iter(chosen.values())).device


def warn_if_dropout(model: torch.nn.Module, stacklevel: int = 3) -> bool:
    """Warn (TrainModeWarning) if ``model`` is in train mode with active dropout; return that."""
    if not model.training:
        return False
    active = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 and m.training
    ]
    if active:
        warnings.warn(
            f"model is in train mode with {len(active)} active dropout module(s): per-sample gradients "
            "and curvature products will be random. Call model.eval() first.",
            TrainModeWarning,
            stacklevel=stacklevel,
        )
    return bool(active)


class _Functional:
    """Calls ``model`` with some parameters replaced (``torch.func.functional_call``)."""

    def __init__(self, model, params):
        self._model = model
        self._params = params

    def __call__(self, *args, **kwargs):
        return functional_call(self._model, self._params, args, kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


def call_loss(loss_fn, model, params, batch, size, what="loss_fn"):
    """``loss_fn(functional model, batch)`` checked to be a ``(size,)`` tensor."""
    out = loss_fn(_Functional(model, params), batch)
    if not isinstance(out, torch.Tensor):
        raise DTypeError(f"{what}: must return a tensor of per-sample losses, got {type(out).__name__}")
    if tuple(out.shape) != (size,):
        raise ShapeError(
            f"{what}: must return per-sample losses of shape (batch_size,) = ({size},), got shape "
            f"{tuple(out.shape)}; use reduction='none' instead of a mean or sum"
        )
    return out


# --------------------------------------------------------------------- result


class BlockGradients(Sequence):
    """Per-sample gradients split into blocks: a sequence of ``(n, d_l)`` tensors.

    Block ``l`` holds the flattened gradients of the parameters ``param_names[l]``,
    concatenated in that order.  Indexing and iteration give the block tensors, so a
    ``BlockGradients`` can be passed wherever a list of per-block gradient arrays is expected.

    Attributes
    ----------
    blocks : list of torch.Tensor
        ``(n, d_l)`` tensors on the model's device.
    names : list of str
        One name per block (the parameter name, or the module name for ``blocks="module"``).
    param_names : list of list of str
        Parameters in each block.
    shapes : dict
        ``parameter name -> shape``.
    losses : torch.Tensor
        The per-sample losses, shape ``(n,)``.
    """

    def __init__(self, blocks, names, param_names, shapes, losses):
        self.blocks = list(blocks)
        self.names = list(names)
        self.param_names = [list(p) for p in param_names]
        self.shapes = dict(shapes)
        self.losses = losses

    def __getitem__(self, i):
        return self.blocks[i]

    def __len__(self):
        return len(self.blocks)

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.blocks[0].shape[0])

    @property
    def sizes(self) -> list[int]:
        """Block sizes ``d_l``."""
        return [int(b.shape[1]) for b in self.blocks]

    @property
    def dtype(self):
        return self.blocks[0].dtype

    @property
    def device(self):
        return self.blocks[0].device

    def flat(self) -> torch.Tensor:
        """All blocks side by side: the ``(n, d)`` matrix of full per-sample gradients."""
        return torch.cat(self.blocks, dim=1)

    def __repr__(self) -> str:
        return f"BlockGradients(n={self.n}, blocks={len(self)}, sizes={self.sizes}, dtype={self.dtype}, device={self.device})"


# --------------------------------------------------------------------- main entry


def per_sample_gradients(
    model: torch.nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    data,
    *,
    params=None,
    blocks="tensor",
    chunk_size: int = 32,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    check_per_sample: bool = True,
) -> BlockGradients:
    r"""Per-sample gradients :math:`g_i = \nabla_\theta \ell(z_i)`, grouped into blocks.

    Computed with ``torch.func``: ``vmap(grad(loss of one sample))`` over chunks of
    ``chunk_size`` samples, so the work is batched and the extra memory is bounded by
    ``chunk_size × d`` gradient entries plus one chunk's activations.  Nothing leaves the
    model's device.

    Parameters
    ----------
    model : torch.nn.Module
        A plain module or a peft LoRA model.  Call ``model.eval()`` first: a model in train
        mode with active dropout gives random gradients (a :class:`TrainModeWarning`).
    loss_fn : callable
        ``loss_fn(model, batch) -> losses`` of shape ``(batch_size,)`` (per-sample, e.g.
        ``cross_entropy(..., reduction="none")``).  ``model`` is a callable stand-in for
        the module (call it as you would call the module).
    data : iterable of batches
        e.g. a DataLoader, or a list of batches.  A batch is a tensor, a tuple/list of
        tensors or a dict of tensors (such as a tokenizer's output), all with the same
        leading batch dimension.  CPU tensors are moved to the model's device.
    params : None, sequence of str, or callable
        Which parameters (see :func:`select_parameters`; default: LoRA A/B tensors if any,
        else every trainable parameter).
    blocks : {"tensor", "module"} or callable
        One block per parameter tensor (as the DataInf reference does), one per module
        (``"module"``: A and B of one LoRA layer together), or ``blocks(name) -> key``.
    chunk_size : int, default 32
        Samples per vmap call (memory bound).
    dtype : torch.dtype, default torch.float32
        Storage dtype of the gradients (computation is in the model's dtype).
    progress : bool, default False
        Show a tqdm progress bar over samples.
    check_per_sample : bool, default True
        On the first chunk, compare the batched losses with the per-sample (vmapped) ones
        and raise if they differ (a loss that mixes samples, e.g. batch normalization in
        train mode, has no per-sample gradients).

    Returns
    -------
    BlockGradients
        Sequence of ``(n, d_l)`` tensors, plus names and per-sample losses.

    Raises
    ------
    InputError
        No trainable parameters; a loss that couples samples; empty data.
    ShapeError
        ``loss_fn`` does not return shape ``(batch_size,)``; inconsistent batch sizes.
    DTypeError
        A batch that is not tensors / tuple / dict of tensors.
    DeviceError
        Parameters on several devices, or a batch on another accelerator.

    Examples
    --------
    >>> import torch
    >>> from invhvp.adapters import per_sample_gradients
    >>> model = torch.nn.Linear(3, 2)
    >>> loss = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")
    >>> data = [(torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1]))]
    >>> g = per_sample_gradients(model, loss, data)
    >>> g.names, g.sizes, g.n
    (['weight', 'bias'], [6, 2], 5)
    """
    chosen = select_parameters(model, params)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    if dtype not in (torch.float32, torch.float64):
        raise DTypeError(f"dtype: expected torch.float32 or torch.float64, got {dtype!r}")
    if not callable(loss_fn):
        raise InputError(f"loss_fn: expected a callable loss_fn(model, batch), got {type(loss_fn).__name__}")
    device = model_device(chosen)
    noisy = warn_if_dropout(model)
    names = list(chosen)
    groups = _group(names, blocks)
    detached = {n: p.detach() for n, p in chosen.items()}

    def one(p, sample):
        batch = _tree_map(lambda t: t.unsqueeze(0), sample)
        loss = call_loss(loss_fn, model, p, batch, 1)[0]
        return loss, loss

    per_sample = vmap(
        grad(one, has_aux=True), in_dims=(None, 0), randomness="different" if noisy else "error"
    )

    from tqdm.auto import tqdm

    total = None
    if hasattr(data, "dataset"):
        try:
            total = len(data.dataset)
        except TypeError:
            total = None
    parts: list[list[torch.Tensor]] = [[] for _ in groups]
    losses = []
    checked = not check_per_sample or noisy
    # no_grad: frozen parameters that still require grad (e.g. a trainable head that is not
    # selected) must not build an autograd graph; torch.func.grad ignores the outer no_grad.
    with (
        torch.no_grad(),
        tqdm(total=total, disable=not progress, unit="sample", desc="per-sample gradients") as bar,
    ):
        for batch, size in iter_batches(data, device):
            for s in range(0, size, chunk_size):
                chunk = _slice(batch, s, min(s + chunk_size, size))
                c = min(s + chunk_size, size) - s
                if not checked:
                    with torch.no_grad():
                        ref = call_loss(loss_fn, model, detached, chunk, c)
                g, loss = per_sample(detached, chunk)
                if not checked:
                    _check_coupling(ref, loss)
                    checked = True
                for parts_l, (_, pn) in zip(parts, groups):
                    parts_l.append(torch.cat([g[n].reshape(c, -1) for n in pn], dim=1).to(dtype))
                losses.append(loss.detach().to(dtype))
                bar.update(c)
    if not losses:
        raise InputError("data: yielded no batch")
    out = [torch.cat(p, dim=0) for p in parts]
    return BlockGradients(
        out,
        [k for k, _ in groups],
        [pn for _, pn in groups],
        {n: tuple(p.shape) for n, p in chosen.items()},
        torch.cat(losses),
    )


def _check_coupling(batched: torch.Tensor, single: torch.Tensor) -> None:
    diff = float((batched.detach() - single.detach()).abs().max())
    scale = float(batched.detach().abs().max()) + 1e-6
    tol = 1e-3 if batched.dtype == torch.float32 else 1e-8
    if diff > tol * scale:
        raise InputError(
            f"loss_fn: the losses of a batch differ from the losses of its samples taken one at a time "
            f"(max difference {diff:.3g}): the loss is not per-sample (it couples samples, e.g. batch "
            "normalization in train mode, or normalizes over the batch). Call model.eval() or fix loss_fn; "
            "pass check_per_sample=False to skip this check"
        )
