"""The methods compared by the studies, and how one influence matrix is computed with each.

Influence values follow the package convention (docs/theory.md §1)::

    I(z_t, z_i) = − Σ_l g_{t,l}ᵀ (G_l + λ_l I)⁻¹ g_{i,l}

positive = up-weighting the training point raises the test loss = harmful.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..solvers.lissa_setup import DEFAULT_MAX_MATVEC

__all__ = ["Method", "MethodRun", "default_methods", "run_method", "default_damping"]


@dataclass(frozen=True)
class Method:
    """A named way of applying ``(G_l + λ_l I)⁻¹``.

    Attributes
    ----------
    name : str
        Short identifier used in tables (``"exact"``, ``"datainf"``, ...).
    label : str
        Human-readable description for the report.
    make : callable
        ``make(seed)`` returns an invhvp solver instance; it raises ``ImportError`` or
        ``AttributeError`` when the solver is not available in this installation.
    """

    name: str
    label: str
    make: Callable[[], Any]


@dataclass
class MethodRun:
    """One method's influence matrix on one problem.

    ``influence`` is ``(m, n)`` (positive = harmful), ``seconds`` the wall time of the solves
    and products, ``status`` ``"ok"``, a solver status such as ``"diverged"``, or
    ``"unavailable"``/``"error"``; ``note`` says why when it is not ``"ok"``.
    """

    name: str
    influence: np.ndarray | None
    seconds: float
    status: str = "ok"
    note: str = ""
    info: dict = field(default_factory=dict)


def default_methods(
    quick: bool = True, lissa_budget: int | None = 300, cg_maxiter: int = 500
) -> list[Method]:
    """The methods of the approximation-error study (docs/theory.md §12, DataInf Fig. 1).

    Parameters
    ----------
    quick : bool
        Shorten the classic LiSSA depths (1000 → 200, 5000 → 1000) so that a quick run
        finishes in minutes; the report says so.
    lissa_budget : int or None
        Budget of the automatic LiSSA plans in full Gram products per right-hand-side column
        and block (``LiSSA(max_matvec=lissa_budget)``, which counts per column); ``None``: the
        solver's default budget (2000).
    cg_maxiter : int
        Iteration limit of CG (on the whole block-diagonal operator); reaching it keeps the
        values and marks the run ``max_iter``.
    """
    import invhvp

    d1, d2 = (200, 1000) if quick else (1000, 5000)
    L = invhvp.LiSSA
    budget = f", budget {lissa_budget if lissa_budget else DEFAULT_MAX_MATVEC} full products per column and block" + (
        "" if lissa_budget else " (the solver's default)"
    )
    return [
        Method("exact", "Exact per-block inverse (Woodbury/Cholesky)", lambda s: invhvp.Exact()),
        Method("datainf", "DataInf (Sherman-Morrison swap)", lambda s: invhvp.DataInf()),
        Method(
            "lissa-auto",
            "LiSSA, automatic (η, B, T) for a relative error 0.1 per block, no preconditioner" + budget,
            lambda s: L(rng=s, preconditioner=None, max_matvec=lissa_budget),
        ),
        Method(
            "lissa-nystrom",
            "LiSSA, automatic plan on the Nyström-preconditioned system (relative error 0.1 per block)"
            + budget,
            lambda s: L(rng=s, preconditioner="nystrom", max_matvec=lissa_budget),
        ),
        Method(
            f"lissa-s10-d{d1}",
            f"LiSSA classic, scale 10 (η = 0.1), depth {d1}, batch 1",
            lambda s: L.from_scale(10.0, d1, batch_size=1, rng=s),
        ),
        Method(
            f"lissa-s50-d{d2}",
            f"LiSSA classic, scale 50 (η = 0.02), depth {d2}, batch 1",
            lambda s: L.from_scale(50.0, d2, batch_size=1, rng=s),
        ),
        Method(
            "lissa-fb10",
            "LiSSA, 10 full-batch iterations, scale 1 (η = 1)",
            lambda s: L.from_scale(1.0, 10, batch_size="full", rng=s),
        ),
        Method(
            "cg",
            f"Conjugate gradient (rtol 1e-6, at most {cg_maxiter} iterations)",
            lambda s: invhvp.CG(rtol=1e-6, maxiter=cg_maxiter),
        ),
        Method(
            "cg-nystrom",
            f"Conjugate gradient with the adaptive Nyström preconditioner (rtol 1e-6, at most {cg_maxiter} iterations)",
            lambda s: invhvp.CG(rtol=1e-6, maxiter=cg_maxiter, preconditioner="nystrom"),
        ),
        Method("identity", "Hessian-free: identity in place of the inverse", lambda s: invhvp.Identity()),
    ]


def default_damping(train_grads, factor: float = 0.1) -> list[float]:
    """Per-block damping ``λ_l = factor · tr(G_l)/d_l`` (docs/theory.md §2), via :func:`invhvp.default_damping`."""
    import invhvp

    return [float(v) for v in invhvp.default_damping(list(train_grads), factor=factor)]


def _to_backend(a, device):
    if device in (None, "cpu-numpy"):
        return a
    import torch

    return torch.as_tensor(a, dtype=torch.float64, device=device)


def _to_numpy(a):
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _sync(device):
    if device not in (None, "cpu-numpy") and str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def run_method(problem, method: Method, damping, device=None, seed: int = 0, n_pairs: int = 20) -> MethodRun:
    """Influence of every training point on ``1 + n_pairs`` queries with ``method``, timed.

    The queries are the *average* test gradient ``(1/m) Σ_t g_t`` (its influence row is the
    average-over-test score of every training point, by linearity) and the first ``n_pairs``
    test points (their rows give per-pair influence values).  One call of
    :func:`invhvp.influence_matrix` computes all rows: closed forms for Exact, DataInf and
    Identity; for iterative solvers one :func:`invhvp.solve` on the block-diagonal Gram
    operator with the ``1 + n_pairs`` query gradients as right-hand sides.  A solver failure
    (LiSSA divergence, non-finite values, non-positive curvature) becomes the run's ``status``
    and no values are returned; a solver that ran out of its budget (``max_iter``) keeps its
    values, flagged by the status.

    Parameters
    ----------
    problem : InfluenceProblem
    method : Method
    damping : sequence of float
        One ``λ_l`` per block.
    device : str, optional
        ``None`` solves with numpy; a torch device string (``"cpu"``, ``"cuda"``) solves with
        float64 torch tensors on that device.
    seed : int
        Seed for stochastic solvers that accept an ``rng``.
    n_pairs : int
        Individual test points whose influence rows are also computed.

    Returns
    -------
    MethodRun
        ``influence`` is ``(1 + n_pairs, n)``: row 0 the average-over-test score, then one row
        per test point; positive = harmful.
    """
    import invhvp

    try:
        solver = method.make(seed)
    except (ImportError, AttributeError, TypeError) as exc:
        return MethodRun(method.name, None, float("nan"), "unavailable", f"{type(exc).__name__}: {exc}")
    p = min(int(n_pairs), problem.n_test)
    U = [_to_backend(g, device) for g in problem.train_grads]
    Q = [
        _to_backend(np.concatenate([g.mean(axis=0, keepdims=True), g[:p]]), device)
        for g in problem.test_grads
    ]
    _sync(device)
    t0 = time.perf_counter()
    try:
        infl, reports = invhvp.influence_matrix(
            U, Q, solver, damping=list(damping), side="test", on_failure="ignore", return_results=True
        )
        _sync(device)
        failed = [r for r in reports if not r.ok]
        fatal = [r for r in failed if r.status.value in ("diverged", "nonfinite", "nonpositive_curvature")]
        if fatal:
            return MethodRun(
                method.name,
                None,
                time.perf_counter() - t0,
                fatal[0].status.value,
                _short(_describe(fatal[0])),
            )
    except invhvp.ConvergenceError as exc:
        res = exc.result
        status = res.status.value if res is not None else "failed"
        return MethodRun(method.name, None, time.perf_counter() - t0, status, _short(str(exc)))
    except Exception as exc:  # noqa: BLE001 - a failing method is reported, not fatal
        return MethodRun(
            method.name, None, time.perf_counter() - t0, "error", _short(f"{type(exc).__name__}: {exc}")
        )
    seconds = time.perf_counter() - t0
    infl = _to_numpy(infl)
    if not np.all(np.isfinite(infl)):
        return MethodRun(method.name, None, seconds, "nonfinite", "non-finite influence values")
    if failed:  # e.g. max_iter: the budget ran out, the values are kept and flagged
        return MethodRun(method.name, infl, seconds, failed[0].status.value, _short(_describe(failed[0])))
    return MethodRun(method.name, infl, seconds, "ok", "")


def _describe(result) -> str:
    """One line for a failed solve: solver, status and the solver's advice."""
    msg = f"{result.info.get('solver', 'solver')} ended with status {result.status.value}"
    if "advice" in result.info:
        msg += f": {result.info['advice']}"
    return msg


def _short(text: str, limit: int = 300) -> str:
    """A (possibly very long, per-block) message shortened to at most ``limit`` characters at a word boundary.

    Examples
    --------
    >>> _short("the plan cannot meet rtol=0.1 within the budget", 30)
    'the plan cannot meet rtol=0.1 …'
    """
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut and not text[limit - 1].isspace():
        cut = cut[: cut.rfind(" ") + 1]
    return cut.rstrip() + " …"
