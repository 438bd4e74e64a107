"""Write the validation report: ``report.md`` and the tables as CSV and JSON (plots: :mod:`.plots`)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .plots import _finite, make_plots
from .report_theory import datainf_section, lissa_section

__all__ = ["write_table", "format_table", "make_plots", "write_report", "PUBLISHED"]

#: What the papers report (docs/theory.md §12): printed and drawn beside our numbers, never used as targets.
PUBLISHED = [
    (
        "Kwon et al. 2023 (DataInf), Fig. 1: GLUE-MRPC, RoBERTa, LoRA rank 1",
        "Pearson with exact: DataInf 0.64, Hessian-free 0.50, LiSSA (10 iterations) 0.45; "
        "correlation falls as the rank grows (stars in `correlation_vs_rank.png`)",
    ),
    (
        "Kwon et al. 2023 (DataInf), runtime table: GLUE-QQP, 4,500 influence values, one A40 GPU",
        "DataInf 13 s, LiSSA 70 s, exact 11,279 s (stars and dotted lines in `runtime_per_4500_vs_rank.png`)",
    ),
    (
        "Kwon et al. 2023 (DataInf), Fig. 2: 20% flipped labels, LoRA rank 4",
        "mislabel-detection AUC: DataInf well above Hessian-free and LiSSA, close to exact "
        "(qualitative: no number to draw)",
    ),
    (
        "Klochkov & Liu 2024",
        "LiSSA converges once the batch passes a threshold set by the trace and λ_max; e.g. λ = 5: "
        "ResNet-18 η = 0.003, T = 150, B = 100",
    ),
]


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if hasattr(v, "item"):
        return _clean(v.item())
    return v


def write_table(rows, path_stem: Path) -> list[Path]:
    """Write ``rows`` (list of dicts) to ``<stem>.csv`` and ``<stem>.json``; return the paths."""
    path_stem = Path(path_stem)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    csv_path = path_stem.with_suffix(".csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in keys})
    json_path = path_stem.with_suffix(".json")
    with open(json_path, "w") as f:
        json.dump([{k: _clean(v) for k, v in r.items()} for r in rows], f, indent=1)
    return [csv_path, json_path]


def _fmt(v, digits=3):
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "inf"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.2e}"
        return f"{v:.{digits}f}"
    return str(v)


def format_table(rows, columns, headers=None, markdown=False) -> str:
    """Render ``rows`` as an aligned text table (or a Markdown table)."""
    headers = headers or columns
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        out += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(out)
    widths = [
        max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


# ------------------------------------------------------------------------------------ report
SUMMARY_COLUMNS = [
    "setting",
    "rank",
    "method",
    "status",
    "pearson",
    "spearman",
    "pearson_pairs",
    "auc",
    "seconds",
    "seconds_per_4500",
]
_FIGURES = (
    "correlation_vs_rank.png",
    "auc_vs_rank.png",
    "runtime_vs_rank.png",
    "runtime_per_4500_vs_rank.png",
)


def write_report(
    out: Path,
    *,
    rows,
    datainf_rows,
    lissa_results,
    settings_info,
    skipped,
    notes,
    methods,
    plots,
    runinfo,
    command,
    timings=None,
) -> Path:
    """Write ``report.md`` into ``out`` and return its path.

    ``runinfo`` holds ``threads``, ``device``, ``wall_seconds`` and ``expected_seconds``;
    ``timings`` the rows of
    ``timings.csv`` (summed per phase in the report).
    """
    out = Path(out)
    L = ["# invhvp validation report\n"]
    L.append(
        f"Command: `{command}` — wall time {runinfo['wall_seconds']:.1f} s (expected before the start: "
        f"{runinfo['expected_seconds']:.0f} s). Device: {runinfo['device']}. Compute threads for torch and "
        f"every BLAS/OpenMP pool (`--threads`): at most {runinfo['threads']}, "
        f"{runinfo.get('threads_mode', 'fixed')}"
        + (f"; counts used: {runinfo['thread_counts_used']}" if runinfo.get("thread_counts_used") else "")
        + ".\n"
    )
    L.append(
        "**Sign convention.** Influence values are `I(z_t, z_i) = − Σ_l g_{t,l}ᵀ (G_l + λ_l I)⁻¹ g_{i,l}`: "
        "positive means up-weighting training point `z_i` raises the test loss, i.e. the point is "
        "*harmful* (DataInf's convention, docs/theory.md §1). Mislabeled points should score high. "
        "The score of a training point is its influence averaged over the clean test points; "
        "damping is `λ_l = 0.1 · tr(G_l)/d_l` per block.\n"
    )
    L.append("## Settings\n")
    for name, info in settings_info.items():
        L.append(f"- **{name}**: " + "; ".join(f"{k} = {_fmt(v)}" for k, v in info.items()))
    for name, why in skipped.items():
        L.append(f"- **{name}: skipped** — {why}")
    L.append("")
    if notes:
        L.append("## Scope of this run\n")
        L += [f"- {n}" for n in notes]
        L.append("")
    L.append("## Methods\n")
    L += [f"- `{m.name}`: {m.label}" for m in methods]
    L.append("")
    L.append("## Approximation error, mislabel detection and runtime\n")
    qs = {r["setting"]: r["n_queries"] for r in rows}  # 1 + min(n_pairs, m) per setting
    timed = "queries actually timed, " + ", ".join(f"{q} for {s}" for s, q in qs.items())
    timed += (
        " (the average test gradient and the first test points, each query against all n training points)"
    )
    L.append(
        "`pearson`/`spearman`: correlation of each method's average-over-test influence scores with "
        "the exact per-block inverse's (the DataInf Fig. 1 quantity); `pearson_pairs`: over the "
        "individual test points × n training points; `auc`: detection of the flipped "
        "labels by the score (DataInf Fig. 2); `seconds`: wall time of the method's solves and products "
        f"for the {timed}, all blocks, one `influence_matrix` call; `seconds_per_4500`: the same per 4,500 "
        "influence values, the DataInf paper's runtime unit (`seconds · 4500 / (queries · n)`: a linear "
        "rescaling, setup costs included). Status `ok`: the solver verified its target; `max_iter` "
        "(budget ran out) and `inaccurate` keep their values, flagged; `diverged` and other failures "
        "return no values (the solver detected them), so their correlations are empty.\n"
    )
    L.append(format_table(rows, SUMMARY_COLUMNS, markdown=True))
    L.append("")
    L += _status_sections(rows, datainf_rows)
    L.append(
        "**Reading the plots.** One line per method; filled markers: verified runs; hollow markers: "
        "`max_iter`/`inaccurate` runs at their (kept) values; × in a strip below the axis: runs with "
        "no values (diverged or failed) — never drawn at a value; in the runtime plots × marks the time "
        "until the solver stopped a failed run. Stars: published figures (Kwon et al. 2023, "
        "docs/theory.md §12; other models and data, so references, not targets). The runtime plots show "
        "the seconds as timed (queries × n values) and per 4,500 influence values.\n"
    )
    L += [f"![{p.stem}]({p.name})\n" for p in plots if p.name in _FIGURES]
    L += datainf_section(datainf_rows)
    L += lissa_section(lissa_results)
    L.append("## Published figures (for comparison, not targets; docs/theory.md §12)\n")
    L += [f"- {src}: {txt}" for src, txt in PUBLISHED]
    L.append("")
    if timings:
        L.append("## Time per phase\n")
        phases: dict = {}
        for t in timings:
            e, s = phases.get(t["phase"], (0.0, 0.0))
            phases[t["phase"]] = (
                e + t["expected_seconds"],
                s + (t["seconds"] if _finite(t["seconds"]) else 0.0),
            )
        prow = [{"phase": k, "expected_seconds": e, "seconds": s} for k, (e, s) in phases.items()]
        L.append(format_table(prow, ["phase", "expected_seconds", "seconds"], markdown=True))
        L.append("\nPer item: `timings.csv` (expected from the cost model, measured).\n")
    L.append("## Files\n")
    L.append(
        "`summary.csv/json` (table above), `datainf_bounds.csv/json`, `lissa_batch.csv/json`, "
        "`timings.csv/json`, `plots.json` (every point drawn, with its kind), `settings.json` "
        "(configuration, thread pools, device), and the PNG plots.\n"
    )
    path = out / "report.md"
    path.write_text("\n".join(L), encoding="utf-8")
    return path


def _status_sections(rows, datainf_rows) -> list[str]:
    """The runs that did not verify their target: with values (flagged) and without (failed)."""
    L = []
    flagged = [r for r in rows if r["status"] != "ok" and r.get("has_values")]
    failed = [r for r in rows if not r.get("has_values")]
    if failed and datainf_rows:
        worst: dict = {}
        for r in datainf_rows:
            key = (r["setting"], r["rank"])
            worst[key] = max(worst.get(key, 0.0), r["lambda_max"] + r["damping"])
        L.append(
            "A fixed LiSSA step η = 1/scale converges only if η ≤ 1/(λ_max + λ) on every block "
            "(docs/theory.md §5), i.e. scale ≥ max_l (λ_max,l + λ_l), and a batch of 1 must also pass "
            "the variance threshold. Here max_l (λ_max,l + λ_l) = "
            + ", ".join(f"{_fmt(v)} ({s} rank {k})" for (s, k), v in sorted(worst.items()))
            + ".\n"
        )
    if flagged:
        L.append(
            "Runs that kept their values but did not verify their target (values in the table, flagged):\n"
        )
        L += [
            f"- {r['setting']} rank {r['rank']} `{r['method']}`: {r['status']} — {r['note']}".rstrip(" —")
            for r in flagged
        ]
        L.append("")
    if failed:
        L.append("Runs without values (the solver reported the failure):\n")
        L += [
            f"- {r['setting']} rank {r['rank']} `{r['method']}`: {r['status']} — {r['note']}".rstrip(" —")
            for r in failed
        ]
        L.append("")
    return L
