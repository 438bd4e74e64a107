"""Drives an engine over chunks: automatic engine choice and fallback, self-checks, chunk sizes.

:func:`compute_gradients` hands every finished chunk (a list of ``(k, d_l)`` block tensors)
to a *sink* with an ``append(chunks)`` method (:class:`MemorySink` by default); an on-disk
store with the same method can take its place without touching the engines.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .batches import _slice, iter_batches, sample_signature, total_samples
from .errors import EngineError
from .hooks_engine import HooksEngine, plan_hooks
from .probe import bytes_per_sample, check_losses, chunk_rows, close, probe_samples
from .selection import model_device
from .vmap_engine import VmapEngine

__all__ = ["compute_gradients"]

#: samples compared with a batched forward when checking the vmap engine for coupling
_COUPLING_SAMPLES = 8


class _Engines:
    """The engine order (auto: hooks, then vmap), lazy construction, checks and fallback."""

    def __init__(self, model, loss_fn, chosen, engine: str, check: bool, noisy: bool):
        self.model, self.loss_fn, self.chosen = model, loss_fn, chosen
        self.noisy = noisy
        self.check = check and not noisy  # with active dropout the references are random
        self.layers, reason = plan_hooks(model, chosen)
        if engine == "hooks" and reason:
            raise EngineError(
                "engine: 'hooks' needs every selected parameter to be the weight or bias of an nn.Linear "
                f"(such as peft's LoRA A/B) or a transformers Conv1D module, but {reason}. Use "
                "engine='vmap' or 'auto', or select other parameters with params="
            )
        if engine == "auto":
            self.order = ["hooks", "vmap"] if reason is None else ["vmap"]
        else:
            self.order = [engine]
        self.hooks_possible = reason is None
        self.pos = 0
        self.built: dict = {}
        self.checked: set = set()
        self.fallback: str | None = None
        self.used: list[str] = []

    @property
    def current(self) -> str:
        return self.order[self.pos]

    def needs_check(self) -> bool:
        return self.check and self.current not in self.checked

    def _get(self, name):
        if name not in self.built:
            if name == "hooks":
                self.built[name] = HooksEngine(self.model, self.loss_fn, self.chosen, self.layers)
            else:
                self.built[name] = VmapEngine(
                    self.model, self.loss_fn, self.chosen, self.noisy, hooks_possible=self.hooks_possible
                )
        return self.built[name]

    def probe(self, batch, size: int):
        """The reference run at the start of ``batch`` that suits the current engine."""
        if self.current == "hooks":  # one sample: cheap next to the chunk; checks the layout
            try:
                return probe_samples(self.model, self.loss_fn, self.chosen, batch, 0, 1, layers=self.layers)
            except EngineError as exc:
                if self.pos + 1 >= len(self.order):
                    raise
                self.fallback = f"hooks engine: {str(exc).removeprefix('engine: ')}"
                self.pos += 1
        # vmap: a few samples batched, the reference for the vmapped (one-sample) losses
        m = min(size, _COUPLING_SAMPLES)
        return probe_samples(self.model, self.loss_fn, self.chosen, batch, 0, m)

    def run(self, chunk, k: int, ref=None):
        """``(grads, losses)`` of one chunk, falling back to the next engine if one cannot run.

        ``ref``: a probe of the chunk's first samples, reused by the self-check if it fits.
        """
        while True:
            name = self.current
            try:
                check = self.needs_check()
                if check and name == "hooks":
                    grads, losses, sums = self._get(name)(chunk, k, summed=True)
                    self._check_hooks(chunk, grads, losses, sums, ref)
                else:
                    grads, losses = self._get(name)(chunk, k)
                    if check:
                        self._check_vmap(chunk, k, losses, ref)
                if check:
                    self.checked.add(name)
            except EngineError as exc:
                if self.pos + 1 < len(self.order):
                    self.fallback = f"{name} engine: {str(exc).removeprefix('engine: ')}"
                    self.pos += 1
                    continue
                if self.fallback:
                    raise EngineError(f"{exc} (the {self.fallback} failed before)") from exc
                raise
            if not self.used or self.used[-1] != name:
                self.used.append(name)
            return grads, losses

    def _check_vmap(self, chunk, k, losses, ref):
        """The vmapped (one-sample) losses against a batched forward: coupling shows up."""
        m = min(k, _COUPLING_SAMPLES)
        if ref is None or ref.stop != m:
            ref = probe_samples(self.model, self.loss_fn, self.chosen, chunk, 0, m)
        check_losses(ref.losses, losses[:m])

    def _check_hooks(self, chunk, grads, losses, sums, ref):
        """Sample 0's batched loss against sample 0 alone (coupling; batch-first inputs checked
        by the probe), and the gradient the recorded calls explain against the ordinary
        gradient of the summed loss (a parameter also used outside its module's forward)."""
        if ref is None or ref.stop != 1:
            ref = probe_samples(self.model, self.loss_fn, self.chosen, chunk, 0, 1, layers=self.layers)
        check_losses(losses[:1], ref.losses)
        explained, total = sums
        for n in grads:
            ok, diff = close(explained[n], total[n])
            if not ok:
                raise EngineError(
                    f"engine: the calls of its module the hooks engine sees do not explain the gradient of "
                    f"parameter {n!r} (max difference {diff:.3g} from autograd): the parameter is also "
                    "used outside its module's forward (tied weights, F.linear on module.weight). Use "
                    "engine='vmap'"
                )


def compute_gradients(
    model,
    loss_fn,
    data,
    chosen: dict,
    groups: list,
    sink,
    *,
    engine: str,
    chunk_size: int | None,
    memory_budget: int,
    dtype: torch.dtype,
    progress: bool,
    check: bool,
    noisy: bool,
):
    """Run the engines over ``data``, append each chunk's blocks to ``sink``.

    Returns
    -------
    losses : torch.Tensor
        ``(n,)`` per-sample losses, in ``dtype``.
    info : dict
        ``engine`` (the engine(s) used, e.g. ``"hooks"``), ``chunk_sizes``, ``memory_budget``,
        ``bytes_per_sample`` (the estimate, when chunks were sized from the budget) and
        ``fallback`` (why auto left the hooks engine, if it did).
    """
    from tqdm.auto import tqdm

    device = model_device(chosen)
    engines = _Engines(model, loss_fn, chosen, engine, check, noisy)
    d = sum(p.numel() for p in chosen.values())
    itemsize = next(iter(chosen.values())).element_size()
    per_sample: dict = {}  # sample signature -> estimated bytes
    sizes_used: set = set()
    losses = []
    with tqdm(
        total=total_samples(data) if progress else None,
        disable=not progress,
        unit="sample",
        desc="per-sample gradients",
    ) as bar:
        for batch, size in iter_batches(data, device):
            ref = None
            if chunk_size is None:
                sig = sample_signature(batch)
                if sig not in per_sample:
                    ref = engines.probe(batch, size)
                    per_sample[sig] = bytes_per_sample(ref.saved_bytes, d, itemsize)
                rows = chunk_rows(size, per_sample[sig], memory_budget)
            else:
                rows = chunk_size
            for s in range(0, size, rows):
                k = min(s + rows, size) - s
                chunk = batch if k == size else _slice(batch, s, s + k)
                grads, loss = engines.run(chunk, k, ref if s == 0 else None)
                sink.append(
                    [
                        torch.cat([grads[n].reshape(k, -1) for n in pn], dim=1).to(dtype)
                        if len(pn) > 1
                        else grads[pn[0]].reshape(k, -1).to(dtype)
                        for _, pn in groups
                    ]
                )
                losses.append(loss.detach().to(dtype))
                sizes_used.add(k)
                bar.update(k)
    if not losses:
        raise InputError("data: yielded no batch")
    info = {
        "engine": "+".join(engines.used),
        "chunk_sizes": sorted(sizes_used),
        "memory_budget": memory_budget if chunk_size is None else None,
        "bytes_per_sample": max(per_sample.values()) if per_sample else None,
    }
    if engines.fallback:
        info["fallback"] = engines.fallback
    return torch.cat(losses), info
