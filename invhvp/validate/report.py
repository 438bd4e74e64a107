"""Write the validation report: ``report.md`` and the tables as CSV and JSON (plots: :mod:`.plots`)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .plots import _finite, make_plots

__all__ = ["write_table", "format_table", "make_plots", "write_report", "PUBLISHED"]

#: What the papers report (docs/theory.md §12): printed beside our numbers, never used as targets.
PUBLISHED = [
    (
        "DataInf Fig. 1 (GLUE-MRPC, LoRA rank 1, RoBERTa)",
        "Pearson with exact: DataInf 0.64, "
        "Hessian-free 0.50, LiSSA (10 iterations) 0.45; correlation falls as the rank grows",
    ),
    (
        "DataInf Table (GLUE-QQP, 4500 influence values, one A40)",
        "runtime: DataInf 13 s, LiSSA 70 s, exact 11279 s",
    ),
    (
        "DataInf Fig. 2 (20% flipped labels, LoRA rank 4)",
        "mislabel-detection AUC: DataInf ≫ Hessian-free and LiSSA, close to exact",
    ),
    (
        "Klochkov & Liu 2024",
        "LiSSA converges once the batch passes a threshold set by trace and "
        "λ_max; e.g. λ = 5: ResNet-18 η = 0.003, T = 150, B = 100",
    ),
    (
        "docs/theory.md §12 (MiniLM-L6, rank 8, n = 2000)",
        "DataInf ≈ 0.25 correlation with exact; "
        "exact ≈ 7× DataInf's arithmetic; AUC DataInf 0.90, exact 0.80",
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
]


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
    wall_seconds,
    command,
) -> Path:
    """Write ``report.md`` into ``out`` and return its path."""
    out = Path(out)
    L = []
    L.append("# invhvp validation report\n")
    L.append(f"Command: `{command}` — wall time {wall_seconds:.1f} s.\n")
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
    L.append(
        "`pearson`/`spearman`: correlation of each method's average-over-test influence scores with "
        "the exact per-block inverse's (the DataInf Fig. 1 quantity); `pearson_pairs`: over all "
        "m×n (test, train) values; `auc`: detection of the flipped labels by the score (DataInf "
        "Fig. 2); `seconds`: wall time of the method's solves and products (all blocks, all test "
        "points). A status other than `ok` means the solver reported failure (e.g. divergence); "
        "its correlations are then left empty.\n"
    )
    L.append(format_table(rows, SUMMARY_COLUMNS, markdown=True))
    L.append("")
    bad = [r for r in rows if r["status"] != "ok"]
    if bad and datainf_rows:
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
    if bad:
        L.append("Methods that did not return finite values:\n")
        L += [
            f"- {r['setting']} rank {r['rank']} `{r['method']}`: {r['status']} {r['note']}".rstrip()
            for r in bad
        ]
        L.append("")
    for p in plots:
        if p.name in ("correlation_vs_rank.png", "auc_vs_rank.png", "runtime_vs_rank.png"):
            L.append(f"![{p.stem}]({p.name})\n")
    L.append("## Theory: DataInf's per-block error against its bounds\n")
    L.append(
        "True spectral error `‖S̄⁻¹ − R‖₂` of DataInf's inverse per block, beside the spectral "
        "certificate `λ_max(R) − 1/(λ + μ̄)` (sharpened; `spectral_ratio` = spectral / true error), "
        "the intermediate bound, the computable certificate and the paper's `2M²d²/λ³` form "
        "(docs/theory.md §4). Every bound must be at least the true error; the gap is how loose it "
        "is. Blocks sorted by d_l. The plot shows λ_l times each value: the error in units of "
        "1/λ_l ≥ ‖S̄⁻¹‖₂, so 1 means an error as large as the exact inverse itself.\n"
    )
    if datainf_rows:
        srt = sorted(datainf_rows, key=lambda r: (r["setting"], r["d"], r["rank"]))
        cols = [
            "setting",
            "rank",
            "block",
            "d",
            "n",
            "damping",
            "true_error",
            "intermediate",
            "spectral",
            "spectral_ratio",
            "certificate",
            "paper_bound",
        ]
        L.append(format_table(srt, cols, markdown=True))
        viol = [
            r
            for r in datainf_rows
            if _finite(r["true_error"]) and r["true_error"] > r["certificate"] * (1 + 1e-9)
        ]
        L.append("")
        L.append(
            f"Blocks where the true error exceeds the certificate: {len(viol)} of {len(datainf_rows)}.\n"
        )
        L.append(_spectral_sentence(datainf_rows))
        L.append("![datainf_bounds](datainf_bounds.png)\n")
    else:
        L.append("Not computed in this run.\n")
    L.append("## Theory: LiSSA error versus batch size\n")
    if lissa_results:
        for res in lissa_results:
            m = res["meta"]
            L.append(
                f"{m['setting']}, rank {m['rank']}, block `{m['block']}` (d = {m['d']}, n = {m['n']}): "
                f"λ_max = {_fmt(m['lambda_max'])} (exact), σ₁² = {_fmt(m['sigma1_sq'])} (exact; trace bound "
                f"{_fmt(m['sigma1_sq_trace_bound'])}). At the default damping λ = {_fmt(m['default_damping'])} "
                f"the predicted threshold is B* = {_fmt(m['default_threshold'])} (n = {m['n']}), so this "
                f"study sets λ = {_fmt(m['damping'])}, where B* = ησ₁²/(λ(2 − ηλ)) = {_fmt(m['threshold'])} "
                f"(with the trace bound on σ₁²: {_fmt(m['threshold_trace_bound'])}); step η = 1/(λ_max + λ) = "
                f"{_fmt(m['step'])}, T = {m['steps']} steps. Runs the solver reported as diverged count as "
                "`inf`. The threshold comes from a worst-case second-moment bound: above it convergence is "
                "guaranteed, below it divergence is possible, not certain (it depends on how the "
                "right-hand side meets the high-variance directions).\n"
            )
            L.append(
                format_table(
                    res["rows"],
                    ["batch_size", "error_median", "error_max", "diverged", "bound", "above_threshold"],
                    markdown=True,
                )
            )
            L.append(f"\n![lissa_batch_{m['setting']}](lissa_batch_{m['setting']}.png)\n")
    else:
        L.append("Not computed in this run.\n")
    L.append("## Published figures (for comparison, not targets)\n")
    L += [f"- {src}: {txt}" for src, txt in PUBLISHED]
    L.append("")
    L.append("## Files\n")
    L.append(
        "`summary.csv/json` (table above), `datainf_bounds.csv/json`, `lissa_batch.csv/json`, "
        "`settings.json`, and the PNG plots.\n"
    )
    path = out / "report.md"
    path.write_text("\n".join(L), encoding="utf-8")
    return path


def _spectral_sentence(datainf_rows) -> str:
    """One sentence on what the spectral certificate says at the paper's damping (docs/theory.md §4)."""
    scaled = [r["damping"] * r["spectral"] for r in datainf_rows if _finite(r.get("spectral"))]
    ratios = [r["spectral_ratio"] for r in datainf_rows if _finite(r.get("spectral_ratio"))]
    if not scaled:
        return ""
    rng = f" and is {min(ratios):.2f}–{max(ratios):.2f}× the true error" if ratios else ""
    return (
        f"The spectral certificate is λ_l·bound = {min(scaled):.2f}–{max(scaled):.2f} here{rng}: "
        "at the paper's damping (λ = 0.1 × mean eigenvalue) DataInf's error is about as large as the "
        "inverse itself in the gradients' span, so its correlation with exact influence, not the "
        "operator error, is the measure to read (docs/theory.md §4).\n"
    )
