"""Command line: ``invhvp validate`` (the papers' experiments, written as a report) and ``invhvp demo``.

Run ``invhvp --help`` or ``python -m invhvp --help``.
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main", "build_parser", "demo"]


def _ranks(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}"
        ) from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return vals


def _device(text: str) -> str:
    t = text.strip().lower()
    if t == "cpu" or t == "torch-cpu" or t == "cuda" or (t.startswith("cuda:") and t[5:].isdigit()):
        return t
    raise argparse.ArgumentTypeError(f"expected 'cpu', 'torch-cpu', 'cuda' or 'cuda:N', got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """The ``invhvp`` argument parser (subcommands ``validate`` and ``demo``)."""
    p = argparse.ArgumentParser(
        prog="invhvp",
        description="Inverse damped Hessian/Gauss-Newton vector products for influence functions.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    v = sub.add_parser(
        "validate",
        help="reproduce the papers' experiments (DataInf, LiSSA) and write a report",
        description=(
            "Approximation error, mislabel detection, runtime and theory checks of the invhvp "
            "solvers on a LoRA MLP (scikit-learn digits) and a LoRA MiniLM text classifier, with "
            "20%% flipped training labels. Writes report.md, CSV/JSON tables and PNG plots."
        ),
    )
    mode = v.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help="a few minutes on 2 CPU cores (default)",
    )
    mode.add_argument(
        "--full",
        dest="mode",
        action="store_const",
        const="full",
        help="larger samples, all ranks in both settings, the published LiSSA depths",
    )
    mode.add_argument("--smoke", dest="mode", action="store_const", const="smoke", help=argparse.SUPPRESS)
    v.set_defaults(mode="quick")
    v.add_argument(
        "--out", default="invhvp-report", metavar="DIR", help="report folder (default: ./invhvp-report)"
    )
    v.add_argument(
        "--device",
        type=_device,
        default="cpu",
        help="where the solves run: 'cpu' (numpy, default), 'torch-cpu', 'cuda' or 'cuda:N' (torch)",
    )
    v.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    v.add_argument(
        "--ranks",
        type=_ranks,
        default=None,
        metavar="R,R,...",
        help="LoRA ranks of the digits setting (default 1,2,4,8)",
    )
    v.add_argument("--no-minilm", action="store_true", help="skip the MiniLM setting")
    v.add_argument("--no-progress", action="store_true", help="no progress bars")
    d = sub.add_parser("demo", help="a 10-second example: Exact vs CG on a LowRankPlusIdentity operator")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return p


def demo(seed: int = 0, echo=print) -> dict:
    """Solve one damped low-rank system with Exact (Woodbury) and CG and print what happened.

    Returns
    -------
    dict
        ``{"exact": SolveResult, "cg": SolveResult, "difference": float}``.
    """
    import numpy as np

    import invhvp as ih

    rng = np.random.default_rng(seed)
    n, d = 200, 20_000
    U = rng.standard_normal((n, d)) / np.sqrt(d)
    b = rng.standard_normal(d)
    G = ih.LowRankPlusIdentity(U)
    lam = ih.default_damping(G)
    echo(f"(G + λI) x = b with G = UᵀU/n, U {n}×{d} (per-sample gradients), λ = {lam:.3g}")
    out = {}
    for name, solver in (("exact", ih.Exact()), ("cg", ih.CG(rtol=1e-10))):
        t = time.perf_counter()
        res = ih.solve(G, b, solver, damping=lam)
        dt = time.perf_counter() - t
        out[name] = res
        echo(
            f"  {name:6s} method={res.info.get('method')!s:9s} status={res.status.value:8s} "
            f"iterations={res.n_iter:4d} matvecs={res.n_matvec:4d} "
            f"residual={float(res.residual_norm):.2e} time={dt:.3f}s"
        )
    diff = float(np.linalg.norm(out["exact"].x - out["cg"].x) / np.linalg.norm(out["exact"].x))
    out["difference"] = diff
    echo(f"  relative difference Exact vs CG: {diff:.2e}")
    echo("Next: `invhvp validate` reproduces the DataInf/LiSSA experiments and writes a report.")
    return out


def main(argv=None) -> int:
    """Entry point of the ``invhvp`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(seed=args.seed)
        return 0
    from .validate import preset, run_validation

    device = None if args.device == "cpu" else ("cpu" if args.device == "torch-cpu" else args.device)
    if device and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available on this machine")
    overrides = {"device": device, "seed": args.seed}
    if args.ranks:
        overrides["ranks"] = args.ranks
    if args.no_minilm:
        overrides["minilm_ranks"] = ()
    cfg = preset(args.mode, **overrides)
    cmd = "invhvp " + " ".join(sys.argv[1:] if argv is None else list(argv))
    run_validation(cfg, args.out, command=cmd.strip(), bars=not args.no_progress)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
