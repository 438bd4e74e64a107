"""Curvature blocks for the pyDVL plug-in (:mod:`invhvp.interop.pydvl`), in torch only.

pyDVL's ``loss(outputs, targets) -> scalar`` becomes invhvp's per-sample losses, and each
block's curvature an invhvp operator whose coordinates follow pyDVL's flattening of the block.
Nothing here imports pyDVL.
"""

from __future__ import annotations

import torch

from .. import _checks as C
from ..errors import InputError
from ..operators import LowRankPlusIdentity, MatrixFree

__all__ = ["CURVATURES", "damping_value", "per_sample_loss", "batch_xy", "same_device", "gram_gradients",
           "curvature_operator", "reordered"]

#: Accepted values of ``curvature`` (besides pyDVL's ``SecondOrderMode``).
CURVATURES = ("gram", "hessian", "ggn")


def damping_value(value, name: str) -> float:
    """One block's damping: ``None`` → 0.0, else a finite float >= 0 (typed error naming ``name``)."""
    if value is None:
        return 0.0
    return float(C.real(value, name, minimum=0.0))


def batch_xy(batch):
    """``batch`` checked to be a pair ``(x, y)``, as pyDVL's influence models iterate data."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        size = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
        raise InputError(
            "data: each batch must be a pair (x, y) of tensors, as pyDVL's influence models expect; "
            f"got a {type(batch).__name__}{size}"
        )
    return batch


def per_sample_loss(loss):
    """pyDVL's ``loss(outputs, targets) -> scalar`` in invhvp's per-sample forms.

    Returns ``(loss_fn, output_fn, output_loss)``: ``loss_fn(model, batch) -> (b,)``,
    ``output_fn(model, batch) -> outputs`` and ``output_loss(outputs, batch) -> (b,)`` (the
    :func:`invhvp.adapters.per_sample_gradients` / ``hvp_operator`` / ``ggn_operator``
    signatures).  Sample ``i``'s loss is ``loss(outputs[i:i+1], targets[i:i+1])``, as pyDVL's
    gradient provider evaluates it.
    """

    def per_row(o, t):
        return loss(o.unsqueeze(0), t.unsqueeze(0))

    def output_loss(outputs, batch):
        return torch.func.vmap(per_row)(outputs, batch_xy(batch)[1])

    def output_fn(model, batch):
        return model(batch_xy(batch)[0])

    def loss_fn(model, batch):
        return output_loss(output_fn(model, batch), batch)

    return loss_fn, output_fn, output_loss


def same_device(a, b) -> bool:
    """Whether two torch devices are the same (``cuda`` matches ``cuda:0``)."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def gram_gradients(model, loss, data, names, dtype) -> dict:
    """Per-sample gradients ``name -> (n, numel)`` of the parameters ``names`` over ``data``."""
    from ..adapters import per_sample_gradients

    g = per_sample_gradients(model, per_sample_loss(loss)[0], data, params=list(names), blocks="tensor", dtype=dtype)
    return dict(zip(g.names, g.blocks))


def curvature_operator(kind: str, model, loss, names, numels: dict, *, grads=None, batches=None):
    """The invhvp operator of one block, coordinates in the order of ``names``.

    ``kind="gram"``: :class:`~invhvp.LowRankPlusIdentity` of ``grads`` (``name -> (n, numel)``);
    ``"hessian"`` / ``"ggn"``: matrix-free :func:`~invhvp.adapters.hvp_operator` /
    :func:`~invhvp.adapters.ggn_operator` over ``batches`` (a list of ``(x, y)``).
    """
    names = list(names)
    if kind == "gram":
        return LowRankPlusIdentity(torch.cat([grads[n] for n in names], dim=1))
    from ..adapters import ggn_operator, hvp_operator

    loss_fn, output_fn, output_loss = per_sample_loss(loss)
    if kind == "hessian":
        op = hvp_operator(model, loss_fn, batches, params=names)
    else:
        op = ggn_operator(model, output_fn, output_loss, batches, params=names)
    return reordered(op, names, numels)


def reordered(op, names, numels):
    """``op`` (flat coordinates in the model's parameter order, ``op.param_names``) with its
    coordinates permuted into the order of ``names``."""
    model_order = list(op.param_names)
    if model_order == list(names):
        return op
    offsets, o = {}, 0
    for n in model_order:
        offsets[n] = o
        o += numels[n]
    perm = torch.cat([torch.arange(offsets[n], offsets[n] + numels[n], device=op.device) for n in names])
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=op.device)
    return _permuted(op, perm, inv)


def _permuted(op, perm, inv):
    """``P A Pᵀ`` on vectors in the new order (``Pᵀv`` is ``v[inv]``, ``P y`` is ``y[perm]``)."""

    def mm(V):
        return op.matmat(V[inv])[perm]

    sampler = None
    if getattr(op, "sampler", None) is not None:

        def sampler(batch_size, rng=None):
            return _permuted(op.sampler(batch_size, rng), perm, inv)

    return MatrixFree(
        lambda v: mm(v[:, None])[:, 0],
        op.size,
        op.dtype,
        device=op.device,
        psd=op.psd,
        matmat=mm,
        sampler=sampler,
        n_samples=getattr(op, "_n_samples", None),
    )
