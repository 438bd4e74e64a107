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


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _device(text: str) -> str:
    t = text.strip().lower()
    if t == "cpu" or t == "torch-cpu" or t == "cuda" or (t.startswith("cuda:") and t[5:].isdigit()):
        return t
    raise argparse.ArgumentTypeError(f"expected 'cpu', 'torch-cpu', 'cuda' or 'cuda:N', got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """The ``invhvp`` argument parser (subcommands ``validate`` and ``demo``)."""
    from .validate.threads import physical_cores

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
            "20 percent of the training labels flipped. Writes report.md, CSV/JSON tables and PNG "
            "plots. The expected duration is printed before the run starts (--estimate prints only "
            "that): about 3-4 minutes for --quick and about 1.5 hours for --full on an idle 2-core "
            "machine (validation/README.md)."
        ),
    )
    mode = v.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help="digits n=500, m=100 and MiniLM n=200, m=40 at ranks 1,2,4,8; a few minutes on 2 CPU cores (default)",
    )
    mode.add_argument(
        "--full",
        dest="mode",
        action="store_const",
        const="full",
        help="the paper-scale study: digits n=1000, m=200 and MiniLM n=2000, m=200 at ranks 1,2,4,8, "
        "the published LiSSA depths",
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
        help="'cpu' (default: torch gradients on the CPU, numpy solves), 'torch-cpu' (torch solves on the "
        "CPU), 'cuda' or 'cuda:N' (gradients and solves on that GPU)",
    )
    v.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="compute threads of torch and of every BLAS/OpenMP pool, for the whole run (default: the "
        f"physical cores, here {physical_cores()}, less the other processes' runnable threads, re-checked "
        "before each item)",
    )
    v.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    v.add_argument(
        "--ranks",
        type=_ranks,
        default=None,
        metavar="R,R,...",
        help="LoRA ranks of the digits setting (default 1,2,4,8)",
    )
    v.add_argument(
        "--n-train",
        type=_positive_int,
        default=None,
        metavar="N",
        help="digits training points n (quick 500, full 1000)",
    )
    v.add_argument(
        "--n-test",
        type=_positive_int,
        default=None,
        metavar="M",
        help="digits test points m (quick 100, full 200)",
    )
    mini = v.add_mutually_exclusive_group()
    mini.add_argument(
        "--minilm-ranks",
        type=_ranks,
        default=None,
        metavar="R,R,...",
        help="LoRA ranks of the MiniLM setting (default 1,2,4,8)",
    )
    mini.add_argument("--no-minilm", action="store_true", help="skip the MiniLM setting")
    v.add_argument(
        "--minilm-n-train",
        type=_positive_int,
        default=None,
        metavar="N",
        help="MiniLM training words n (quick 200, full 2000)",
    )
    v.add_argument(
        "--minilm-n-test",
        type=_positive_int,
        default=None,
        metavar="M",
        help="MiniLM test words m (quick 40, full 200)",
    )
    v.add_argument("--estimate", action="store_true", help="print the expected duration of the run and exit")
    v.add_argument("--no-progress", action="store_true", help="no progress bar (one line per phase instead)")
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


def _check_cuda(parser, text: str) -> None:
    """``parser.error`` (exit status 2) naming ``--device`` unless that CUDA device exists."""
    try:
        import torch
    except ImportError:
        parser.error(f"--device {text}: torch is not installed")
    if not torch.cuda.is_available():
        parser.error(f"--device {text}: CUDA is not available on this machine (torch {torch.__version__})")
    idx = int(text.split(":")[1]) if ":" in text else 0
    if idx >= torch.cuda.device_count():
        parser.error(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def main(argv=None) -> int:
    """Entry point of the ``invhvp`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(seed=args.seed)
        return 0
    from .errors import InputError
    from .validate import preset, run_validation
    from .validate.threads import passive_openmp

    passive_openmp()  # before torch loads libgomp: idle OpenMP threads sleep instead of spinning

    device = None if args.device == "cpu" else ("cpu" if args.device == "torch-cpu" else args.device)
    if device and device.startswith("cuda"):
        _check_cuda(parser, args.device)
    overrides = {
        "device": device,
        "seed": args.seed,
        "threads": args.threads,
        "digits_n_train": args.n_train,
        "digits_n_test": args.n_test,
        "minilm_n_train": args.minilm_n_train,
        "minilm_n_test": args.minilm_n_test,
    }
    if args.ranks:
        overrides["ranks"] = args.ranks
    if args.minilm_ranks:
        overrides["minilm_ranks"] = args.minilm_ranks
    if args.no_minilm:
        overrides["minilm_ranks"] = ()
    try:
        cfg = preset(args.mode, **overrides)
    except InputError as exc:
        parser.error(str(exc))
    cmd = "invhvp " + " ".join(sys.argv[1:] if argv is None else list(argv))
    run_validation(cfg, args.out, command=cmd.strip(), bars=not args.no_progress, estimate_only=args.estimate)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
