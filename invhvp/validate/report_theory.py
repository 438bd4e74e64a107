"""The theory sections of ``report.md``: DataInf's error against its bounds, LiSSA against batch size."""

from __future__ import annotations

from .plots_theory import _finite, short_block

__all__ = ["datainf_section", "lissa_section", "lissa_paragraph"]


def _fmt(v, digits=3):
    from .report import _fmt as f

    return f(v, digits)


def datainf_section(datainf_rows) -> list[str]:
    """Markdown lines of the DataInf theory section (table, counts, figure)."""
    from .report import format_table

    L = ["## Theory: DataInf's per-block error against its bounds\n"]
    L.append(
        "Per block: the true spectral error `‖S̄⁻¹ − R‖₂` of DataInf's inverse (computed exactly in "
        "the n×n row space; `–` where min(n, d_l) is above the limit), and four upper bounds "
        "(docs/theory.md §4), tightest first: `spectral` = `λ_max(R) − 1/(λ + μ̄)` (sharp; "
        "`spectral_ratio` = spectral / true error); `intermediate` = `(1/(nλ³)) Σ_i ‖g_i g_iᵀ − G‖₂²`, "
        "the paper's estimate before each per-sample term is bounded (it needs the n spectral norms "
        "‖g_i g_iᵀ − G‖₂, so it is not cheap); `certificate` = `(1/(nλ³)) Σ_i max(‖g_i‖², λ_max(G))²`, "
        "the same with each term bounded by O(nd) quantities; `paper_bound` = the paper's `2M²d²/λ³`. "
        "Every bound must be at least the true error; the gap is how loose it is. The plot shows λ_l "
        "times each value, the error in units of 1/λ_l ≥ ‖S̄⁻¹‖₂: 1 means an error as large as the exact "
        "inverse itself.\n"
    )
    if not datainf_rows:
        return L + ["Not computed in this run.\n"]
    srt = sorted(datainf_rows, key=lambda r: (r["setting"], r["d"], r["rank"]))
    srt = [{**r, "block": short_block(r["block"])} for r in srt]
    cols = [
        "setting",
        "rank",
        "block",
        "d",
        "n",
        "damping",
        "true_error",
        "spectral",
        "spectral_ratio",
        "intermediate",
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
    L.append(f"Blocks where the true error exceeds the certificate: {len(viol)} of {len(datainf_rows)}.\n")
    L.append(_spectral_sentence(datainf_rows))
    L.append("![datainf_bounds](datainf_bounds.png)\n")
    return L


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


def lissa_paragraph(m) -> str:
    """What one LiSSA-vs-batch-size study did, with the wording of its curvature (Gram or Hessian)."""
    lmin = float(m.get("lambda_min", 0.0) or 0.0)
    src = m.get("sigma1_sq_source", "exact")
    exact_sigma = str(src).startswith("exact")
    sigma = (
        f"σ₁² = {_fmt(m['sigma1_sq'])} (exact, from the n×n eigenproblem; trace bound {_fmt(m['sigma1_sq_trace_bound'])})"
        if exact_sigma
        else f"σ₁² ≈ {_fmt(m['sigma1_sq'])} (estimate: {src}; trace estimate {_fmt(m['sigma1_sq_trace_bound'])})"
    )
    head = (
        f"{m['setting']}, rank {m['rank']}, block `{short_block(m['block'])}` (d = {m['d']}, n = {m['n']}): "
        f"λ_max = {_fmt(m['lambda_max'])} (exact)"
    )
    if lmin < 0:
        head += (
            f", λ_min = {_fmt(lmin)} (exact, from the dense Hessian: indefinite), {sigma}. The contraction "
            "rate is set by λ_eff = λ + λ_min, so the predicted threshold is "
            "B* = ησ₁²/(λ_eff(2 − ηλ_eff)) and the step η = 1/(λ_max + λ)"
        )
        lam_txt = f"λ = {_fmt(m['damping'])} (λ_eff = {_fmt(m['damping'] + lmin)})"
    else:
        head += f", {sigma}. The predicted threshold is B* = ησ₁²/(λ(2 − ηλ)) with the step η = 1/(λ_max + λ)"
        lam_txt = f"λ = {_fmt(m['damping'])}"
    est = "" if exact_sigma else " (σ₁² estimated, so B* is an estimate too)"
    if lmin < 0 and m["default_damping"] + lmin <= 0:
        at_default = (
            f"At the default damping λ = {_fmt(m['default_damping'])}, H + λI is indefinite (λ + λ_min ≤ 0): "
            "no step converges and there is no threshold"
        )
    else:
        at_default = (
            f"At the default damping λ = {_fmt(m['default_damping'])} the predicted threshold is "
            f"B* = {_fmt(m['default_threshold'])} (n = {m['n']})"
        )
    return (
        head + f". {at_default}, so this study sets {lam_txt}, where "
        f"B* = {_fmt(m['threshold'])}{est} (with the trace {'bound' if exact_sigma else 'estimate'}: "
        f"{_fmt(m['threshold_trace_bound'])}); η = {_fmt(m['step'])}, T = {m['steps']} steps. Runs the "
        "solver reported as diverged count as `inf` (× at the top of the plot). The threshold comes from a "
        "worst-case second-moment bound: above it convergence is guaranteed, below it divergence is "
        "possible, not certain (it depends on how the right-hand side meets the high-variance directions).\n"
    )


def lissa_section(lissa_results) -> list[str]:
    """Markdown lines of the LiSSA-vs-batch-size section (one paragraph, table and figure per study)."""
    from .report import format_table

    L = ["## Theory: LiSSA error versus batch size\n"]
    if not lissa_results:
        return L + ["Not computed in this run.\n"]
    for res in lissa_results:
        m = res["meta"]
        L.append(lissa_paragraph(m))
        L.append(
            format_table(
                res["rows"],
                ["batch_size", "error_median", "error_max", "diverged", "bound", "above_threshold"],
                markdown=True,
            )
        )
        L.append(f"\n![lissa_batch_{m['setting']}](lissa_batch_{m['setting']}.png)\n")
    return L
