"""Which parameters get per-sample gradients, how they group into blocks, and model checks."""

from __future__ import annotations

import re
import warnings

import torch

from ..errors import DeviceError, DTypeError, InputError
from .errors import SampleCouplingError

__all__ = [
    "TrainModeWarning",
    "group_parameters",
    "model_device",
    "refuse_batchnorm_in_train_mode",
    "select_parameters",
    "warn_if_dropout",
]


class TrainModeWarning(UserWarning):
    """The model is in train mode with active dropout: gradients and products are random."""


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


def group_parameters(names: list[str], blocks) -> list[tuple[str, list[str]]]:
    """``[(block name, [parameter names])]`` for ``blocks`` = "tensor", "module" or a callable."""
    if not (callable(blocks) or blocks in ("tensor", "module")):
        raise InputError(f"blocks: expected 'tensor', 'module' or a callable name -> key, got {blocks!r}")
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(_group_key(n, blocks), []).append(n)
    return list(groups.items())


def model_device(chosen: dict) -> torch.device:
    """The device of the selected parameters (one device, checked by :func:`select_parameters`)."""
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


def refuse_batchnorm_in_train_mode(model: torch.nn.Module) -> None:
    """Raise :class:`SampleCouplingError` if a batch-norm module of ``model`` is in train mode.

    In train mode batch normalization normalizes with the statistics of the batch, so every
    sample's loss depends on every other sample: per-sample gradients are not defined.
    """
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training:
            raise SampleCouplingError(
                f"model: {type(m).__name__} module {name or '(root)'!r} is in train mode, where it "
                "normalizes with batch statistics and couples the samples of a batch, so per-sample "
                "gradients are not defined. Call model.eval() first"
            )
