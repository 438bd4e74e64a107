r"""End-to-end influence from a torch model: gradients → any solver → the m×n influence matrix.

Sign convention (docs/theory.md §1, DataInf; pyDVL uses the opposite sign):
``I(z_t, z_i) = −g_tᵀ (G + λI)⁻¹ g_i``; **positive = up-weighting training point ``z_i``
raises the loss at test point ``z_t`` = harmful**, negative = helpful.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InputError
from .gradients import BlockGradients, per_sample_gradients

__all__ = ["ModelInfluence", "influence"]


@dataclass
class ModelInfluence:
    r"""What :func:`influence` returns.

    Attributes
    ----------
    values : torch.Tensor, shape (m, n)
        ``values[t, i] = I(z_t, z_i) = −g_tᵀ(G + λI)⁻¹g_i``.  **Positive = training point ``i``
        is harmful to test point ``t``** (up-weighting it raises the test loss); negative = helpful.
    self_influence : torch.Tensor of shape (n,) or None
        ``I(z_i, z_i)`` (``<= 0`` for a positive definite inverse; rank by ``−self_influence``
        for mislabeled-data detection), when requested.
    train_gradients, test_gradients : BlockGradients
        The per-sample gradients used (pass them back to :func:`influence` to try another solver
        without recomputing).
    solver : invhvp.Solver
        The solver that ran (the automatic choice is resolved; ``info["auto"]`` says why).
    damping : tuple of float
        ``λ_l`` per block.
    info : dict
        Timings in seconds per phase (``gradients_s``, ``setup_s`` for the inverse's one-time work,
        ``solve_s``, ``self_influence_s``), ``method``, the worst ``status`` and ``reports``: one
        :class:`~invhvp.SolveResult` (``x=None``) per solve, or per block for a closed form.
    """

    values: torch.Tensor
    self_influence: torch.Tensor | None
    train_gradients: BlockGradients
    test_gradients: BlockGradients
    solver: Any
    damping: tuple
    info: dict = field(default_factory=dict)

    def top_k(self, k: int, kind: str = "harmful") -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most harmful (largest positive) or helpful (most negative) training points.

        Parameters
        ----------
        k : int
            ``1 <= k <= n``.
        kind : {"harmful", "helpful"}

        Returns
        -------
        values, indices : torch.Tensor of shape (m, k)
            Per test point, sorted from the most harmful (resp. helpful) on.
        """
        n = int(self.values.shape[1])
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise InputError(f"k: expected an int in [1, {n}], got {k!r}")
        if kind not in ("harmful", "helpful"):
            raise InputError(f"kind: expected 'harmful' or 'helpful', got {kind!r}")
        return torch.topk(self.values, k, dim=1, largest=kind == "harmful")

    def harmful(self, k: int = 5):
        """Indices ``(m, k)`` of the ``k`` most harmful training points per test point."""
        return self.top_k(k, "harmful")[1]

    def helpful(self, k: int = 5):
        """Indices ``(m, k)`` of the ``k`` most helpful training points per test point."""
        return self.top_k(k, "helpful")[1]


def _gradients(data, name, model, loss_fn, kw) -> tuple[BlockGradients, float]:
    if isinstance(data, BlockGradients):
        return data, 0.0
    if model is None or loss_fn is None:
        raise InputError(
            f"{name}: without model and loss_fn it must be a BlockGradients from a previous call"
        )
    t0 = time.perf_counter()
    g = per_sample_gradients(model, loss_fn, data, **kw)
    return g, time.perf_counter() - t0


def influence(
    model: torch.nn.Module | None,
    loss_fn: Callable | None,
    train_data,
    test_data,
    solver=None,
    *,
    damping=None,
    damping_factor: float = 0.1,
    self_influence: bool = False,
    params=None,
    blocks="tensor",
    engine: str = "auto",
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    on_failure: str = "raise",
) -> ModelInfluence:
    r"""Influence of every training point on every test point, from a model and a loss.

    Computes per-sample gradients (:func:`per_sample_gradients`) of the training and test
    data, then :func:`invhvp.influence_matrix` with the block-diagonal Gram (empirical
    Fisher) curvature ``G = diag(G_l)``, ``G_l = (1/n) U_lᵀU_l``, and the chosen solver:

    .. math:: I(z_t, z_i) = -\sum_l g_{t,l}^T (G_l + \lambda_l I)^{-1} g_{i,l}

    **Sign: positive = up-weighting training point ``z_i`` raises the loss at ``z_t``
    (harmful); negative = helpful** (docs/theory.md §1, DataInf; opposite to pyDVL).

    Parameters
    ----------
    model : torch.nn.Module or None
        Plain module or peft LoRA model, in eval mode.  ``None`` when both data arguments
        are precomputed :class:`BlockGradients`.
    loss_fn : callable or None
        ``loss_fn(model, batch) -> (batch_size,)`` per-sample losses.
    train_data, test_data : iterable of batches, or BlockGradients
        Data as for :func:`per_sample_gradients`, or gradients returned by an earlier call
        (``result.train_gradients``) to reuse them with another solver.
    solver : invhvp.Solver, optional
        ``Exact()``, ``CG()``, ``DataInf()``, ``LiSSA()``, ``Identity()`` (Hessian-free), ...
        ``None`` picks automatically (exact by Woodbury when cheap).
    damping : float, sequence of float, or None
        ``λ_l``; ``None`` = ``damping_factor · tr(G_l)/d_l`` per block (DataInf's rule).
    damping_factor : float, default 0.1
    self_influence : bool, default False
        Also compute ``I(z_i, z_i)`` for the training points.
    params, blocks, engine, chunk_size, memory_budget, dtype
        Passed to :func:`per_sample_gradients` (``chunk_size=None``: sized from the memory budget).
    progress : bool, default False
        Progress bars over the gradients (per sample) and over the solver's phases (one tick per
        block for the inverse's one-time work, the influence matrix and the self-influence).
    on_failure : {"raise", "warn", "ignore"}
        For iterative solvers (see :func:`invhvp.solve`).

    Returns
    -------
    ModelInfluence
        ``values`` (m×n), optional ``self_influence``, the gradients, ``top_k``/``harmful``/``helpful``.

    Examples
    --------
    >>> import torch, invhvp as ih
    >>> from invhvp.adapters import influence
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Linear(4, 2)
    >>> loss = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")
    >>> train = [(torch.randn(10, 4), torch.randint(0, 2, (10,)))]
    >>> test = [(torch.randn(3, 4), torch.randint(0, 2, (3,)))]
    >>> res = influence(model, loss, train, test, ih.Exact())
    >>> res.values.shape, res.harmful(2).shape
    (torch.Size([3, 10]), torch.Size([3, 2]))
    """
    from .. import influence as _inf
    from ..result import Status

    kw = dict(
        params=params,
        blocks=blocks,
        engine=engine,
        chunk_size=chunk_size,
        memory_budget=memory_budget,
        dtype=dtype,
        progress=progress,
    )
    g_train, t_train = _gradients(train_data, "train_data", model, loss_fn, kw)
    g_test, t_test = _gradients(test_data, "test_data", model, loss_fn, kw)
    if g_train.sizes != g_test.sizes:
        raise InputError(
            f"test_data: its gradient blocks {g_test.sizes} differ from train_data's {g_train.sizes}"
        )
    bars = _PhaseBars(progress)
    t0 = time.perf_counter()
    inv = _inf.gradient_inverse(
        list(g_train.blocks),
        solver,
        damping=damping,
        damping_factor=damping_factor,
        on_failure=on_failure,
        progress=bars("inverse (one-time work)"),
    )
    t_setup = time.perf_counter() - t0
    reports: list = []
    t0 = time.perf_counter()
    values, rep = _inf.influence_matrix(
        list(g_train.blocks),
        list(g_test.blocks),
        inverse=inv,
        on_failure=on_failure,
        return_results=True,
        progress=bars("influence matrix"),
    )
    reports.extend(rep)
    t_solve = time.perf_counter() - t0
    si = None
    info = {"gradients_s": t_train + t_test, "train_gradients_s": t_train, "setup_s": t_setup, "solve_s": t_solve}
    if self_influence:
        t0 = time.perf_counter()
        si, rep = _inf.self_influence(
            list(g_train.blocks), inverse=inv, on_failure=on_failure, return_results=True, progress=bars("self-influence")
        )
        reports.extend(rep)
        info["self_influence_s"] = time.perf_counter() - t0
    bars.close()
    lams = inv.damping if isinstance(inv.damping, tuple) else (inv.damping,)
    info["method"] = inv.info.get("method")
    if "auto" in inv.info:
        info["auto"] = inv.info["auto"]
    info["status"] = Status.worst(r.status for r in reports).value
    info["reports"] = reports
    return ModelInfluence(values, si, g_train, g_test, inv.solver, lams, info)


class _PhaseBars:
    """One tqdm bar per solver phase, advanced by ``progress(done, total)`` callbacks (or nothing)."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar = bool(enabled), None

    def __call__(self, name: str):
        if not self.enabled:
            return None

        def tick(done, total):
            if self.bar is None or self.bar.desc != name:
                self.close()
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=name, unit="block")
            self.bar.n = done
            self.bar.refresh()

        return tick

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
