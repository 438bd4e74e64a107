"""Matrix-free Hessian and Gauss-Newton operators from ``torch.func``-style losses."""

from __future__ import annotations

import torch
from torch.func import grad, jvp, vjp, vmap

from .. import _checks as C
from ..errors import DTypeError, InputError
from ..operators import MatrixFree

__all__ = ["hvp_from_loss", "ggn_from_loss"]


def _flatten(params):
    """``(flat 1-D tensor, unflatten)`` for a tensor or a dict of tensors (same dtype and device)."""
    if isinstance(params, torch.Tensor):
        shape = params.shape
        return params.detach().reshape(-1), lambda x: x.reshape(shape)
    if isinstance(params, dict) and params and all(isinstance(v, torch.Tensor) for v in params.values()):
        names = list(params)
        shapes = [params[k].shape for k in names]
        sizes = [params[k].numel() for k in names]
        dtypes = {params[k].dtype for k in names}
        if len(dtypes) != 1:
            raise DTypeError(f"params: all tensors must share one dtype, got {sorted(map(str, dtypes))}")
        flat = torch.cat([params[k].detach().reshape(-1) for k in names])

        def unflatten(x):
            return {k: p.reshape(s) for k, p, s in zip(names, torch.split(x, sizes), shapes)}

        return flat, unflatten
    raise InputError(f"params: expected a torch tensor or a non-empty dict of tensors, got {type(params).__name__}")


def _operator(single, flat, psd, vectorize):
    if flat.dtype not in (torch.float32, torch.float64):
        raise DTypeError(f"params: expected float32 or float64 tensors, got {flat.dtype}")
    matmat = vmap(single, in_dims=1, out_dims=1) if C.flag(vectorize, "vectorize") else None
    return MatrixFree(single, flat.numel(), flat.dtype, device=flat.device, psd=psd, matmat=matmat)


def hvp_from_loss(loss, params, *, psd: bool = False, vectorize: bool = True) -> MatrixFree:
    r"""The Hessian ``∇²_θ loss(θ)`` at ``params`` as a :class:`~invhvp.MatrixFree` operator.

    ``loss(params) -> scalar tensor`` takes the parameters in the structure given (a tensor or a
    dict of tensors, e.g. ``dict(model.named_parameters())`` used with ``torch.func.functional_call``).
    Products are forward-over-reverse ``jvp(grad(loss))`` (one gradient's cost each);
    ``vectorize=True`` batches the columns of a ``matmat`` with ``torch.func.vmap`` (set it to
    False if the loss has data-dependent control flow).  ``psd=False`` by default: a Hessian of a
    non-convex loss may be indefinite (CG reports non-positive curvature; see docs/theory.md §8).

    Examples
    --------
    >>> import torch, invhvp as ih
    >>> A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    >>> H = ih.interop.hvp_from_loss(lambda p: 0.5 * p @ A @ p, torch.zeros(2, dtype=torch.float64))
    >>> H.matvec(torch.tensor([1.0, 0.0], dtype=torch.float64))
    tensor([3., 1.], dtype=torch.float64)
    """
    if not callable(loss):
        raise InputError(f"loss: expected a callable, got {type(loss).__name__}")
    flat, unflatten = _flatten(params)
    g = grad(lambda x: loss(unflatten(x)))

    def single(v):
        return jvp(g, (flat,), (v,))[1]

    return _operator(single, flat, C.flag(psd, "psd"), vectorize)


def ggn_from_loss(outputs, loss_of_outputs, params, *, vectorize: bool = True) -> MatrixFree:
    r"""The Gauss-Newton matrix ``Jᵀ (∇²_z ℓ) J`` at ``params`` as a PSD :class:`~invhvp.MatrixFree`.

    ``outputs(params) -> z`` (any shape, e.g. the logits of a batch), ``loss_of_outputs(z) ->
    scalar`` convex in ``z`` (cross-entropy, squared error), so the operator is positive
    semidefinite.  A product costs one ``jvp`` of ``outputs``, one Hessian-vector product of the
    loss in output space and one ``vjp``.

    Examples
    --------
    >>> import torch, invhvp as ih
    >>> X = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    >>> G = ih.interop.ggn_from_loss(lambda w: X @ w, lambda z: 0.5 * (z**2).sum(), torch.zeros(2, dtype=torch.float64))
    >>> G.matvec(torch.tensor([1.0, 0.0], dtype=torch.float64))   # XᵀX e₁
    tensor([1., 2.], dtype=torch.float64)
    """
    if not callable(outputs) or not callable(loss_of_outputs):
        raise InputError("outputs, loss_of_outputs: expected two callables")
    flat, unflatten = _flatten(params)

    def f(x):
        return outputs(unflatten(x))

    g_out = grad(loss_of_outputs)
    z, pullback = vjp(f, flat)  # linearized once at params: a product is one jvp, one HVP, one pullback

    def single(v):
        Jv = jvp(f, (flat,), (v,))[1]
        HJv = jvp(g_out, (z,), (Jv,))[1]
        return pullback(HJv)[0]

    return _operator(single, flat, True, vectorize)
