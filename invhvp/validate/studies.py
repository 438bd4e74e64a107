"""The studies: approximation error, mislabel detection, runtime, and the theory checks.

Each study takes :class:`~invhvp.validate.problem.InfluenceProblem` objects and returns plain
rows (lists of dicts) that the report writer turns into tables, CSV/JSON files and plots.
"""

from __future__ import annotations

import math

import numpy as np

from .methods import default_damping, run_method

__all__ = [
    "pearson",
    "spearman",
    "auc",
    "influence_study",
    "datainf_error_rows",
    "lissa_batch_rows",
    "PAPER_VALUES",
]


def pearson(a, b) -> float:
    """Pearson correlation of two flattened arrays (``nan`` if either is constant).

    Examples
    --------
    >>> pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0]) > 0.98
    True
    """
    a, b = np.ravel(a).astype(float), np.ravel(b).astype(float)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else float("nan")


def _ranks(x):
    from scipy.stats import rankdata

    return rankdata(np.ravel(x))


def spearman(a, b) -> float:
    """Spearman rank correlation (Pearson of the average ranks).

    Examples
    --------
    >>> spearman([1.0, 2.0, 3.0], [1.0, 10.0, 100.0])
    1.0
    """
    return pearson(_ranks(a), _ranks(b))


def auc(scores, positives) -> float:
    """Area under the ROC curve of ``scores`` for detecting ``positives`` (Mann-Whitney form).

    Ties count one half.  ``nan`` when there are no positives or no negatives.

    Examples
    --------
    >>> auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True])
    0.75
    """
    s = np.ravel(np.asarray(scores, dtype=float))
    p = np.ravel(np.asarray(positives, dtype=bool))
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _ranks(s)
    return float((r[p].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


#: The DataInf paper's runtime unit: seconds to compute 4,500 influence values (docs/theory.md §12).
PAPER_VALUES = 4500


def influence_study(problems, methods, device=None, seed: int = 0, n_pairs: int = 20, run_item=None):
    """Approximation error, mislabel detection and runtime of every method on every problem.

    For each problem the exact per-block inverse (the method named ``"exact"``) is the
    reference.  Per method and problem the row holds

    - ``pearson``, ``spearman``: correlation of the *average-over-test* influence score of each
      training point with the exact one (the DataInf Fig. 1 quantity);
    - ``pearson_pairs``: Pearson correlation over the ``n_pairs × n`` individual (test, train)
      influence values;
    - ``auc``: AUC of the average-over-test score (positive = harmful) for the flipped labels;
    - ``seconds``: wall time of the method's solves and products for the ``n_queries = 1 +
      n_pairs`` queries (see :func:`~invhvp.validate.methods.run_method`), and
      ``seconds_per_4500``: the same time per 4,500 influence values (the DataInf paper's
      unit), ``seconds · 4500 / (n_queries · n)``;
    - ``has_values``: whether the method returned influence values (``max_iter`` and
      ``inaccurate`` runs keep theirs, flagged by ``status``; diverged or failed runs have none).

    Parameters
    ----------
    problems : list of InfluenceProblem
    methods : list of Method
        Must contain one named ``"exact"``.
    device : str, optional
        Passed to :func:`~invhvp.validate.methods.run_method`.
    seed : int
    n_pairs : int
    run_item : callable, optional
        ``run_item(key, fn)`` runs each method (key ``("influence", setting, rank, name)``),
        e.g. :meth:`~invhvp.validate.progress.Progress.run`.

    Returns
    -------
    list of dict
    """
    run_item = run_item or (lambda key, fn, *a, **k: fn(*a, **k))
    rows = []
    for prob in problems:
        lam = default_damping(prob.train_grads)
        runs = {}
        for m in methods:
            runs[m.name] = run_item(
                ("influence", prob.setting, prob.rank, m.name),
                run_method,
                prob,
                m,
                lam,
                device=device,
                seed=seed,
                n_pairs=n_pairs,
            )
        ref = runs.get("exact")
        ref_ok = ref is not None and ref.influence is not None
        q = 1 + min(int(n_pairs), prob.n_test)
        for m in methods:
            run = runs[m.name]
            row = {
                "setting": prob.setting,
                "rank": prob.rank,
                "method": m.name,
                "status": run.status,
                "has_values": run.influence is not None,
                "n_train": prob.n_train,
                "n_test": prob.n_test,
                "n_queries": q,
                "n_blocks": len(prob.block_sizes),
                "max_block_dim": max(prob.block_sizes),
                "seconds": run.seconds,
                "seconds_per_4500": run.seconds * PAPER_VALUES / (q * prob.n_train),
                "pearson": float("nan"),
                "spearman": float("nan"),
                "pearson_pairs": float("nan"),
                "auc": float("nan"),
                "note": run.note,
            }
            if run.influence is not None:
                score = run.influence[0]
                row["auc"] = auc(score, prob.flipped)
                if ref_ok:
                    row["pearson"] = pearson(score, ref.influence[0])
                    row["spearman"] = spearman(score, ref.influence[0])
                    if run.influence.shape[0] > 1:
                        row["pearson_pairs"] = pearson(run.influence[1:], ref.influence[1:])
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- theory: DataInf
def datainf_error_rows(problems, max_dim: int = 2048, run_item=None):
    """DataInf's true per-block error ``‖S̄⁻¹ − R‖₂`` beside its certificates (docs/theory.md §4).

    One row per (problem, block) from :func:`invhvp.bounds.datainf_certificates`: ``d_l``,
    ``n``, ``λ_l``, ``true_error`` (``nan`` when ``min(n, d_l) > max_dim``), the
    ``intermediate`` bound, the computable ``certificate``, the paper's ``paper_bound``, the
    ``spectral`` certificate and ``spectral_ratio`` = spectral / true error (``nan`` without
    the true error).

    Parameters
    ----------
    problems : list of InfluenceProblem
    max_dim : int
        Largest ``min(n, d_l)`` for which the true error is computed.
    run_item : callable, optional
        ``run_item(key, fn)`` runs the blocks of each problem (key ``("datainf", setting, rank)``).
    """
    run_item = run_item or (lambda key, fn, *a, **k: fn(*a, **k))
    rows = []
    for prob in problems:
        rows += run_item(("datainf", prob.setting, prob.rank), _datainf_rows, prob, max_dim)
    return rows


def _datainf_rows(prob, max_dim):
    from invhvp.bounds import datainf_certificates

    rows = []
    lam = default_damping(prob.train_grads)
    for name, U, lm in zip(prob.block_names, prob.train_grads, lam):
        c = datainf_certificates(U, lm, max_true_dim=max_dim)
        row = {"setting": prob.setting, "rank": prob.rank, "block": name}
        for k in (
            "d",
            "n",
            "damping",
            "lambda_max",
            "true_error",
            "intermediate",
            "certificate",
            "paper_bound",
            "spectral",
        ):
            v = c.get(k)
            row[k] = float("nan") if v is None else v
        te = c.get("true_error")
        row["spectral_ratio"] = c["spectral"] / te if te else float("nan")
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- theory: LiSSA
def _sigma1_sq(U) -> tuple[float, float]:
    """Exact ``σ₁² = ‖E(g gᵀ − G)²‖₂`` and its trace bound ``mean‖g‖⁴ − ‖G‖_F²``."""
    n = U.shape[0]
    K = U @ U.T
    sq = np.diag(K)
    w, Q = np.linalg.eigh(K)
    Kh = (Q * np.sqrt(np.clip(w, 0.0, None))) @ Q.T
    # E(ggᵀ−G)² = (1/n)Σ‖g‖² g gᵀ − G² = Uᵀ [ diag(‖g‖²)/n − K/n² ] U
    M = np.diag(sq) / n - K / n**2
    E = Kh @ M @ Kh
    exact = float(np.max(np.linalg.eigvalsh((E + E.T) / 2)))
    trace = float(np.mean(sq**2) - np.sum(K * K) / n**2)
    return exact, trace


def _damping_for_threshold(lmax, s1, target):
    """The ``λ`` at which the batch threshold with ``η = 1/(λ_max + λ)`` equals ``target``."""
    from scipy.optimize import brentq

    from invhvp.bounds import lissa_batch_threshold

    def f(t):
        lam = math.exp(t)
        return math.log(lissa_batch_threshold(1.0 / (lmax + lam), lam, s1)) - math.log(target)

    lo, hi = math.log(lmax * 1e-12 + 1e-300), math.log(lmax * 1e6 + 1e-300)
    return math.exp(brentq(f, lo, hi, xtol=1e-10))


def lissa_batch_rows(
    problem,
    batch_sizes,
    steps: int,
    repeats: int = 3,
    seed: int = 0,
    block=None,
    target_threshold: float = 12.0,
):
    """LiSSA error versus batch size on one block, beside the predicted threshold and bound.

    On one block (the largest unless ``block`` is given) LiSSA solves ``(G + λI) u = v`` for the
    average test gradient ``v`` with the largest allowed step ``η = 1/(λ_max + λ)`` (``λ_max``
    exact, from the ``n×n`` Gram matrix) for each batch size ``B``.  The measured relative
    error ``‖u_T − u*‖/‖u*‖`` (median and max over ``repeats`` seeds; a run the solver reports
    as diverged counts as ``inf``) is set beside :func:`invhvp.bounds.lissa_batch_threshold`
    ``B* = ησ₁²/(λ(2 − ηλ))`` and :func:`invhvp.bounds.lissa_error_bound`, both evaluated with
    the exact ``σ₁² = ‖E(g gᵀ − G)²‖₂``.

    At the default damping of LoRA gradients ``B*`` is usually far above ``n`` (small ``λ``,
    heavy-tailed gradient norms), where a sweep would cost too much; the study therefore sets
    ``λ`` so that ``B* = target_threshold`` (both values are reported in ``meta``) and runs
    ``T = max(steps, ⌈ln 0.01 / ln(1 − ηλ)⌉)`` steps, enough for the deterministic part of the
    error to fall below 1% and for an unstable run to show its growth.

    Returns
    -------
    rows : list of dict
        ``batch_size``, ``error_median``, ``error_max``, ``diverged`` (runs), ``bound``,
        ``above_threshold``.
    meta : dict
        ``block``, ``d``, ``n``, ``damping`` (used), ``default_damping`` and
        ``default_threshold``, ``lambda_max``, ``lambda_min`` (0: a Gram matrix), ``step``,
        ``steps``, ``sigma1_sq`` (exact), ``sigma1_sq_source`` and ``sigma1_sq_trace_bound``,
        ``threshold`` (and with the trace bound).
    """
    import invhvp
    from invhvp.bounds import lissa_batch_threshold, lissa_error_bound

    lam_all = default_damping(problem.train_grads)
    j = int(np.argmax(problem.block_sizes)) if block is None else int(block)
    U = problem.train_grads[j]
    n = U.shape[0]
    v = problem.test_grads[j].mean(axis=0)
    op = invhvp.LowRankPlusIdentity(U)
    lmax = float(np.linalg.eigvalsh(U @ U.T / n)[-1])
    s_exact, s_trace = _sigma1_sq(U)
    lam_def = float(lam_all[j])
    lam = _damping_for_threshold(lmax, s_exact, target_threshold)
    eta = 1.0 / (lmax + lam)
    steps = int(max(steps, math.ceil(math.log(0.01) / math.log1p(-eta * lam))))
    thr = lissa_batch_threshold(eta, lam, s_exact)
    u_star = invhvp.solve(op, v, invhvp.Exact(), damping=lam).x
    meta = {
        "setting": problem.setting,
        "rank": problem.rank,
        "block": problem.block_names[j],
        "d": int(U.shape[1]),
        "n": int(n),
        "damping": lam,
        "default_damping": lam_def,
        "default_threshold": lissa_batch_threshold(1.0 / (lmax + lam_def), lam_def, s_exact),
        "lambda_max": lmax,
        "step": eta,
        "steps": steps,
        "sigma1_sq": s_exact,
        "sigma1_sq_trace_bound": s_trace,
        "sigma1_sq_source": "exact (n×n eigenproblem)",
        "lambda_min": 0.0,
        "threshold": thr,
        "threshold_trace_bound": lissa_batch_threshold(eta, lam, s_trace),
    }
    rows = batch_errors(
        op,
        v,
        u_star,
        lam,
        batch_sizes,
        repeats,
        seed,
        eta=eta,
        steps=steps,
        threshold=thr,
        bound=lambda B: lissa_error_bound(eta, lam, lmax, s_exact, B, steps),
    )
    return rows, meta


def batch_errors(
    op, v, u_star, damping, batch_sizes, repeats, seed, *, eta, steps, threshold, bound, **solver_kw
):
    """Error of fixed-step mini-batch LiSSA against ``u_star`` for each batch size B.

    ``repeats`` seeded runs per B; a run that diverges (status or non-finite error) counts in
    ``diverged`` and enters the median/max as infinity. ``bound(B)`` is the predicted error bound
    (docs/theory.md §5); ``solver_kw`` go to :class:`invhvp.LiSSA`.
    """
    import invhvp

    u_star = np.asarray(u_star, dtype=np.float64)
    norm = float(np.linalg.norm(u_star))
    rows = []
    for B in batch_sizes:
        errs, diverged = [], 0
        for r in range(repeats):
            solver = invhvp.LiSSA(step=eta, batch_size=int(B), steps=steps, rng=seed + r, **solver_kw)
            res = invhvp.solve(op, v, solver, damping=damping, on_failure="ignore")
            x = res.x.numpy() if hasattr(res.x, "numpy") else np.asarray(res.x)
            e = float(np.linalg.norm(x - u_star)) / norm
            if res.status.value in ("diverged", "nonfinite") or not math.isfinite(e):
                diverged += 1
                e = math.inf
            errs.append(e)
        rows.append(
            {
                "batch_size": int(B),
                "error_median": float(np.median(errs)),
                "error_max": float(np.max(errs)),
                "diverged": diverged,
                "bound": bound(int(B)),
                "above_threshold": bool(B > threshold),
            }
        )
    return rows
