"""LiSSA on a Gram problem built from real per-sample gradients (scikit-learn's digits).

Run::

    python -m validation.lissa_study --out validation/out/lissa        # ~1-2 minutes on 2 cores
    python validation/lissa_study.py --out DIR --quick

The problem (:func:`digits_gram_problem`, reusable): multinomial logistic regression
``softmax(W x̃)`` on the 8×8 digits (pixels scaled to [0, 1], a bias feature; ``d = 65·10 =
650``), trained briefly by L-BFGS with a small L2 penalty on ``n_train`` points.  Per-sample
gradients have the closed form ``g_i = x̃_i ⊗ (p_i − y_i)`` (computed for all points at once,
no loop).  ``G = (1/n) Σ g_i g_iᵀ`` with the docs/theory.md §2 damping ``λ = 0.1·tr(G)/d``; the
right-hand side is the mean test-loss gradient.

The study writes (outputs policy: everything goes to ``--out``, default
``validation/out/lissa/``, which is not committed; the tables are quoted in
``benchmarks/README.md``):

- ``settings.csv`` / ``settings.md``: automatic LiSSA (10 seeds) beside the classic fixed
  settings other libraries ship (``scale 10 / depth 1000``, ``scale 50 / depth 5000``,
  10 full-batch iterations with ``scale 1``) and CG — relative error against Exact, status,
  matvecs;
- ``settings_raw_pixels.csv`` / ``.md``: the same on an unscaled-pixel model trained for 10
  L-BFGS iterations (``λ_max ≈ 57``: the classic steps exceed ``2/(λ_max+λ)``);
- ``grid.csv`` / ``grid.md`` and ``lissa_grid.png``: error versus batch size for three steps
  on the same gradients with a larger damping (so that the predicted batch threshold lies
  inside ``[1, n]``), with the threshold marked.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["GramProblem", "digits_gram_problem", "sigma1_sq_exact", "run_study", "main"]


@dataclass(frozen=True)
class GramProblem:
    """Per-sample gradients ``grads`` (n×d), damping, right-hand side ``rhs`` (d,) and metadata."""

    grads: np.ndarray
    damping: float
    rhs: np.ndarray
    test_grads: np.ndarray
    meta: dict = field(default_factory=dict)


def digits_gram_problem(
    n_train: int = 1200,
    *,
    seed: int = 0,
    damping_factor: float = 0.1,
    weight_decay: float = 1e-3,
    maxiter: int = 100,
    pixel_scale: float = 16.0,
) -> GramProblem:
    """The digits logistic-regression Gram problem (deterministic for a given ``seed``).

    Parameters
    ----------
    n_train : int
        Training points (the rest of the 1797 are the test split).
    seed : int
        Seed of the train/test permutation.
    damping_factor : float
        ``λ = damping_factor · tr(G)/d`` (docs/theory.md §2; 0.1 is the paper's rule).
    weight_decay, maxiter : float, int
        L2 penalty and L-BFGS iterations of the brief training.
    pixel_scale : float
        Pixels (0..16) are divided by this; ``1.0`` keeps raw pixels, which makes the
        gradients ~16× and ``λ_max`` ~256× larger (the classic fixed steps then diverge).

    Returns
    -------
    GramProblem
        ``grads`` float64 ``(n_train, 650)``; ``rhs`` the mean test gradient.
    """
    import scipy.optimize
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(len(y))
    X, y = X[perm], y[perm]
    if not 1 <= n_train < len(y):
        raise ValueError(f"n_train: expected 1 <= n_train < {len(y)}, got {n_train}")
    Xt = np.hstack([X / float(pixel_scale), np.ones((len(y), 1))])
    Y = np.eye(10)[y]
    A, Ya = Xt[:n_train], Y[:n_train]
    p_in, c = Xt.shape[1], 10

    def probs(W, M):
        Z = M @ W
        Z = Z - Z.max(axis=1, keepdims=True)
        P = np.exp(Z)
        return P / P.sum(axis=1, keepdims=True)

    def f(w):
        W = w.reshape(p_in, c)
        P = probs(W, A)
        loss = -np.mean(np.log(np.sum(P * Ya, axis=1) + 1e-300)) + 0.5 * weight_decay * (w @ w)
        grad = A.T @ (P - Ya) / n_train + weight_decay * W
        return loss, grad.ravel()

    res = scipy.optimize.minimize(
        f, np.zeros(p_in * c), jac=True, method="L-BFGS-B", options={"maxiter": maxiter}
    )
    W = res.x.reshape(p_in, c)
    P = probs(W, Xt)
    G = (Xt[:, :, None] * (P - Y)[:, None, :]).reshape(len(y), p_in * c)
    U, T = G[:n_train], G[n_train:]
    d = U.shape[1]
    lam = damping_factor * float(np.sum(U * U)) / (n_train * d)
    meta = {
        "n": n_train,
        "d": d,
        "test_accuracy": float(np.mean(P[n_train:].argmax(1) == y[n_train:])),
        "damping_factor": damping_factor,
        "pixel_scale": pixel_scale,
        "train_loss": float(res.fun),
    }
    return GramProblem(grads=U, damping=lam, rhs=T.mean(axis=0), test_grads=T, meta=meta)


def sigma1_sq_exact(U: np.ndarray) -> tuple[float, float]:
    """``σ₁² = ‖E(g gᵀ − G)²‖₂`` (exact, O(nd² + d³)) and the trace bound ``mean‖g‖⁴ − tr G²``."""
    n = U.shape[0]
    r = np.sum(U * U, axis=1)
    G = U.T @ U / n
    S = (U.T * r) @ U / n - G @ G
    return float(np.linalg.eigvalsh(S)[-1]), float(np.mean(r * r) - np.sum(G * G))


def _rel(x, xs):
    return float(np.linalg.norm(x - xs) / np.linalg.norm(xs))


def _run(op, v, solver, lam, xs):
    import invhvp as ih

    t0 = time.perf_counter()
    res = ih.solve(op, v, solver, damping=lam, on_failure="ignore")
    return res, _rel(res.x, xs), time.perf_counter() - t0


def settings_rows(prob: GramProblem, seeds=range(10)):
    """Automatic LiSSA over ``seeds``, the classic fixed settings and CG on ``prob``."""
    import invhvp as ih

    op = ih.LowRankPlusIdentity(prob.grads)
    v, lam = prob.rhs, prob.damping
    xs = ih.solve(op, v, ih.Exact(), damping=lam).x
    rows = []
    auto = [_run(op, v, ih.LiSSA(rng=s), lam, xs) for s in seeds]
    errs = [e for _, e, _ in auto]
    r0 = auto[0][0]
    plan = r0.info["plan"]
    rows.append(
        {
            "setting": f"automatic (rtol=0.1), {len(errs)} seeds",
            "step": plan["step"],
            "batch": plan["batch_size"] or "full",
            "steps": plan["steps"],
            "rel_error": f"max {max(errs):.3g} (median {np.median(errs):.3g})",
            "status": ",".join(sorted({r.status.value for r, _, _ in auto})),
            "n_matvec": int(np.median([r.n_matvec for r, _, _ in auto])),
            "seconds": float(np.median([t for _, _, t in auto])),
            "predicted_bound": plan["predicted_error"],
        }
    )
    classic = [
        ("scale 10 / depth 1000, B=1", ih.LiSSA.from_scale(10, 1000, 1, rng=0)),
        ("scale 10 / depth 1000, B=64", ih.LiSSA.from_scale(10, 1000, 64, rng=0)),
        ("scale 50 / depth 5000, B=1", ih.LiSSA.from_scale(50, 5000, 1, rng=0)),
        ("scale 50 / depth 5000, B=64", ih.LiSSA.from_scale(50, 5000, 64, rng=0)),
        ("scale 1 / 10 full-batch iterations", ih.LiSSA.from_scale(1, 10, "full")),
        ("CG (rtol 1e-2), reference", ih.CG(rtol=1e-2)),
    ]
    for name, solver in classic:
        res, err, sec = _run(op, v, solver, lam, xs)
        p = res.info.get("plan", {})
        rows.append(
            {
                "setting": name,
                "step": p.get("step", ""),
                "batch": (p.get("batch_size") or "full") if p else "",
                "steps": p.get("steps", res.n_iter),
                "rel_error": f"{err:.3g}" if res.ok else f"n/a (stopped at step {res.n_iter})",
                "status": res.status.value,
                "n_matvec": res.n_matvec,
                "seconds": sec,
                "predicted_bound": "",
            }
        )
    return rows, errs


def grid_rows(prob: GramProblem, damping_factor=10.0, fractions=(1.0, 0.25, 1 / 16), batches=None, repeats=3):
    """Error versus batch size for steps ``η = f/(λ_max+λ)`` at a larger damping."""
    import invhvp as ih
    from invhvp.bounds import lissa_batch_threshold, lissa_error_bound

    U = prob.grads
    n, d = U.shape
    lam = prob.damping * damping_factor / prob.meta["damping_factor"]
    op = ih.LowRankPlusIdentity(U)
    xs = ih.solve(op, prob.rhs, ih.Exact(), damping=lam).x
    lmax = float(np.linalg.eigvalsh(U.T @ U / n)[-1])
    s_ex, s_tr = sigma1_sq_exact(U)
    batches = batches or [1, 4, 16, 64, 256, 1024, 4096]
    rows, meta = [], {"damping": lam, "lambda_max": lmax, "sigma1_sq": s_ex, "sigma1_sq_trace_bound": s_tr}
    for f in fractions:
        eta = f / (lmax + lam)
        T = int(math.ceil(math.log(100.0) / (eta * lam)))  # deterministic part (1-ηλ)^T <= 1e-2
        thr, thr_tr = lissa_batch_threshold(eta, lam, s_ex), lissa_batch_threshold(eta, lam, s_tr)
        for B in batches:
            errs, stats = [], set()
            for r in range(repeats):
                res, err, _ = _run(op, prob.rhs, ih.LiSSA(step=eta, batch_size=B, steps=T, rng=r), lam, xs)
                stats.add(res.status.value)
                errs.append(err if res.status.value == "success" else math.inf)
            rows.append(
                {
                    "step_fraction": f,
                    "step": eta,
                    "steps": T,
                    "batch": B,
                    "median_rel_error": float(np.median(errs)),
                    "max_rel_error": float(np.max(errs)),
                    "status": ",".join(sorted(stats)),
                    "threshold_exact_sigma": thr,
                    "threshold_trace_bound": thr_tr,
                    "bound": lissa_error_bound(eta, lam, lmax, s_ex, B, T),
                    "n_matvec": math.ceil(T * B / n),
                }
            )
    return rows, meta


def _write(out: Path, name: str, rows, title: str):
    keys = list(rows[0])
    with open(out / f"{name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, keys)
        w.writeheader()
        w.writerows(rows)

    def fmt(x):
        return f"{x:.3g}" if isinstance(x, float) else str(x)

    lines = [f"### {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def _plot(out: Path, rows, meta):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for f in sorted({r["step_fraction"] for r in rows}, reverse=True):
        rr = [r for r in rows if r["step_fraction"] == f]
        b = [r["batch"] for r in rr]
        e = [min(r["median_rel_error"], 1e3) for r in rr]
        (line,) = ax.loglog(b, e, "o-", label=f"η = {f:.3g}/(λmax+λ), T={rr[0]['steps']}")
        ax.axvline(rr[0]["threshold_exact_sigma"], color=line.get_color(), ls=":", lw=1)
    ax.axhline(0.1, color="k", lw=0.6, ls="--")
    ax.set_xlabel("batch size B (dotted: predicted threshold ησ₁²/(λ(2−ηλ)))")
    ax.set_ylabel("relative error vs Exact (median of seeds; 1e3 = diverged)")
    ax.set_title(f"LiSSA on digits gradients, λ={meta['damping']:.3g}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "lissa_grid.png", dpi=120)
    plt.close(fig)


def run_study(out_dir, *, quick: bool = False) -> dict:
    """Run the whole study, write CSV/markdown/PNG under ``out_dir``; return the rows."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prob = digits_gram_problem()
    rows, errs = settings_rows(prob, seeds=range(3 if quick else 10))
    md1 = _write(
        out,
        "settings",
        rows,
        f"digits logistic regression, n={prob.meta['n']}, d={prob.meta['d']}, λ={prob.damping:.3g} (0.1·tr(G)/d)",
    )
    raw = digits_gram_problem(pixel_scale=1.0, maxiter=10)
    rows_raw, errs_raw = settings_rows(raw, seeds=range(3))
    md1 += "\n\n" + _write(
        out,
        "settings_raw_pixels",
        rows_raw,
        f"raw pixels 0..16, 10 L-BFGS iterations, n={raw.meta['n']}, λ={raw.damping:.3g} (0.1·tr(G)/d)",
    )
    g, meta = grid_rows(prob, batches=[1, 16, 256, 4096] if quick else None, repeats=2 if quick else 3)
    md2 = _write(out, "grid", g, f"error vs batch size, λ={meta['damping']:.3g}, σ₁²={meta['sigma1_sq']:.3g}")
    _plot(out, g, meta)
    print(md1 + "\n\n" + md2)
    return {
        "settings": rows,
        "auto_errors": errs,
        "settings_raw": rows_raw,
        "auto_errors_raw": errs_raw,
        "grid": g,
        "grid_meta": meta,
        "problem": prob.meta,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join("validation", "out", "lissa"))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    try:
        from threadpoolctl import threadpool_limits

        ctx = threadpool_limits(1)  # small products: threads only add contention
    except ImportError:  # pragma: no cover
        import contextlib

        ctx = contextlib.nullcontext()
    with ctx:
        run_study(args.out, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
