"""Run every study for the chosen mode and write the report folder."""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .digits import DigitsConfig

__all__ = ["ValidateConfig", "preset", "run_validation"]

ALL_RANKS = (1, 2, 4, 8)


@dataclass(frozen=True)
class ValidateConfig:
    """Everything a validation run needs.

    Parameters
    ----------
    mode : {"quick", "full", "smoke"}
        ``quick`` (the default of the CLI) finishes in a few minutes on 2 CPU cores;
        ``full`` uses the papers' LiSSA settings and larger samples; ``smoke`` is tiny and
        only for tests.
    ranks : tuple of int
        LoRA ranks of the digits setting.
    minilm_ranks : tuple of int
        LoRA ranks of the MiniLM setting (empty: skip it).
    digits : DigitsConfig
    minilm : dict
        Keyword arguments for :func:`invhvp.adapters.minilm_lora_setup` (sizes, steps).
    lissa_quick : bool
        Shortened classic LiSSA depths (see :func:`~invhvp.validate.methods.default_methods`).
    lissa_batch_sizes : tuple of int
        Batch sizes of the LiSSA-versus-batch-size study.
    lissa_steps, lissa_repeats : int
        Steps and seeds per batch size in that study.
    lissa_hessian : bool
        Also run that study on the damped Hessian of the digits model (smallest rank; a dense
        ``d×d`` Hessian is formed for the references).
    datainf_max_dim : int
        Largest ``min(n, d_l)`` for which DataInf's true error is computed.
    n_pairs : int
        Test points whose individual influence rows are computed (``pearson_pairs``).
    lissa_budget : int or None
        Budget of the automatic LiSSA plan (full products per column and block); ``None`` in
        ``full`` mode.
    device : str or None
        ``None``: numpy on the host; otherwise a torch device for the solves.
    seed : int
    """

    mode: str = "quick"
    ranks: tuple = ALL_RANKS
    minilm_ranks: tuple = ALL_RANKS
    digits: DigitsConfig = field(default_factory=DigitsConfig)
    minilm: dict = field(default_factory=dict)
    lissa_quick: bool = True
    lissa_batch_sizes: tuple = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    lissa_steps: int = 400
    lissa_repeats: int = 3
    lissa_hessian: bool = True
    datainf_max_dim: int = 2048
    n_pairs: int = 20
    lissa_budget: int | None = 300
    device: str | None = None
    seed: int = 0


def preset(mode: str, **overrides) -> ValidateConfig:
    """The configuration of a named mode (``"quick"``, ``"full"``, ``"smoke"``), with overrides."""
    if mode == "quick":
        cfg = ValidateConfig(
            mode="quick",
            ranks=ALL_RANKS,
            minilm_ranks=ALL_RANKS,
            digits=DigitsConfig(n_pretrain=400, n_train=500, n_test=100),
            minilm={"n_train": 200, "n_test": 40, "finetune_steps": 60},
            lissa_quick=True,
            lissa_steps=300,
            lissa_repeats=2,
        )
    elif mode == "full":
        cfg = ValidateConfig(
            mode="full",
            ranks=ALL_RANKS,
            minilm_ranks=ALL_RANKS,
            digits=DigitsConfig(n_pretrain=400, n_train=1000, n_test=200),
            minilm={"n_train": 1000, "n_test": 100, "finetune_steps": 150},
            lissa_quick=False,
            lissa_budget=None,
            n_pairs=100,
            lissa_batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            lissa_steps=1000,
            lissa_repeats=5,
        )
    elif mode == "smoke":
        cfg = ValidateConfig(
            mode="smoke",
            ranks=(1, 2),
            minilm_ranks=(),
            digits=DigitsConfig(
                n_pretrain=150, n_train=120, n_test=20, hidden=16, pretrain_steps=30, finetune_steps=30
            ),
            lissa_quick=True,
            lissa_batch_sizes=(1, 8, 64),
            lissa_steps=100,
            lissa_repeats=1,
            lissa_hessian=False,  # tested on its own (tests/test_hessian.py): the smoke run stays short
            datainf_max_dim=512,
        )
    else:
        raise ValueError(f"mode: expected 'quick', 'full' or 'smoke', got {mode!r}")
    return replace(cfg, **overrides)


def _minilm_problems(cfg: ValidateConfig, progress):
    """MiniLM problems from the torch adapter, or ``(None, reason)`` when it cannot run."""
    try:
        from .minilm import minilm_problems
    except ImportError as exc:  # pragma: no cover - depends on the installation
        return None, f"the MiniLM setting could not be imported ({exc})"
    try:
        return minilm_problems(cfg.minilm_ranks, cfg.minilm, seed=cfg.seed, progress=progress), ""
    except Exception as exc:  # noqa: BLE001 - report, do not crash the whole validation
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return None, f"the torch adapter's MiniLM setup failed: {tb}"


def run_validation(
    cfg: ValidateConfig, out, *, command: str = "invhvp validate", echo=print, bars: bool = True
):
    """Run all studies for ``cfg`` and write the report into ``out``.

    Parameters
    ----------
    cfg : ValidateConfig
    out : str or Path
        Report folder (created if needed).
    command : str
        How the run was started (recorded in the report).
    echo : callable
        Receives the progress messages and the final summary table.
    bars : bool
        Show tqdm progress bars (on stderr).

    Returns
    -------
    dict
        ``report`` (path of ``report.md``), ``rows`` (summary rows), ``files`` (every file
        written), ``skipped`` (settings not run, with the reason), ``wall_seconds``.
    """
    import numpy as np  # noqa: F401 - fail early if the scientific stack is missing
    from tqdm.auto import tqdm

    from . import report as rep
    from .digits import digits_problems
    from .methods import default_methods
    from .studies import datainf_error_rows, influence_study, lissa_batch_rows

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    methods = default_methods(quick=cfg.lissa_quick, n_queries=1 + cfg.n_pairs, lissa_budget=cfg.lissa_budget)
    notes = []
    if cfg.mode != "full":
        notes.append(
            f"Mode `{cfg.mode}`: smaller samples than `--full` (digits n = {cfg.digits.n_train} "
            f"training / m = {cfg.digits.n_test} test points)."
        )
    if cfg.lissa_quick:
        notes.append(
            "Classic LiSSA depths are shortened (scale 10: depth 200 instead of 1000; scale 50: "
            "depth 1000 instead of 5000); `--full` runs the published depths."
        )
    if cfg.lissa_budget is not None:
        notes.append(
            f"The automatic LiSSA plan gets a budget of {cfg.lissa_budget} full Gram products per "
            "right-hand side and block; where its plan for 10% error needs more (small damping "
            "makes it need thousands of steps), it runs the best plan within the budget and is "
            "marked `max_iter`. `--full` runs it without a budget."
        )
    if tuple(cfg.ranks) != ALL_RANKS:
        notes.append(f"Digits ranks: {list(cfg.ranks)} (not all of 1, 2, 4, 8).")

    def say(msg):
        if bars:
            tqdm.write(msg)
        else:
            echo(msg)

    problems = []
    settings_info = {}
    skipped = {}
    say(f"[invhvp validate] mode={cfg.mode} seed={cfg.seed} out={out}")
    digits, digit_models = digits_problems(
        cfg.ranks, cfg.digits, seed=cfg.seed, progress=say, return_models=True
    )
    problems += digits
    settings_info["digits"] = _setting_info(problems, "digits")
    if cfg.minilm_ranks:
        mp, why = _minilm_problems(cfg, say)
        if mp:
            problems += mp
            settings_info["minilm"] = _setting_info(mp, "minilm")
            if tuple(cfg.minilm_ranks) != ALL_RANKS:
                notes.append(f"MiniLM ranks: {list(cfg.minilm_ranks)} (not all of 1, 2, 4, 8).")
        else:
            skipped["minilm"] = why
            say(f"MiniLM setting skipped: {why}")
    else:
        skipped["minilm"] = f"not run in `{cfg.mode}` mode"

    total = len(problems) * len(methods)
    with tqdm(total=total, desc="influence (method × rank)", disable=not bars, leave=False) as bar:
        rows = influence_study(
            problems,
            methods,
            n_pairs=cfg.n_pairs,
            device=cfg.device,
            seed=cfg.seed,
            progress=lambda label: (bar.set_postfix_str(label), bar.update(1)),
        )
    say("theory: DataInf per-block error and bounds")
    datainf_rows = datainf_error_rows(problems, max_dim=cfg.datainf_max_dim)
    lissa_results = []
    for setting in dict.fromkeys(p.setting for p in problems):
        prob = max((p for p in problems if p.setting == setting), key=lambda p: p.rank)
        say(f"theory: LiSSA error vs batch size ({setting}, rank {prob.rank})")
        lrows, meta = lissa_batch_rows(
            prob, cfg.lissa_batch_sizes, cfg.lissa_steps, repeats=cfg.lissa_repeats, seed=cfg.seed
        )
        lissa_results.append({"meta": meta, "rows": lrows})
    j = min(range(len(digits)), key=lambda i: digits[i].rank) if digits else None
    if cfg.lissa_hessian and j is not None and sum(digits[j].block_sizes) > 4096:
        notes.append(
            "The Hessian LiSSA study was skipped: its dense reference Hessian would exceed 4096×4096."
        )
    elif cfg.lissa_hessian and j is not None:
        from .hessian_study import lissa_batch_rows_hessian

        say(f"theory: LiSSA error vs batch size (digits Hessian, rank {digits[j].rank})")
        lrows, meta = lissa_batch_rows_hessian(
            digits[j],
            digit_models[j],
            cfg.lissa_batch_sizes,
            cfg.lissa_steps,
            repeats=cfg.lissa_repeats,
            seed=cfg.seed,
        )
        lissa_results.append({"meta": meta, "rows": lrows})

    files = []
    files += rep.write_table(rows, out / "summary")
    files += rep.write_table(datainf_rows, out / "datainf_bounds")
    files += rep.write_table(
        [
            {**r, **{f"meta_{k}": v for k, v in res["meta"].items()}}
            for res in lissa_results
            for r in res["rows"]
        ],
        out / "lissa_batch",
    )
    plots = rep.make_plots(out, rows, datainf_rows, lissa_results)
    files += plots
    wall = time.perf_counter() - t0
    (out / "settings.json").write_text(
        json.dumps(
            {
                "config": _jsonable(asdict(cfg)),
                "settings": settings_info,
                "skipped": skipped,
                "wall_seconds": wall,
            },
            indent=1,
            default=str,
        )
    )
    files.append(out / "settings.json")
    report = rep.write_report(
        out,
        rows=rows,
        datainf_rows=datainf_rows,
        lissa_results=lissa_results,
        settings_info=settings_info,
        skipped=skipped,
        notes=notes,
        methods=methods,
        plots=plots,
        wall_seconds=wall,
        command=command,
    )
    files.append(report)
    echo("")
    echo(
        rep.format_table(
            rows, ["setting", "rank", "method", "status", "pearson", "spearman", "auc", "seconds"]
        )
    )
    for name, why in skipped.items():
        echo(f"skipped {name}: {why}")
    echo(f"\nreport: {report}  (wall time {wall:.1f} s)")
    return {"report": report, "rows": rows, "files": files, "skipped": skipped, "wall_seconds": wall}


def _setting_info(problems, setting):
    ps = [p for p in problems if p.setting == setting]
    info = {
        "ranks": [p.rank for p in ps],
        "n_train": ps[0].n_train,
        "n_test": ps[0].n_test,
        "flipped": int(ps[0].flipped.sum()),
        "blocks": len(ps[0].block_sizes),
        "block dims (largest rank)": max(ps, key=lambda p: p.rank).block_sizes,
    }
    for k in ("test_accuracy", "train_accuracy_clean_labels"):
        vals = [p.info[k] for p in ps if k in p.info]
        if vals:
            info[f"{k} (per rank)"] = [round(v, 3) for v in vals]
    return info


def _jsonable(d):
    return json.loads(json.dumps(d, default=str))
