"""Torch adapter benchmark: LoRA MiniLM-L6 per-sample gradients and end-to-end influence.

Plain script (not an asv suite)::

    python benchmarks/bench_adapter.py --n-train 256 1024 --n-test 32 --device cpu --threads 2
    python benchmarks/bench_adapter.py --device cuda          # on a GPU machine

Prints one markdown table row per (n, solver): gradient throughput (samples/s over train+test),
solve time (influence matrix from the gradients), end-to-end time (gradients + solve) and the
Pearson correlation of the influence values with the exact block inverse.  Needs the ``lora``
extra; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import platform
import time


def _sync(device):
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, nargs="+", default=[256])
    ap.add_argument("--n-test", type=int, default=32)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=8)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--finetune-steps", type=int, default=30)
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--solvers", nargs="+", default=["exact", "datainf", "identity", "lissa", "cg"])
    ap.add_argument("--cg-maxiter", type=int, default=300)
    ap.add_argument("--lissa-max-matvec", type=float, default=2000.0)
    args = ap.parse_args(argv)

    import torch

    import invhvp as ih
    from invhvp.adapters import influence, minilm_lora_setup, per_sample_gradients

    if args.threads:
        torch.set_num_threads(args.threads)
    solvers = {
        "exact": lambda: ih.Exact(),
        "datainf": lambda: ih.DataInf(),
        "identity": lambda: ih.Identity(),
        "lissa": lambda: ih.LiSSA(rng=0, max_matvec=args.lissa_max_matvec),
        "cg": lambda: ih.CG(rtol=1e-3, maxiter=args.cg_maxiter),
    }
    print(
        f"# machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, device {args.device}, LoRA rank {args.rank} on query/value, "
        f"max_length {args.max_length}, chunk {args.chunk_size}"
    )
    print(
        "| n train | m test | d (LoRA) | setup s | grad samples/s | solver | solve s | end-to-end s | corr vs exact | status |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in args.n_train:
        t0 = time.perf_counter()
        s = minilm_lora_setup(
            n,
            args.n_test,
            rank=args.rank,
            max_length=args.max_length,
            finetune_steps=args.finetune_steps,
            device=args.device,
        )
        t_setup = time.perf_counter() - t0
        per_sample_gradients(s.model, s.loss_fn, s.test[:1], chunk_size=args.chunk_size)  # warm-up
        _sync(args.device)
        t0 = time.perf_counter()
        g_tr = per_sample_gradients(s.model, s.loss_fn, s.train, chunk_size=args.chunk_size)
        g_te = per_sample_gradients(s.model, s.loss_fn, s.test, chunk_size=args.chunk_size)
        _sync(args.device)
        t_grad = time.perf_counter() - t0
        rate = (n + args.n_test) / t_grad
        exact = None
        for name in args.solvers:
            _sync(args.device)
            t0 = time.perf_counter()
            res = influence(None, None, g_tr, g_te, solvers[name](), on_failure="ignore")
            _sync(args.device)
            t_solve = time.perf_counter() - t0
            if name == "exact":
                exact = res.values
            corr = ""
            if exact is not None:
                v = torch.stack([res.values.flatten(), exact.flatten()]).double()
                corr = f"{float(torch.corrcoef(v)[0, 1]):.3f}"
            status = "ok" if bool(torch.isfinite(res.values).all()) else "non-finite"
            print(
                f"| {n} | {args.n_test} | {sum(g_tr.sizes)} | {t_setup:.1f} | {rate:.1f} | {name} | "
                f"{t_solve:.3f} | {t_grad + t_solve:.2f} | {corr} | {status} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
