"""Run every study for the chosen mode and write the report folder."""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from ..solvers.lissa_setup import DEFAULT_MAX_MATVEC
from .config import ALL_RANKS, ValidateConfig, preset

__all__ = ["ValidateConfig", "preset", "run_validation", "estimate_text"]


def _minilm_problems(cfg: ValidateConfig, progress, run_item):
    """MiniLM problems from the torch adapter, or ``(None, reason)`` when it cannot run."""
    try:
        from .minilm import minilm_problems
    except ImportError as exc:  # pragma: no cover - depends on the installation
        return None, f"the MiniLM setting could not be imported ({exc})"
    try:
        probs = minilm_problems(
            cfg.minilm_ranks,
            cfg.minilm,
            seed=cfg.seed,
            progress=progress,
            device=cfg.device,
            run_item=run_item,
        )
        return probs, ""
    except Exception as exc:  # noqa: BLE001 - report, do not crash the whole validation
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return None, f"the torch adapter's MiniLM setup failed: {tb}"


def estimate_text(items, gflops: float, threads: int) -> str:
    """The expected duration of a run, in total and per phase (printed before it starts)."""
    from .progress import format_seconds

    phases: dict = {}
    for it in items:
        phases[it.phase] = phases.get(it.phase, 0.0) + it.cost
    total = sum(phases.values())
    parts = ", ".join(f"{k} {format_seconds(v)}" for k, v in phases.items())
    return (
        f"expected duration ≈ {format_seconds(total)} on this machine ({threads} thread{'s' if threads != 1 else ''}, "
        f"{gflops:.0f} GFLOP/s single-thread float64 matmul measured now; ±50%, refined as the run goes): {parts}"
    )


def _notes(cfg: ValidateConfig) -> list[str]:
    notes = []
    if cfg.mode != "full":
        notes.append(
            f"Mode `{cfg.mode}`: smaller samples than `--full` (digits n = {cfg.digits.n_train} training / "
            f"m = {cfg.digits.n_test} test points; MiniLM n = {cfg.minilm.get('n_train')} / "
            f"m = {cfg.minilm.get('n_test')}; `--full` runs MiniLM at n = 2000, m = 200)."
        )
    if cfg.lissa_quick:
        notes.append(
            "Classic LiSSA depths are shortened (scale 10: depth 200 instead of 1000; scale 50: "
            "depth 1000 instead of 5000); `--full` runs the published depths."
        )
    budget = cfg.lissa_budget if cfg.lissa_budget is not None else DEFAULT_MAX_MATVEC
    notes.append(
        f"The automatic LiSSA plans get a budget of {budget} full Gram products per right-hand side "
        "and block" + (" (the solver's default)" if cfg.lissa_budget is None else "") + "; where the plan "
        "for 10% error needs more (small damping makes it need thousands of steps), the solver runs the "
        "best plan within the budget and reports `max_iter` (values kept, drawn with hollow markers)."
    )
    if tuple(cfg.ranks) != ALL_RANKS:
        notes.append(f"Digits ranks: {list(cfg.ranks)} (not all of 1, 2, 4, 8).")
    if cfg.minilm_ranks and tuple(cfg.minilm_ranks) != ALL_RANKS:
        notes.append(f"MiniLM ranks: {list(cfg.minilm_ranks)} (not all of 1, 2, 4, 8).")
    return notes


def run_validation(
    cfg: ValidateConfig,
    out,
    *,
    command: str = "invhvp validate",
    echo=print,
    bars: bool = True,
    estimate_only: bool = False,
):
    """Run all studies for ``cfg`` and write the report into ``out``.

    The whole run (gradients, solves, theory studies) runs under one thread limit
    (``cfg.threads``, default the physical cores; :func:`~invhvp.validate.threads.limit_threads`),
    and the expected duration is printed before it starts.

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
        Show a progress bar (on stderr) with a cost-weighted ETA.
    estimate_only : bool
        Print the expected duration and return without running anything.

    Returns
    -------
    dict
        ``report`` (path of ``report.md``), ``rows`` (summary rows), ``files`` (every file
        written), ``skipped`` (settings not run, with the reason), ``wall_seconds``,
        ``expected_seconds``; with ``estimate_only`` only ``expected_seconds`` and ``items``.
    """
    from .methods import default_methods
    from .plan import build_plan, machine_gflops
    from .threads import limit_threads, physical_cores

    t0 = time.perf_counter()
    threads = cfg.threads or physical_cores()
    with limit_threads(threads, adaptive=cfg.threads is None) as lim:
        methods = default_methods(quick=cfg.lissa_quick, lissa_budget=cfg.lissa_budget)
        gflops = machine_gflops()
        items = build_plan(cfg, methods, gflops)
        expected = sum(it.cost for it in items)
        mode = f"auto: up to {threads}, now {lim.current}" if lim.adaptive else "fixed"
        head = (
            f"[invhvp validate] mode={cfg.mode} seed={cfg.seed} threads={threads} ({mode}) "
            f"device={cfg.device or 'cpu (numpy solves)'} out={out}"
        )
        echo(head)
        echo(estimate_text(items, gflops, threads))
        if cfg.device and str(cfg.device).startswith("cuda"):
            echo("(the cost model describes this CPU; on the GPU the gradients and solves will be faster)")
        if estimate_only:
            return {"expected_seconds": expected, "items": items}
        run = {"cfg": cfg, "threads": threads, "limit": lim, "gflops": gflops, "expected": expected}
        return _run(run, methods, items, Path(out), command, echo, bars, t0)


def _run(run, methods, items, out, command, echo, bars, t0):
    from . import report as rep
    from .digits import digits_problems
    from .progress import Progress
    from .studies import datainf_error_rows, influence_study, lissa_batch_rows

    cfg = run["cfg"]
    out.mkdir(parents=True, exist_ok=True)
    notes = _notes(cfg)
    prog = Progress(items, bars=bars, say=echo, before_item=run["limit"].adapt)

    def say(msg):
        if prog._bar is not None:
            prog._bar.write(msg)
        else:
            echo(msg)

    problems, settings_info, skipped = [], {}, {}
    try:
        digits, digit_models = digits_problems(
            cfg.ranks,
            cfg.digits,
            seed=cfg.seed,
            progress=say,
            return_models=True,
            device=cfg.device,
            run_item=prog.run,
        )
        problems += digits
        settings_info["digits"] = _setting_info(digits, "digits")
        if cfg.minilm_ranks:
            mp, why = _minilm_problems(cfg, say, prog.run)
            if mp:
                problems += mp
                settings_info["minilm"] = _setting_info(mp, "minilm")
            else:
                skipped["minilm"] = why
                say(f"MiniLM setting skipped: {why}")
                for it in items:
                    if len(it.key) > 1 and it.key[1] == "minilm":
                        prog.skip(it.key)
        else:
            skipped["minilm"] = f"not run (`{cfg.mode}` mode without MiniLM ranks)"
        rows = influence_study(
            problems, methods, n_pairs=cfg.n_pairs, device=cfg.device, seed=cfg.seed, run_item=prog.run
        )
        datainf_rows = datainf_error_rows(problems, max_dim=cfg.datainf_max_dim, run_item=prog.run)
        lissa_results = []
        for setting in dict.fromkeys(p.setting for p in problems):
            prob = max((p for p in problems if p.setting == setting), key=lambda p: p.rank)
            lrows, meta = prog.run(
                ("lissa", setting),
                lissa_batch_rows,
                prob,
                cfg.lissa_batch_sizes,
                cfg.lissa_steps,
                repeats=cfg.lissa_repeats,
                seed=cfg.seed,
            )
            lissa_results.append({"meta": meta, "rows": lrows})
        _hessian_study(cfg, digits, digit_models, prog, notes, lissa_results)
    finally:
        prog.close()

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
    files += rep.write_table(prog.records(), out / "timings")
    plots, manifest = rep.make_plots(out, rows, datainf_rows, lissa_results)
    files += plots
    (out / "plots.json").write_text(json.dumps(manifest, indent=1, default=str))
    files.append(out / "plots.json")
    wall = time.perf_counter() - t0
    runinfo = {
        "threads": run["threads"],
        "threads_mode": (
            "auto: the physical cores less the other processes' runnable threads, re-checked before each item"
            if run["limit"].adaptive
            else "fixed (--threads)"
        ),
        "thread_counts_used": run["limit"].changes,
        "thread_pools": run["limit"].report,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(libgomp default: spin, then sleep)"),
        "device": _device_text(cfg.device),
        "gflops_float64": run["gflops"],
        "expected_seconds": run["expected"],
        "wall_seconds": wall,
    }
    (out / "settings.json").write_text(
        json.dumps(
            {"config": _jsonable(asdict(cfg)), "settings": settings_info, "skipped": skipped, "run": runinfo},
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
        runinfo=runinfo,
        command=command,
        timings=prog.records(),
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
    echo(f"\nreport: {report}  (wall time {wall:.1f} s; expected {run['expected']:.0f} s)")
    return {
        "report": report,
        "rows": rows,
        "files": files,
        "skipped": skipped,
        "wall_seconds": wall,
        "expected_seconds": run["expected"],
    }


def _hessian_study(cfg, digits, digit_models, prog, notes, lissa_results):
    """The LiSSA-vs-batch-size study on the digits Hessian (smallest rank), if configured."""
    if not (cfg.lissa_hessian and digits):
        return
    j = min(range(len(digits)), key=lambda i: digits[i].rank)
    if sum(digits[j].block_sizes) > 4096:
        notes.append(
            "The Hessian LiSSA study was skipped: its dense reference Hessian would exceed 4096×4096."
        )
        prog.skip(("hessian",))
        return
    from .hessian_study import lissa_batch_rows_hessian

    lrows, meta = prog.run(
        ("hessian",),
        lissa_batch_rows_hessian,
        digits[j],
        digit_models[j],
        cfg.lissa_batch_sizes,
        cfg.lissa_steps,
        repeats=cfg.lissa_repeats,
        seed=cfg.seed,
    )
    lissa_results.append({"meta": meta, "rows": lrows})


def _setting_info(problems, setting):
    ps = [p for p in problems if p.setting == setting]
    info = {
        "ranks": [p.rank for p in ps],
        "n_train": ps[0].n_train,
        "n_test": ps[0].n_test,
        "flipped": int(ps[0].flipped.sum()),
        "blocks": len(ps[0].block_sizes),
        "block dims (largest rank)": _dims(max(ps, key=lambda p: p.rank).block_sizes),
    }
    for k in ("test_accuracy", "train_accuracy_clean_labels", "setup_seconds"):
        vals = [p.info[k] for p in ps if k in p.info]
        if vals:
            info[f"{k} (per rank)"] = [round(v, 3) for v in vals]
    return info


def _device_text(device) -> str:
    """Where the run computed, for the report: the device and, for CUDA, its name."""
    if device is None:
        return "cpu (numpy solves; gradients with torch on the CPU)"
    text = f"{device} (torch float64: gradients and solves; the theory studies run on the CPU)"
    if str(device).startswith("cuda"):
        try:
            import torch

            text += f", {torch.cuda.get_device_name(torch.device(device))}"
        except Exception:  # noqa: BLE001 - the name is a nicety
            pass
    return text


def _dims(sizes):
    """``"24 × 3072"`` when every block has the same size, else the list."""
    return f"{len(sizes)} × {sizes[0]}" if len(set(sizes)) == 1 else sizes


def _jsonable(d):
    return json.loads(json.dumps(d, default=str))
