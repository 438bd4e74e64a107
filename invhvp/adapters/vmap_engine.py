"""The vmap engine: ``torch.func.vmap(grad(loss of one sample))`` over a chunk, for any parameters."""

from __future__ import annotations

import linecache
import os

import torch
from torch.func import functional_call, grad, vmap

from ..errors import DTypeError, InvhvpError, ShapeError
from .batches import _tree_map
from .errors import EngineError

__all__ = ["VmapEngine", "call_loss", "describe_failure"]


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
    """``loss_fn(model, batch)`` checked to be a ``(size,)`` tensor.

    ``params=None`` calls ``loss_fn`` with ``model`` itself; otherwise with a stand-in that
    runs ``model`` with ``params`` substituted (``functional_call``).
    """
    out = loss_fn(model if params is None else _Functional(model, params), batch)
    if not isinstance(out, torch.Tensor):
        raise DTypeError(f"{what}: must return a tensor of per-sample losses, got {type(out).__name__}")
    if tuple(out.shape) != (size,):
        raise ShapeError(
            f"{what}: must return per-sample losses of shape (batch_size,) = ({size},), got shape "
            f"{tuple(out.shape)}; use reduction='none' instead of a mean or sum"
        )
    return out


_TORCH_DIR = os.path.dirname(torch.__file__)
_OWN_DIR = os.path.dirname(__file__)


def _short(path: str) -> str:
    marker = "site-packages" + os.sep
    return path.split(marker, 1)[1] if marker in path else path


def describe_failure(exc: BaseException, model: torch.nn.Module) -> str:
    """Where ``exc`` happened: the innermost non-torch source line and the innermost module.

    Returns a phrase such as ``"at transformers/masking_utils.py:354 in f: `x.all()`, inside
    module 'bert.encoder' (BertEncoder)"`` (empty when nothing can be located).
    """
    names = {id(m): n for n, m in model.named_modules()}
    module = op = None
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        if isinstance(owner, torch.nn.Module) and id(owner) in names:
            module = (names[id(owner)] or "(root)", type(owner).__name__)
        path = frame.f_code.co_filename
        if not path.startswith(_TORCH_DIR) and not path.startswith(_OWN_DIR):
            op = (path, tb.tb_lineno, frame.f_code.co_name)
        tb = tb.tb_next
    parts = []
    if op is not None:
        src = linecache.getline(op[0], op[1]).strip()
        parts.append(f"at {_short(op[0])}:{op[1]} in {op[2]}" + (f": `{src}`" if src else ""))
    if module is not None:
        parts.append(f"inside module {module[0]!r} ({module[1]})")
    return ", ".join(parts)


class VmapEngine:
    """Per-sample gradients by ``vmap(grad(·))`` over the samples of a chunk.

    Works for any parameters and any differentiable model that ``torch.func`` can batch:
    no data-dependent Python control flow, no ``.item()``, no in-place updates of captured
    tensors.  Extra memory: the chunk's activations times the per-sample work of vmap, plus
    ``k × d`` gradient entries.
    """

    name = "vmap"

    def __init__(self, model, loss_fn, chosen, noisy: bool, hooks_possible: bool = False):
        self.model = model
        self.params = {n: p.detach() for n, p in chosen.items()}
        self.hooks_possible = hooks_possible

        def one(p, sample):
            batch = _tree_map(lambda t: t.unsqueeze(0), sample)
            loss = call_loss(loss_fn, model, p, batch, 1)[0]
            return loss, loss

        self._fn = vmap(
            grad(one, has_aux=True), in_dims=(None, 0), randomness="different" if noisy else "error"
        )

    def __call__(self, chunk, k: int):
        """``(grads, losses)``: ``name -> (k, *shape)`` tensors and the ``(k,)`` losses."""
        # no_grad: frozen parameters that still require grad (e.g. a trainable head that is not
        # selected) must not build an autograd graph; torch.func.grad ignores the outer no_grad.
        try:
            with torch.no_grad():
                return self._fn(self.params, chunk)
        except InvhvpError:
            raise
        except RuntimeError as exc:
            where = describe_failure(exc, self.model)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if len(first) > 300:
                first = first[:300] + "..."
            if self.hooks_possible:
                fix = "use engine='hooks' (or 'auto'): it needs no vmap and supports the selected parameters"
            else:
                fix = (
                    "select only weights/biases of nn.Linear, peft LoRA A/B or transformers Conv1D modules "
                    "(params=...) so that engine='hooks' can run, or make the forward vmap-friendly: no "
                    ".item() and no Python branch on tensor values (for a transformers model, pass a "
                    "precomputed 4-D additive attention mask, as invhvp.adapters.MiniLMSetup.output_fn does)"
                )
            raise EngineError(
                f"engine: the vmap engine (torch.func vmap of grad) cannot run this model: {first} "
                f"[{where or 'location unknown'}]. Fix: {fix}"
            ) from exc
