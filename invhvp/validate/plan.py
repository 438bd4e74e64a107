"""The work items of a validation run and their expected cost (a cost model from the sizes).

Every item of every phase (gradients, each method × rank, DataInf bounds, the LiSSA studies)
gets an expected duration in seconds from its sizes: floating-point work divided by a
matrix-multiply rate measured on this machine (:func:`machine_gflops`, ~0.01 s) plus per-block
and per-step overheads, with constants fitted to a quick run on a 2-core x86 VM.  The progress
bar (:mod:`.progress`) advances by these costs and recalibrates them as items finish, so its
ETA is weighted by what is left, not by how many items are left.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..solvers.lissa_setup import DEFAULT_MAX_MATVEC

__all__ = ["Item", "build_plan", "machine_gflops", "digits_block_sizes", "minilm_block_sizes", "REF_GFLOPS"]

#: float64 matrix-multiply rate (GFLOP/s, best of 3 products of 384×384 matrices, 2 threads) of the
#: machine the constants below were fitted on: a 2-core x86 VM (quick run of 2025, `timings.csv`).
REF_GFLOPS = 118.0
#: What :func:`machine_gflops` (one thread) measures on that machine.
REF_PROBE = 58.0
#: Per method: (seconds per block and call, multiplier of the flop count / measured rate), fitted
#: by non-negative least squares to the 8 (setting, rank) problems of a quick run.
METHOD_FIT = {
    "exact": (0.014, 1.65),
    "datainf": (0.0008, 5.8),
    "identity": (0.0001, 4.9),
    "cg": (0.0, 10.1),
    "cg-nystrom": (0.036, 20.8),
    "lissa-auto": (0.0, 5.1),
    "lissa-nystrom": (0.037, 14.2),
    "lissa-fb10": (0.0022, 2.8),
    "lissa-classic": (0.009, 110.0),  # batch 1: the per-step update of the d×q iterate dominates
}
#: MiniLM per rank: setup seconds, fine-tuning samples/s, per-sample gradients samples/s.
MINILM_SETUP_S, MINILM_TRAIN_RATE, MINILM_GRAD_RATE = 2.3, 400.0, 110.0
#: DataInf bounds: seconds per unit of the intermediate bound's work n·r³ (r = min(n, d_l)).
DATAINF_S_PER_WORK = 1.45e-10
#: The Hessian study: seconds per (Hessian dimension × training point) (dense reference and σ₁²
#: estimates) and per LiSSA step (a mini-batch Hessian-vector product).
HESSIAN_S_PER_DN, HESSIAN_S_PER_STEP = 5.6e-5, 5.0e-3


@dataclass(frozen=True)
class Item:
    """One unit of work.

    Attributes
    ----------
    key : tuple
        Unique key, e.g. ``("influence", "minilm", 8, "cg")``.
    phase : str
        ``"gradients"``, ``"influence"``, ``"datainf bounds"``, ``"lissa study"``, ``"hessian study"``.
    kind : str
        Calibration group (items of one kind share a correction factor).
    label : str
        Shown by the progress bar.
    cost : float
        Expected seconds on the reference machine.
    """

    key: tuple
    phase: str
    kind: str
    label: str
    cost: float


def machine_gflops(size: int = 256, repeats: int = 5) -> float:
    """Single-thread float64 matrix-multiply rate (GFLOP/s, best of ``repeats``, about 10 ms).

    One thread, so that the probe measures the core and not a momentary contention between
    BLAS threads (with 2 threads beside another job the same product ran 20× slower).
    """
    import numpy as np
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((size, size))
    best = float("inf")
    with threadpool_limits(1, user_api="blas"):
        a @ a
        for _ in range(repeats):
            t = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - t)
    return 2.0 * size**3 / max(best, 1e-9) / 1e9


def digits_block_sizes(rank: int, hidden: int) -> list[int]:
    """``d_l`` of the 6 LoRA tensors ``A1, B1, A2, B2, A3, B3`` of the digits MLP."""
    return [64 * rank, hidden * rank] + [hidden * rank] * 4


def minilm_block_sizes(rank: int) -> list[int]:
    """``d_l`` of the 24 LoRA tensors (query/value A/B in 6 layers) of MiniLM-L6."""
    return [384 * rank] * 24


def _method_seconds(name: str, n: int, dims, q: int, budget, gf: float) -> float:
    """Expected seconds of one method on one problem (a prior: refined at run time)."""
    mm = sum(2.0 * n * d * q for d in dims)  # one product U_lᵀ(U_l X) costs 2 of these
    exact = mm
    for d in dims:
        k = min(n, d)
        exact += 2.0 * n * d * k + k**3 / 3.0 + 4.0 * k * k * q
    sketch = sum(4.0 * n * d * min(256, n, d) for d in dims)
    setup = 60 * 2 * mm / q  # Lanczos λ_max and variance probes: one column per block
    flops = {
        "exact": exact,
        "datainf": 3.0 * mm,
        "identity": mm,
        "cg": 40 * 2 * mm,
        "cg-nystrom": sketch + 10 * 2 * mm,
        "lissa-auto": setup + 0.5 * (DEFAULT_MAX_MATVEC if budget is None else budget) * 2 * mm,
        "lissa-nystrom": setup + sketch + 30 * 2 * mm,
        "lissa-fb10": setup + 10 * 2 * mm,
    }
    if name.startswith("lissa-s") and "-d" in name:
        depth = int(name.rsplit("-d", 1)[1])
        fl, key = sum(4.0 * d * q * depth for d in dims), "lissa-classic"
        per_block = METHOD_FIT[key][0] * depth / 600  # fitted at depths 200 and 1000
    else:
        key = name if name in METHOD_FIT else "identity"
        fl, per_block = flops.get(name, 2 * mm), METHOD_FIT[key][0]
    return per_block * len(dims) + METHOD_FIT[key][1] * fl / gf


def build_plan(cfg, methods, gflops: float | None = None) -> list[Item]:
    """Every item of the run ``cfg`` with its expected seconds on this machine.

    ``gflops`` is this machine's measured rate (:func:`machine_gflops`); every cost is scaled
    by ``REF_PROBE / gflops`` (Python steps and model passes too), clipped
    to [0.5, 4] so that one noisy probe cannot make the estimate absurd.
    """
    speed = min(max(REF_PROBE / (gflops or REF_PROBE), 0.5), 4.0)  # > 1: slower than the reference
    gf = REF_GFLOPS * 1e9 / speed
    items: list[Item] = []
    dg, mm = cfg.digits, cfg.minilm
    H = dg.hidden
    mlp = 6.0 * (64 * H + 2 * H * H + 10 * H)  # flops of one sample's forward + backward pass
    items.append(
        Item(
            ("gradients", "digits", 0),
            "gradients",
            "grad-digits",
            "digits: pretrain",
            speed * 1.0 + 3 * dg.pretrain_steps * dg.n_pretrain * mlp / gf,
        )
    )
    for r in cfg.ranks:
        f = 3 * (dg.finetune_steps * dg.n_train + 3 * (dg.n_train + dg.n_test)) * mlp
        items.append(
            Item(
                ("gradients", "digits", r),
                "gradients",
                "grad-digits",
                f"digits rank {r}: fine-tune, gradients",
                speed * 0.5 + f / gf,
            )
        )
    n_m, m_m = mm.get("n_train", 300), mm.get("n_test", 40)
    steps, bs = mm.get("finetune_steps", 60), mm.get("batch_size", 16)
    for r in cfg.minilm_ranks:
        t = MINILM_SETUP_S + steps * bs / MINILM_TRAIN_RATE + (n_m + m_m) / MINILM_GRAD_RATE
        items.append(
            Item(
                ("gradients", "minilm", r),
                "gradients",
                "grad-minilm",
                f"MiniLM rank {r}: fine-tune, gradients",
                t * speed,
            )
        )
    problems = [("digits", r, dg.n_train, dg.n_test, digits_block_sizes(r, H)) for r in cfg.ranks]
    problems += [("minilm", r, n_m, m_m, minilm_block_sizes(r)) for r in cfg.minilm_ranks]
    for setting, r, n, m, dims in problems:
        q = 1 + min(cfg.n_pairs, m)
        for meth in methods:
            t = _method_seconds(meth.name, n, dims, q, cfg.lissa_budget, gf)
            items.append(
                Item(
                    ("influence", setting, r, meth.name),
                    "influence",
                    f"method:{meth.name}",
                    f"{setting} rank {r}: {meth.name}",
                    0.002 + t,
                )
            )
    for setting, r, n, _m, dims in problems:
        work = 0.0
        for d in dims:
            k = min(n, d)
            work += n * k**3 if n * k**3 <= 2.0**31 else 0.0  # the intermediate bound (if computed)
            work += 2.0 * (n * d * k + 4.0 * k**3) if k <= cfg.datainf_max_dim else 0.0  # true error
        items.append(
            Item(
                ("datainf", setting, r),
                "datainf bounds",
                "datainf",
                f"DataInf bounds {setting} rank {r}",
                0.05 + speed * DATAINF_S_PER_WORK * work,
            )
        )
    n_steps = len(cfg.lissa_batch_sizes) * cfg.lissa_repeats * cfg.lissa_steps * 2
    for setting in dict.fromkeys(p[0] for p in problems):
        _, r, n, _m, dims = max((p for p in problems if p[0] == setting), key=lambda p: p[1])
        d = max(dims)
        fl = 30.0 * n**3 + 4.0 * n * n * d
        work = sum(cfg.lissa_batch_sizes) * cfg.lissa_repeats * cfg.lissa_steps * 2 * 4.0 * d
        items.append(
            Item(
                ("lissa", setting),
                "lissa study",
                "lissa-study",
                f"LiSSA vs batch size ({setting})",
                0.2 + (fl + work) / gf + n_steps * 2e-5 * speed,
            )
        )
    if cfg.lissa_hessian and cfg.ranks:
        r = min(cfg.ranks)
        d = sum(digits_block_sizes(r, H))
        t = HESSIAN_S_PER_DN * d * dg.n_train * (H / 128) ** 2 + HESSIAN_S_PER_STEP * n_steps
        items.append(
            Item(
                ("hessian",),
                "hessian study",
                "hessian",
                f"LiSSA vs batch size (digits Hessian, rank {r})",
                speed * t,
            )
        )
    return items
