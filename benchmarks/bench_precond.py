"""Preconditioning benchmarks (issue 10): Nyström-preconditioned CG, preconditioned LiSSA, the Hessian.

Plain script; each part prints markdown tables (recorded in benchmarks/README.md)::

    OMP_NUM_THREADS=1 python benchmarks/bench_precond.py minilm --repeats 3   # PCG vs Exact vs CG
    OMP_NUM_THREADS=1 python benchmarks/bench_precond.py sweep                # iterations across λ
    OMP_NUM_THREADS=1 python benchmarks/bench_precond.py digits-lissa         # automatic LiSSA, 10 seeds
    OMP_NUM_THREADS=1 python benchmarks/bench_precond.py hessian              # CG/LiSSA on the Hessian

``minilm``/``sweep``: real MiniLM-L6 rank-8 LoRA gradients (:mod:`minilm_cache`: n = 2000, the
first 8 of the 24 blocks, d_l = 3072, float32 numpy), paper damping λ_l = 0.1·tr(G_l)/d_l, the
32 test gradients as right-hand sides.  Timings interleave the methods over ``--repeats`` rounds
and report the minimum; threads = 1 (torch and BLAS).  Relative errors are against a float64
Woodbury solve.  ``digits-lissa``/``hessian``: the digits LoRA MLP of ``invhvp validate``
(:mod:`digits_cache`, n = 1000).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))


def _threads():
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover
        pass


def _minilm(dtype=np.float32):
    from minilm_cache import load

    import invhvp as ih

    tr, te, _ = load()
    op = ih.BlockDiagonal([ih.LowRankPlusIdentity(np.ascontiguousarray(U, dtype=dtype)) for U in tr])
    T = np.ascontiguousarray(np.concatenate(te, axis=1).T, dtype=dtype)
    means = [b.trace() / b.size for b in op.blocks]
    op64 = ih.BlockDiagonal([ih.LowRankPlusIdentity(np.asarray(U, dtype=np.float64)) for U in tr])
    return op, op64, T, means


def _rel(x, xs):
    return float(np.max(np.linalg.norm(x - xs, axis=0) / np.linalg.norm(xs, axis=0)))


def _blocks(res, key):
    return [b.get(key) for b in res.info.get("blocks", [res.info])]


def minilm(repeats: int, dtype: str = "float32"):
    import invhvp as ih

    op, op64, T, means = _minilm(np.dtype(dtype))
    print(f"# {dtype} gradients and right-hand sides")
    lam = [0.1 * m for m in means]
    xs = ih.solve(op64, T.astype(np.float64), ih.Exact(), damping=lam).x
    methods = {
        "Exact (Woodbury per block)": ih.Exact(),
        "CG(rtol=1e-4)": ih.CG(rtol=1e-4),
        'CG(rtol=1e-4, preconditioner="nystrom")': ih.CG(rtol=1e-4, preconditioner="nystrom"),
    }
    best = {k: np.inf for k in methods}
    last = {}
    for r in range(repeats):
        for name, solver in methods.items():  # interleaved: every round runs every method
            t0 = time.perf_counter()
            res = ih.solve(op, T, solver, damping=lam, on_failure="ignore")
            best[name] = min(best[name], time.perf_counter() - t0)
            last[name] = res
        print(
            f"# round {r + 1}: " + ", ".join(f"{k.split('(')[0]} {best[k]:.2f}s" for k in methods), flush=True
        )
    print(
        f"\n| method | seconds (min of {repeats}) | status | max iterations | matvecs (solve + setup) | max rel. error vs float64 |"
    )
    print("|---|---:|---|---:|---:|---:|")
    for name, res in last.items():
        print(
            f"| {name} | {best[name]:.2f} | {res.status.value} | {res.n_iter} | {res.n_matvec} + "
            f"{res.info['setup_matvec']} | {_rel(res.x, xs):.2e} |"
        )
    names = list(methods)
    print(
        f"\nPCG / Exact = {best[names[2]] / best[names[0]]:.2f}, PCG / CG = {best[names[2]] / best[names[1]]:.2f}"
    )
    pcg = last[names[2]]
    print("\n| block | sketch rank | growth (rank: κ̂) | ν/λ | sketch matvecs | sketch s | CG iterations |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for i, b in enumerate(pcg.info["blocks"]):
        p = b["preconditioner_info"]
        grow = ", ".join(
            f"{h['rank']}: {h['kappa']:.3g}" if "kappa" in h else f"{h['rank']}: —" for h in p["growth"]
        )
        print(
            f"| {i} | {p['rank']} | {grow} | {p['nu'] / p['mu']:.1e} | {p['sketch_matvec']} | "
            f"{p['sketch_seconds']:.2f} | {int(np.max(b['iterations_per_column']))} |"
        )


def sweep(factors, plain_maxiter: int, dtype: str):
    import invhvp as ih

    op, _, T, means = _minilm(np.dtype(dtype))
    print(
        f"# {dtype}: in float32 the true residual cannot reach 1e-4·‖b‖ for the ill-conditioned blocks at small λ "
        "(status INACCURATE after restarts), so the iteration counts are taken in float64"
    )
    print(
        "| λ / mean eigenvalue | solver | max iterations | mean iterations (blocks) | sketch ranks | seconds | status |"
    )
    print("|---:|---|---:|---:|---|---:|---|")
    for f in factors:
        lam = [f * m for m in means]
        for name, solver in (
            ("CG", ih.CG(rtol=1e-4, maxiter=plain_maxiter)),
            ("Nyström PCG", ih.CG(rtol=1e-4, preconditioner="nystrom")),
        ):
            t0 = time.perf_counter()
            res = ih.solve(op, T, solver, damping=lam, on_failure="ignore")
            dt = time.perf_counter() - t0
            its = [int(np.max(b["iterations_per_column"])) for b in res.info["blocks"]]
            ranks = (
                ""
                if name == "CG"
                else ", ".join(str(b["preconditioner_info"]["rank"]) for b in res.info["blocks"])
            )
            print(
                f"| {f:g} | {name} | {max(its)} | {np.mean(its):.1f} | {ranks} | {dt:.1f} | {res.status.value} |",
                flush=True,
            )


def digits_lissa(rank: int, seeds: int, n_rhs: int):
    from digits_cache import problem

    import invhvp as ih

    p = problem(rank)
    op = ih.BlockDiagonal([ih.LowRankPlusIdentity(U) for U in p.train_grads])
    lam = [0.1 * b.trace() / b.size for b in op.blocks]
    V = np.concatenate([g[:n_rhs] for g in p.test_grads], axis=1).T
    xs = ih.solve(op, V, ih.Exact(), damping=lam).x
    cg = ih.solve(op, V, ih.CG(rtol=0.1), damping=lam)
    cg_total = cg.n_matvec + cg.info["setup_matvec"]
    print(f"# digits LoRA MLP rank {rank}: blocks {p.block_sizes}, n = {p.n_train}, {n_rhs} test gradients")
    print(
        f"# CG(rtol=0.1): {cg.n_matvec} matvecs + {cg.info['setup_matvec']} setup, max rel. error {_rel(cg.x, xs):.3f}"
    )
    print(
        "| seed | status | max rel. error | matvecs | setup matvecs | (matvecs+setup) / CG's | plans (block: choice, batch, steps) | seconds |"
    )
    print("|---:|---|---:|---:|---:|---:|---|---:|")
    worst = 0.0
    for s in range(seeds):
        t0 = time.perf_counter()
        res = ih.solve(op, V, ih.LiSSA(rng=s), damping=lam, on_failure="ignore")
        dt = time.perf_counter() - t0
        rel = _rel(res.x, xs)
        worst = max(worst, rel)
        plans = "; ".join(
            f"{b['choice']}, {b['plan']['batch_size'] or 'full'}, {b['plan']['steps']}"
            for b in res.info["blocks"]
        )
        tot = res.n_matvec + res.info["setup_matvec"]
        print(
            f"| {s} | {res.status.value} | {rel:.2e} | {res.n_matvec} | {res.info['setup_matvec']} | {tot / cg_total:.2f} | {plans} | {dt:.2f} |",
            flush=True,
        )
    plain = ih.solve(op, V, ih.LiSSA(rng=0, preconditioner=None), damping=lam, on_failure="ignore")
    need = [b["plan"]["cost_to_meet_target"] for b in plain.info["blocks"]]
    print(
        f"\nworst relative error over {seeds} seeds: {worst:.2e}; plain LiSSA (preconditioner=None): status "
        f"{plain.status.value}, its plans need {min(need) / p.n_train:.0f}–{max(need) / p.n_train:.0f} matvecs per column and block"
    )


def hessian():
    import torch

    import invhvp as ih
    from invhvp.validate.digits import digits_problems

    (prob,), (model,) = digits_problems([1], seed=0, return_models=True)
    H = model.hessian()
    t0 = time.perf_counter()
    dense = H.to_dense().numpy()
    t_dense = time.perf_counter() - t0
    dense = (dense + dense.T) / 2
    ev = np.linalg.eigvalsh(dense)
    rhs = torch.as_tensor(np.ascontiguousarray(np.concatenate([g[:8] for g in prob.test_grads], axis=1).T))
    print(
        f"# digits Hessian (rank 1 LoRA, n = {prob.n_train}): d = {H.size}, λ_min = {ev[0]:.4g}, λ_max = {ev[-1]:.4g}, "
        f"{int(np.sum(ev < 0))} negative eigenvalues, mean eigenvalue {ev.mean():.4g} (paper damping "
        f"{0.1 * ev.mean():.3g}); dense Hessian {t_dense:.1f} s"
    )
    print(
        "| λ | solver | status | max rel. error vs dense solve | matvecs + setup | lower end (estimate) | seconds |"
    )
    print("|---:|---|---|---:|---:|---:|---:|")
    for lam in (2.0 * abs(ev[0]), 0.5 * abs(ev[0])):
        xs = np.linalg.solve(dense + lam * np.eye(H.size), rhs.numpy()) if lam > -ev[0] else None
        for name, solver in (
            ("CG(rtol=1e-10)", ih.CG(rtol=1e-10)),
            ('CG(rtol=1e-10, preconditioner="nystrom")', ih.CG(rtol=1e-10, preconditioner="nystrom")),
            ("LiSSA() (automatic)", ih.LiSSA(rng=0)),
        ):
            t0 = time.perf_counter()
            res = ih.solve(H, rhs, solver, damping=lam, on_failure="ignore")
            dt = time.perf_counter() - t0
            err = "—" if xs is None else f"{_rel(res.x.numpy(), xs):.1e}"
            low = res.info.get("lower_end", {}).get("lower")
            print(
                f"| {lam:.3g} | {name} | {res.status.value} | {err} | {res.n_matvec} + {res.info['setup_matvec']} | "
                f"{low:.4g} | {dt:.1f} |",
                flush=True,
            )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["minilm", "sweep", "digits-lissa", "hessian"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--factors", type=float, nargs="+", default=[1e-1, 1e-2, 1e-3])
    ap.add_argument("--plain-maxiter", type=int, default=5000)
    ap.add_argument(
        "--dtype", default="sweep-default", help="dtype of the gradients (minilm: float32, sweep: float64)"
    )
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--rhs", type=int, default=10)
    args = ap.parse_args(argv)
    _threads()
    print(
        f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, numpy {np.__version__}, "
        f"1 thread, load average {os.getloadavg()[0]:.1f} at start"
    )
    if args.part == "minilm":
        minilm(args.repeats, "float32" if args.dtype == "sweep-default" else args.dtype)
    elif args.part == "sweep":
        sweep(args.factors, args.plain_maxiter, "float64" if args.dtype == "sweep-default" else args.dtype)
    elif args.part == "digits-lissa":
        digits_lissa(args.rank, args.seeds, args.rhs)
    else:
        hessian()


if __name__ == "__main__":
    main()
