"""GPU figures in one short run: every solver on a LoRA-like block-diagonal problem, torch CPU vs CUDA.

Problem: 4 blocks, n = 2000 per-sample gradients of d_l = 3072 (rank-limited, decaying spectrum),
float32, paper damping, 64 right-hand sides — the problem of ``bench_inverse.py``.  For each
device and solver: the fresh ``solve`` (one-time work + apply), a second ``inv.solve`` on new
right-hand sides, the status, and the largest difference from float64 Exact on the CPU.  Repeats
are interleaved and the minimum is reported; CUDA timings are synchronized.

    python benchmarks/bench_gpu.py --repeats 3            # CUDA rows only when a GPU is present
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import invhvp as ih

from .bench_inverse import problem  # noqa: E402  (run as python -m benchmarks.bench_gpu)


def _sync(dev):
    import torch

    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None):
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    op_np, lam, (b1, b2) = problem()
    U = [np.asarray(b.factor) for b in op_np.blocks]
    ref = ih.solve(ih.BlockDiagonal([ih.LowRankPlusIdentity(u.astype(np.float64)) for u in U]),
                   b2.astype(np.float64), ih.Exact(), damping=lam).x
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    solvers = {
        "exact": ih.Exact(),
        "datainf": ih.DataInf(),
        "cg-nystrom": ih.CG(rtol=1e-3, preconditioner="nystrom"),
        "cg": ih.CG(rtol=1e-3, maxiter=500),
    }
    print(f"4 blocks, n=2000, d_l=3072, 64 rhs, float32, torch {torch.__version__}, threads={args.threads}")
    print("| device | solver | fresh solve s | second inv.solve s | status | max |x − x_exact64| / max|x_exact64| |")
    print("|---|---|---|---|---|---|")
    for dev in devices:
        op = ih.BlockDiagonal([ih.LowRankPlusIdentity(torch.as_tensor(u, device=dev)) for u in U])
        B1, B2 = (torch.as_tensor(b, device=dev) for b in (b1, b2))
        for name, solver in solvers.items():
            fresh, second = [], []
            for _ in range(args.repeats):
                _sync(dev)
                t = time.perf_counter()
                inv = ih.inverse(op, solver, damping=lam, on_failure="ignore")
                inv.solve(B1)
                _sync(dev)
                fresh.append(time.perf_counter() - t)
                t = time.perf_counter()
                res = inv.solve(B2)
                _sync(dev)
                second.append(time.perf_counter() - t)
            diff = float(np.max(np.abs(res.x.cpu().numpy() - ref)) / np.max(np.abs(ref)))
            print(f"| {dev} | {name} | {min(fresh):.3f} | {min(second):.3f} | {res.status.value} | {diff:.2e} |")


if __name__ == "__main__":
    main()
