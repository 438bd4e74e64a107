r"""The hooks engine: per-sample gradients of linear maps from one batched forward/backward.

For a linear map ``y = W a + b`` applied to the tokens ``t`` of sample ``i`` (``a_{i,t}``
the input, ``δ_{i,t} = ∂L/∂y_{i,t}`` the output gradient of the summed loss
``L = Σ_i ℓ_i``), the per-sample gradients are

.. math:: \nabla_W \ell_i = \sum_t \delta_{i,t} a_{i,t}^T, \qquad \nabla_b \ell_i = \sum_t \delta_{i,t}

because ``ℓ_j`` does not depend on sample ``i``'s tokens for ``j ≠ i`` (no cross-sample
coupling).  A forward hook on each selected module records ``a`` and the output ``y``;
``torch.autograd.grad(L, outputs)`` returns every ``δ`` in one backward pass without forming
any weight gradient; one ``bmm`` per call forms the ``k`` per-sample gradients.  If the
model modifies an output in place afterwards (its version counter moves), the chunk is
rerun with a zero "probe" leaf added to each output, whose gradient is ``δ`` regardless.  No ``vmap``: the model runs exactly as the user wrote it (data-dependent masks,
fused attention kernels).  Masked (padding) tokens get ``δ = 0`` and contribute nothing.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from .errors import EngineError
from .vmap_engine import call_loss

__all__ = ["HooksEngine", "linear_kind", "plan_hooks"]


def linear_kind(module: torch.nn.Module) -> str | None:
    """``"linear"`` (``y = a Wᵀ + b``), ``"conv1d"`` (transformers ``Conv1D``: ``y = a W + b``) or None.

    Only modules whose ``forward`` is the library's own (subclasses that override it are not
    linear maps we can vouch for).  peft's LoRA ``lora_A``/``lora_B`` are ``nn.Linear``.
    """
    if isinstance(module, torch.nn.Linear) and type(module).forward is torch.nn.Linear.forward:
        return "linear"
    pu = sys.modules.get("transformers.pytorch_utils")
    conv = getattr(pu, "Conv1D", None)
    if conv is not None and isinstance(module, conv) and type(module).forward is conv.forward:
        return "conv1d"
    return None


@dataclass
class _Layer:
    name: str
    module: torch.nn.Module
    kind: str
    weight: str | None = None  # full parameter name, when selected
    bias: str | None = None


def plan_hooks(model: torch.nn.Module, chosen: dict) -> tuple[list[_Layer], str | None]:
    """The hooked layers for the selected parameters, or ``([], reason)`` if one is unsupported."""
    owners = {}
    for mname, m in model.named_modules():
        for pname, _ in m.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if full in chosen:
                owners[full] = (mname, m, pname)
    layers: dict[str, _Layer] = {}
    for full in chosen:
        if full not in owners:
            return [], f"parameter {full!r} is not found among the modules' own parameters"
        mname, m, pname = owners[full]
        kind = linear_kind(m)
        if kind is None or pname not in ("weight", "bias"):
            what = f"{type(m).__name__} module {mname or '(root)'!r}"
            return [], f"parameter {full!r} is {pname!r} of {what}, not the weight/bias of a linear layer"
        layer = layers.setdefault(mname, _Layer(mname, m, kind))
        setattr(layer, pname, full)
    return list(layers.values()), None


class HooksEngine:
    """Per-sample gradients of linear-layer parameters from one batched forward/backward.

    Cost per chunk: one forward and one backward of the summed loss (no weight gradients
    are formed), plus ``Σ_layers k·T·d_in·d_out`` multiply-adds for the per-sample products.
    Extra memory: the recorded inputs (autograd keeps most of them anyway), one zero
    probe per hooked output and the ``k × d`` per-sample gradients.
    """

    name = "hooks"

    def __init__(self, model, loss_fn, chosen, layers: list[_Layer]):
        self.model = model
        self.loss_fn = loss_fn
        self.chosen = chosen
        self.layers = layers
        self.probes = False

    def _hook(self, i: int, records: list, k: int):
        layer = self.layers[i]

        def hook(module, args, kwargs, out):
            a = args[0] if args else next(iter(kwargs.values()), None)
            if not isinstance(a, torch.Tensor) or not isinstance(out, torch.Tensor):
                raise EngineError(
                    f"engine: module {layer.name!r} was called with a {type(a).__name__} input; the hooks "
                    "engine needs a tensor input and output. Use engine='vmap'"
                )
            if a.ndim < 2 or a.shape[0] != k or out.shape[0] != k:
                raise EngineError(
                    f"engine: module {layer.name!r} received an input of shape {tuple(a.shape)}, but the "
                    f"hooks engine needs the {k} samples of the chunk in the leading dimension (batch-first "
                    "inputs, not flattened (batch·tokens, features)). Use engine='vmap'"
                )
            a = a.detach()
            if self.probes:  # a zero leaf added to the output: its gradient is δ whatever follows
                probe = torch.zeros_like(out, requires_grad=True)
                records.append((i, a, a._version, probe, None))
                return out + probe
            if not out.requires_grad:  # nothing before it needs a gradient: make it a leaf
                out = out.detach().requires_grad_(True)
            # δ is the gradient of this very tensor, unless something modifies it in place later
            # (checked after the forward through its version counter; then probes are used)
            records.append((i, a, a._version, out, out._version))
            return out

        return hook

    def __call__(self, chunk, k: int, summed: bool = False):
        """``(grads, losses)``: ``name -> (k, *shape)`` tensors and the ``(k,)`` losses.

        ``summed=True`` also returns ``(explained, total)``: ``Σ_{i,t} δ_{i,t} a_{i,t}ᵀ`` over
        the recorded calls (one matmul per call) and the ordinary gradient of the summed
        loss (autograd through the parameters themselves, in the same backward pass).  They
        agree iff every path from a parameter to the loss goes through its module's forward.
        """
        records: list = []
        handles = [
            layer.module.register_forward_hook(self._hook(i, records, k), with_kwargs=True)
            for i, layer in enumerate(self.layers)
        ]
        frozen = [p for p in self.chosen.values() if not p.requires_grad] if summed else []
        try:
            for p in frozen:
                p.requires_grad_(True)
            with torch.enable_grad():
                losses = call_loss(self.loss_fn, self.model, None, chunk, k)
        finally:
            for h in handles:
                h.remove()
            for p in frozen:
                p.requires_grad_(False)
        if not self.probes and any(r[4] != r[3]._version for r in records):
            self.probes = True  # an output was modified in place: rerun with probes
            return self(chunk, k, summed)
        probes = [r[3] for r in records]
        params = list(self.chosen.values()) if summed else []
        deltas = [None] * (len(probes) + len(params))
        if (probes or params) and losses.requires_grad:
            with torch.enable_grad():
                deltas = torch.autograd.grad(losses.sum(), probes + params, allow_unused=True)
        grads: dict[str, torch.Tensor] = {}
        hsum: dict[str, torch.Tensor] = {}  # summed=True: Σ over all rows of the recorded δ aᵀ
        for (i, a, version, _, _), d in zip(records, deltas):
            if d is None:
                continue
            layer = self.layers[i]
            if a._version != version:
                raise EngineError(
                    f"engine: the input of module {layer.name!r} was modified in place after the module "
                    "ran, so the hooks engine cannot use it. Use engine='vmap'"
                )
            dt = self.chosen[layer.weight or layer.bias].dtype
            a3 = a.reshape(k, -1, a.shape[-1]).to(dt)
            d3 = d.reshape(k, -1, d.shape[-1]).to(dt)
            if layer.weight is not None:
                lhs, rhs = (d3, a3) if layer.kind == "linear" else (a3, d3)
                # linear W: (out, in), g_i = Σ_t δ_t a_tᵀ; Conv1D W: (in, out), g_i = Σ_t a_t δ_tᵀ
                if a3.shape[1] == 1:  # one token: an outer product (broadcasting beats bmm)
                    gw = lhs.transpose(1, 2) * rhs
                else:
                    gw = torch.bmm(lhs.transpose(1, 2), rhs)
                _accumulate(grads, layer.weight, gw)
            if layer.bias is not None:
                _accumulate(grads, layer.bias, d3.sum(1))
            if summed:  # one matmul over all rows: what the recorded calls explain of the gradient
                a2, d2 = a3.reshape(-1, a3.shape[-1]), d3.reshape(-1, d3.shape[-1])
                if layer.weight is not None:
                    _accumulate(hsum, layer.weight, d2.T @ a2 if layer.kind == "linear" else a2.T @ d2)
                if layer.bias is not None:
                    _accumulate(hsum, layer.bias, d2.sum(0))
        for n, p in self.chosen.items():  # modules that did not run (or do not reach the loss)
            if n not in grads:
                grads[n] = torch.zeros((k, *p.shape), dtype=p.dtype, device=p.device)
        if not summed:
            return grads, losses.detach()
        total = {
            n: torch.zeros_like(p) if g is None else g
            for (n, p), g in zip(self.chosen.items(), deltas[len(probes) :])
        }
        hsum = {n: hsum.get(n, torch.zeros_like(p)) for n, p in self.chosen.items()}
        return grads, losses.detach(), (hsum, total)


def _accumulate(grads: dict, name: str, g: torch.Tensor) -> None:
    grads[name] = g if name not in grads else grads[name] + g
