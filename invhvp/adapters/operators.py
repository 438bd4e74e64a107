"""invhvp operators built from a torch model: Gram form, Hessian-vector and Gauss-Newton-vector products."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.func import grad, jvp, vjp, vmap

from ..errors import DTypeError, InputError, ShapeError
from ..operators import BlockDiagonal, LowRankPlusIdentity, MatrixFree
from .gradients import (
    _Functional,
    _leaves,
    _slice,
    _tree_map,
    call_loss,
    iter_batches,
    model_device,
    select_parameters,
    warn_if_dropout,
)

__all__ = ["gram_operator", "hvp_operator", "ggn_operator"]


def gram_operator(gradients, *, shift: float = 0.0, scale: float | None = None) -> BlockDiagonal:
    r"""Block-diagonal Gram (empirical Fisher) operator ``diag(G_1, …, G_L)``, ``G_l = (1/n) U_lᵀU_l``.

    Each block is a :class:`~invhvp.LowRankPlusIdentity` over the ``(n, d_l)`` per-sample
    gradients of that block: no ``d_l×d_l`` matrix is formed, and :class:`~invhvp.Exact`
    solves it by Woodbury when ``n < d_l``.

    Parameters
    ----------
    gradients : BlockGradients or sequence of (n, d_l) tensors/arrays
        e.g. the output of :func:`per_sample_gradients`.
    shift : float, default 0.0
        Multiple of the identity added to every block (a solve's ``damping`` comes on top).
    scale : float, optional
        Weight of ``U_lᵀU_l``; default ``1/n``.

    Examples
    --------
    >>> import torch
    >>> from invhvp.adapters import gram_operator
    >>> op = gram_operator([torch.ones(4, 3), torch.ones(4, 2)])
    >>> op.n_blocks, op.size
    (2, 5)
    """
    blocks = list(gradients)
    if not blocks:
        raise InputError("gradients: expected at least one (n, d_l) block")
    return BlockDiagonal([LowRankPlusIdentity(U, shift=shift, scale=scale) for U in blocks])


# ------------------------------------------------------------------ shared machinery


class _ModelProducts:
    """Flattening, cached data and per-batch products shared by the HVP and GGN operators."""

    def __init__(self, model, data, params, chunk_rows, name):
        chosen = select_parameters(model, params)
        self.model = model
        self.names = list(chosen)
        self.shapes = [tuple(p.shape) for p in chosen.values()]
        self.numels = [p.numel() for p in chosen.values()]
        self.params = {n: p.detach() for n, p in chosen.items()}
        self.device = model_device(chosen)
        self.dtype = next(iter(chosen.values())).dtype
        if len({p.dtype for p in chosen.values()}) > 1:
            raise DTypeError(
                "params: the selected parameters have different dtypes; select parameters of one dtype"
            )
        self.noisy = warn_if_dropout(model, stacklevel=4)
        self.batches = list(iter_batches(data, self.device, name))
        if not self.batches:
            raise InputError(f"{name}: yielded no batch")
        self.n = sum(s for _, s in self.batches)
        self.size = sum(self.numels)
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise InputError(f"chunk_size: expected a positive int, got {chunk_rows!r}")
        self.chunk_rows = chunk_rows

    def unflatten(self, V):
        """``(k, d)`` → dict of ``(k, *shape)`` tensors."""
        out, o = {}, 0
        for n, s, m in zip(self.names, self.shapes, self.numels):
            out[n] = V[:, o : o + m].reshape((V.shape[0], *s))
            o += m
        return out

    def flatten(self, tree, k):
        return torch.cat([tree[n].reshape(k, -1) for n in self.names], dim=1)

    def product(self, single, V, batches, n):
        """``(1/n) Σ_batches Σ_samples`` of ``single(params, batch, tangent)`` for ``V`` of shape (d, k)."""
        if V.dtype != self.dtype:
            raise DTypeError(f"V: dtype {V.dtype} differs from the model's {self.dtype}")
        k = V.shape[1]
        T = self.unflatten(V.T)
        rand = "different" if self.noisy else "error"
        batched = vmap(single, in_dims=(None, None, 0), randomness=rand)
        acc = torch.zeros((k, self.size), dtype=self.dtype, device=self.device)
        with (
            torch.no_grad()
        ):  # torch.func transforms ignore it; it keeps frozen-but-trainable tensors graph-free
            for batch, size in batches:
                for s in range(0, size, self.chunk_rows):
                    chunk = _slice(batch, s, min(s + self.chunk_rows, size))
                    acc = acc + self.flatten(batched(self.params, chunk, T), k)
        return (acc / n).T.contiguous()

    def sampler(self, single, kind):
        data = _concat([b for b, _ in self.batches])
        n = self.n

        def sample(batch_size, rng=None):
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise InputError(f"batch_size: expected a positive int, got {batch_size!r}")
            gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
            idx = torch.as_tensor(gen.integers(0, n, size=batch_size), device=self.device)
            sub = [(_tree_map(lambda t: t[idx], data), batch_size)]
            return MatrixFree(
                lambda v: self.product(single, v[:, None], sub, batch_size)[:, 0],
                self.size,
                self.dtype,
                device=self.device,
                psd=kind == "ggn",
                matmat=lambda V: self.product(single, V, sub, batch_size),
            )

        return sample

    def operator(self, single, psd, kind):
        def mm(V):
            return self.product(single, V, self.batches, self.n)

        op = MatrixFree(
            lambda v: mm(v[:, None])[:, 0],
            self.size,
            self.dtype,
            device=self.device,
            psd=psd,
            matmat=mm,
            sampler=self.sampler(single, kind),
            n_samples=self.n,
        )
        op.param_names = list(self.names)
        return op


def _concat(batches):
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(batches, dim=0)
    if isinstance(first, dict):
        return {k: _concat([b[k] for b in batches]) for k in first}
    return tuple(_concat([b[i] for b in batches]) for i in range(len(first)))


# ---------------------------------------------------------------------- HVP


def hvp_operator(
    model: torch.nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    data,
    *,
    params=None,
    chunk_size: int = 64,
) -> MatrixFree:
    r"""Matrix-free Hessian of the mean training loss, ``H = (1/n) Σ_i ∇²_θ ℓ(z_i)``.

    Products are forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``), and a
    product with ``k`` vectors is one ``vmap`` over the ``k`` tangents per chunk of data:
    cost ≈ ``k`` × (2–3 forward/backward passes over the data).  The Hessian of a
    non-convex loss may be indefinite: the operator is marked ``psd=False`` (CG reports
    non-positive curvature; add damping or use :func:`ggn_operator`).

    The batches are moved to the model's device once, at construction (no product is
    computed then).  ``op.sampler(batch_size, rng)`` returns the same operator on
    ``batch_size`` samples drawn uniformly with replacement (the stochastic estimate LiSSA
    needs); ``op.param_names`` gives the order of the flat coordinates.

    Parameters
    ----------
    model, loss_fn, data, params
        As in :func:`per_sample_gradients` (``loss_fn`` returns per-sample losses).
    chunk_size : int, default 64
        Samples per forward pass (memory bound).

    Returns
    -------
    MatrixFree
        Size ``d`` = number of selected parameter entries, dtype and device of the model.

    Examples
    --------
    >>> import torch
    >>> from invhvp.adapters import hvp_operator
    >>> model = torch.nn.Linear(2, 1, bias=False)
    >>> loss = lambda m, b: 0.5 * m(b).squeeze(-1) ** 2
    >>> op = hvp_operator(model, loss, [torch.eye(2)])   # H = (1/2) Σ x xᵀ = I/2
    >>> op.matvec(torch.ones(2))
    tensor([0.5000, 0.5000])
    """
    P = _ModelProducts(model, data, params, chunk_size, "data")

    def total_loss(p, batch):
        size = next(iter(_leaves(batch))).shape[0]
        return call_loss(loss_fn, model, p, batch, int(size)).sum()

    def single(p, batch, tangent):
        return jvp(lambda q: grad(total_loss)(q, batch), (p,), (tangent,))[1]

    return P.operator(single, psd=False, kind="hvp")


# ---------------------------------------------------------------------- GGN


def ggn_operator(
    model: torch.nn.Module,
    output_fn: Callable[[Any, Any], torch.Tensor],
    output_loss: Callable[[torch.Tensor, Any], torch.Tensor],
    data,
    *,
    params=None,
    chunk_size: int = 64,
) -> MatrixFree:
    r"""Matrix-free generalized Gauss-Newton matrix ``G = (1/n) Σ_i J_iᵀ H_i J_i``.

    ``J_i`` is the Jacobian of the model outputs ``f(z_i)`` with respect to the parameters
    and ``H_i = ∇²_f ℓ(f, z_i)`` the Hessian of the loss with respect to the outputs.  A
    product ``G v`` is a ``jvp`` (``J v``), an output-space HVP (``H (J v)``) and a ``vjp``
    (``Jᵀ(·)``), vmapped over the columns of ``V``.  PSD when the loss is convex in the
    outputs (cross-entropy, squared error).

    Parameters
    ----------
    model, data, params, chunk_size
        As in :func:`hvp_operator`.
    output_fn : callable
        ``output_fn(model, batch) -> outputs`` of shape ``(batch_size, ...)`` (e.g. logits).
    output_loss : callable
        ``output_loss(outputs, batch) -> losses`` of shape ``(batch_size,)``.

    Returns
    -------
    MatrixFree
        PSD operator with ``op.sampler(batch_size, rng)`` for mini-batch estimates.

    Examples
    --------
    >>> import torch
    >>> from invhvp.adapters import ggn_operator
    >>> model = torch.nn.Linear(2, 1, bias=False)
    >>> out = lambda m, b: m(b).squeeze(-1)
    >>> loss = lambda f, b: 0.5 * f**2
    >>> ggn_operator(model, out, loss, [torch.eye(2)]).matvec(torch.ones(2))
    tensor([0.5000, 0.5000])
    """
    P = _ModelProducts(model, data, params, chunk_size, "data")
    if not callable(output_fn) or not callable(output_loss):
        raise InputError(
            "output_fn, output_loss: expected callables output_fn(model, batch), output_loss(outputs, batch)"
        )

    def outputs(p, batch):
        f = output_fn(_Functional(model, p), batch)
        if not isinstance(f, torch.Tensor):
            raise DTypeError(f"output_fn: must return a tensor (e.g. logits), got {type(f).__name__}")
        return f

    def single(p, batch, tangent):
        size = int(next(iter(_leaves(batch))).shape[0])
        f, jv = jvp(lambda q: outputs(q, batch), (p,), (tangent,))

        def lsum(o):
            losses = output_loss(o, batch)
            if not isinstance(losses, torch.Tensor) or tuple(losses.shape) != (size,):
                raise ShapeError(
                    f"output_loss: must return per-sample losses of shape ({size},), got "
                    f"{tuple(getattr(losses, 'shape', ()))}"
                )
            return losses.sum()

        hjv = jvp(grad(lsum), (f.detach(),), (jv,))[1]
        _, pull = vjp(lambda q: outputs(q, batch), p)
        return pull(hjv)[0]

    return P.operator(single, psd=True, kind="ggn")
