"""LiSSA error versus batch size on the damped *Hessian* of the digits model (Klochkov & Liu's setting).

The same study as :func:`~invhvp.validate.studies.lissa_batch_rows` (same rows and ``meta`` keys,
so the report and plots show it unchanged), on ``H + λI`` with ``H`` the Hessian of the mean
training loss with respect to the LoRA tensors (:meth:`DigitsModel.hessian`, indefinite).  With
``λ_min(H) < 0`` the contraction rate is set by ``λ_eff = λ + λ_min`` and the step bound by
``1/(λ_max + λ)``; the threshold and the bound are evaluated with ``λ_eff`` and the spread
``λ_max − λ_min``.  ``λ_max``, ``λ_min`` and ``u*`` come from the dense Hessian (``d`` products);
``σ₁² = ‖(1/n)Σ_i H_i² − H²‖`` from 20 Lanczos steps with per-sample Hessian-vector products
(``meta["sigma1_sq_source"]``), and the "trace bound" is Hutchinson's estimate of ``tr`` of the
same matrix (an upper bound on ``σ₁²`` in expectation).
"""

from __future__ import annotations

import math

import numpy as np

from ..damping import DEFAULT_FACTOR

__all__ = ["lissa_batch_rows_hessian"]


def _per_sample_square(dm):
    """``q ↦ (1/n)Σ_i H_i(H_i q) − H(Hq)`` with per-sample Hessian-vector products (torch.func)."""
    import torch
    from torch.func import functional_call, grad, jvp, vmap

    model, names = dm.model, list(dm.names)
    params = {k: p.detach() for k, p in model.named_parameters() if k in names}
    X, y = dm.train
    n = int(X.shape[0])
    shapes = [params[k].shape for k in names]
    sizes = [int(np.prod(s)) for s in shapes]

    def unflat(v):
        parts = torch.split(v, sizes)
        return {k: p.reshape(s) for k, p, s in zip(names, parts, shapes)}

    def flat(tree):
        return torch.cat([tree[k].reshape(-1) for k in names])

    def loss(p, x, t):
        out = functional_call(model, p, (x[None],))
        return torch.nn.functional.cross_entropy(out, t[None])

    def hvp(x, t, v):
        return flat(jvp(lambda q: grad(loss)(q, x, t), (params,), (unflat(v),))[1])

    each = vmap(hvp, in_dims=(0, 0, None))  # H_i q for every sample
    pairs = vmap(hvp, in_dims=(0, 0, 0))  # H_i w_i

    def S(q):
        with torch.no_grad():
            W = each(X, y, q)
            mean_sq = pairs(X, y, W).mean(0)
            Hq = W.mean(0)
            HHq = each(X, y, Hq).mean(0)
        return mean_sq - HHq

    return S, sum(sizes), n


def _sigma1_sq(dm, steps=20, probes=20, seed=0):
    """``(λ_max(S) by Lanczos, tr(S) by Hutchinson)`` for ``S = E(H_i − H)²``."""
    import torch

    import invhvp

    S, d, _ = _per_sample_square(dm)
    op = invhvp.MatrixFree(S, d, torch.float64)
    top = invhvp.lambda_max(op, k=steps, rng=seed).value
    tr = invhvp.trace(op, n_matvec=probes, rng=seed).value
    return float(top), float(tr)


def lissa_batch_rows_hessian(
    problem, model, batch_sizes, steps: int, repeats: int = 3, seed: int = 0, target_threshold: float = 12.0
):
    """LiSSA error versus batch size on ``H + λI`` (the module docstring); rows and meta as the Gram study.

    ``λ`` is set so that the predicted threshold ``B* = ησ₁²/(λ_eff(2 − ηλ_eff))`` with ``η = 1/(λ_max + λ)``
    equals ``target_threshold``, and at least ``2|λ_min|`` (so that ``H + λI`` is positive definite).
    """
    import torch

    from invhvp.bounds import lissa_batch_threshold, lissa_error_bound

    from .studies import _damping_for_threshold, batch_errors

    H = model.hessian()
    dense = H.to_dense().double().numpy()
    dense = (dense + dense.T) / 2
    ev = np.linalg.eigvalsh(dense)
    lmin, lmax = float(ev[0]), float(ev[-1])
    spread = lmax - min(lmin, 0.0)
    s_exact, s_trace = _sigma1_sq(model, seed=seed)
    # λ_eff = λ + λ_min plays the role of λ in the PSD study
    lam_eff = _damping_for_threshold(spread, s_exact, target_threshold)
    lam = max(lam_eff - min(lmin, 0.0), 2.0 * abs(min(lmin, 0.0)))
    lam_eff = lam + min(lmin, 0.0)
    eta = 1.0 / (lmax + lam)
    steps = int(max(steps, math.ceil(math.log(0.01) / math.log1p(-eta * lam_eff))))
    v = np.concatenate([g.mean(axis=0) for g in problem.test_grads])
    u_star = np.linalg.solve(dense + lam * np.eye(H.size), v)
    lam_def = DEFAULT_FACTOR * float(np.trace(dense)) / H.size
    eff_def = lam_def + min(lmin, 0.0)
    meta = {
        "setting": f"{problem.setting}-hessian",
        "rank": problem.rank,
        "block": "all LoRA tensors (Hessian)",
        "d": int(H.size),
        "n": int(model.train[0].shape[0]),
        "damping": lam,
        "default_damping": lam_def,
        "default_threshold": (
            lissa_batch_threshold(1.0 / (lmax + lam_def), eff_def, s_exact) if eff_def > 0 else float("inf")
        ),
        "lambda_max": lmax,
        "lambda_min": lmin,
        "step": eta,
        "steps": steps,
        "sigma1_sq": s_exact,
        "sigma1_sq_trace_bound": s_trace,
        "sigma1_sq_source": "Lanczos (20 steps) on E(H_i − H)²; trace: Hutchinson (20 probes)",
        "threshold": lissa_batch_threshold(eta, lam_eff, s_exact),
        "threshold_trace_bound": lissa_batch_threshold(eta, lam_eff, s_trace),
    }
    rows = batch_errors(
        H,
        torch.as_tensor(v),
        u_star,
        lam,
        batch_sizes,
        repeats,
        seed,
        eta=eta,
        steps=steps,
        threshold=meta["threshold"],
        preconditioner=None,
        bound=lambda B: lissa_error_bound(eta, lam_eff, spread, s_exact, B, steps),
    )
    return rows, meta
