"""The theory figures: DataInf's per-block error against its bounds, LiSSA's error against batch size."""

from __future__ import annotations

import math
import re
from pathlib import Path

__all__ = ["short_block", "datainf_figure", "lissa_figure", "value_band"]

BAND = 0.09  # axes fraction of a strip for runs without a value


def _tick_label(t, logy):
    if logy and t > 0 and abs(math.log10(t) - round(math.log10(t))) < 1e-9:
        return f"$10^{{{int(round(math.log10(t)))}}}$"
    return f"{t:g}"


def value_band(ax, pts, logy, top=False, label="no value"):
    """Extend the y-range by a shaded strip (below the data, or above with ``top``) and mark ``pts`` there.

    ``pts`` are ``(x, colour)`` of runs without a value; several at one x are drawn side by side
    (log₂ x axes).  The strip's y tick is labelled ``label``, so a cross there cannot be read as
    a value.
    """
    from matplotlib.patches import Rectangle

    lo, hi = ax.get_ylim()
    ticks = [
        t for t in ax.get_yticks() if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9) or not logy and lo <= t <= hi
    ]
    f = BAND / (1 - BAND)
    if logy:
        llo, lhi = math.log10(lo), math.log10(hi)
        ax.set_ylim(
            *((10**llo, 10 ** (lhi + f * (lhi - llo))) if top else (10 ** (llo - f * (lhi - llo)), 10**lhi))
        )
    else:
        ax.set_ylim(*((lo, hi + f * (hi - lo)) if top else (lo - f * (hi - lo), hi)))
    y_frac = 1 - BAND / 2 if top else BAND / 2
    ax.add_patch(
        Rectangle(
            (0, 1 - BAND if top else 0),
            1,
            BAND,
            transform=ax.transAxes,
            fc="0.92",
            ec="0.6",
            lw=0.6,
            zorder=0,
        )
    )
    y0, y1 = ax.get_ylim()
    if logy:
        mid = 10 ** (math.log10(y0) + y_frac * (math.log10(y1) - math.log10(y0)))
    else:
        mid = y0 + y_frac * (y1 - y0)
    ax.set_yticks([*ticks, mid], [*(_tick_label(t, logy) for t in ticks), label])
    if logy:
        from matplotlib.ticker import NullLocator

        ax.yaxis.set_minor_locator(NullLocator())
    strip = ax.get_xaxis_transform()  # x in data, y in axes fraction
    for x in sorted({x for x, _ in pts}):
        at = [c for xx, c in pts if xx == x]
        for j, c in enumerate(at):  # side by side, so that every one shows
            xj = x * 2 ** (0.08 * (j - (len(at) - 1) / 2))
            ax.plot(xj, y_frac, "x", color=c, ms=8, mew=2, transform=strip, clip_on=False)


def short_block(name: str) -> str:
    """A readable name for a LoRA block (peft parameter names are long).

    Examples
    --------
    >>> short_block("base_model.model.bert.encoder.layer.5.attention.self.query.lora_A.default.weight")
    'layer 5 query lora_A'
    >>> short_block("l1.lora_B")
    'l1.lora_B'
    """
    m = re.search(r"layer\.(\d+)\..*?([A-Za-z_]+)\.(lora_[AB])", name)
    if m:
        return f"layer {m.group(1)} {m.group(2)} {m.group(3)}"
    if len(name) <= 30:
        return name
    parts = [p for p in name.split(".") if p not in ("default", "weight", "base_model", "model")]
    return ".".join(parts[-3:])


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


# (key, marker, colour: the same in every panel, label)
_DATAINF_SERIES = (
    ("true_error", "o", "C0", "true error ‖S̄⁻¹ − R‖₂ (exact, n×n row space)"),
    ("spectral", "D", "C1", "spectral certificate λ_max(R) − 1/(λ+μ̄) (§4)"),
    ("intermediate", "^", "C2", "intermediate bound (1/(nλ³)) Σ‖g_i g_iᵀ − G‖₂² (§4)"),
    ("certificate", "s", "C3", "computable certificate (1/(nλ³))Σmax(‖g_i‖², λ_max)²"),
    ("paper_bound", "x", "C4", "paper's 2M²d²/λ³ (Kwon et al. Thm 1)"),
)


def datainf_figure(plt, datainf_rows, settings, path, manifest):
    """λ_l × (true error and each bound) against the block dimension, one panel per setting."""
    fig, axes = plt.subplots(1, len(settings), figsize=(7.2 * len(settings), 4.8), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        sub = [r for r in datainf_rows if r["setting"] == setting]
        ratios = [r["spectral_ratio"] for r in sub if _finite(r.get("spectral_ratio"))]
        for key, mk, color, label in _DATAINF_SERIES:
            if key == "spectral" and ratios:
                label += f"; ÷ true error {min(ratios):.2f}–{max(ratios):.2f}"
            pts = [(r["d"], r["damping"] * r[key]) for r in sub if _finite(r.get(key)) and r[key] > 0]
            if not pts:  # say so in the legend instead of leaving the series out silently
                ax.scatter(
                    [],
                    [],
                    marker=mk,
                    color=color,
                    alpha=0.3,
                    s=22,
                    label=f"{label}: not computed (too costly)",
                )
            if pts:
                ax.scatter(*zip(*pts), marker=mk, color=color, label=label, s=22, alpha=0.8)
                manifest += [
                    {
                        "figure": Path(path).name,
                        "panel": setting,
                        "series": key,
                        "kind": "ok",
                        "x": x,
                        "y": y,
                        "where": "value",
                    }
                    for x, y in pts
                ]
        missing = sum(1 for r in sub if not _finite(r.get("true_error")))
        ax.set_xscale("log")
        ax.set_yscale("log")
        dims = sorted({r["d"] for r in sub})
        if dims:
            ax.set_xticks(dims, [str(d) for d in dims], fontsize=7)
            ax.minorticks_off()
        ax.set_xlabel("block dimension d_l")
        ax.set_ylabel("λ_l × error or bound (1 = as large as ‖(G_l+λ_l)⁻¹‖)")
        extra = f"; true error not computed on {missing} blocks (min(n, d_l) too large)" if missing else ""
        ax.set_title(f"DataInf per-block error vs bounds — {setting}{extra}", fontsize=10)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, framealpha=0.9)
    fig.text(0.01, 0.005, "Bounds: docs/theory.md §4; every bound must lie above the true error.", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def lissa_figure(plt, meta, lrows, path, manifest):
    """Measured LiSSA error against batch size, the predicted threshold and the bound.

    Batch sizes whose median (or max over seeds) error is infinite because the solver reported
    divergence are crosses in a strip at the top of the axes, not values at a cap.  The bound
    is drawn where it is finite (it is infinite below the threshold).
    """
    name = Path(path).name
    fig, ax = plt.subplots(figsize=(7.6, 4.8))
    series = (
        ("error_median", "o-", "C0", "measured ‖u_T − u*‖/‖u*‖ (median over seeds)"),
        ("error_max", "v:", "C1", "measured (max over seeds)"),
        ("bound", "s--", "C2", "second-moment bound (docs/theory.md §5; infinite below B*)"),
    )
    any_div, div_pts = False, []
    for key, style, c, label in series:
        pts = [(r["batch_size"], r[key]) for r in lrows if _finite(r[key])]
        if pts:
            ax.plot(*zip(*pts), style, color=c, label=label)
        for r in lrows:
            point = {"figure": name, "panel": meta["setting"], "series": key, "x": r["batch_size"]}
            if _finite(r[key]):
                manifest.append({**point, "kind": "ok", "y": float(r[key]), "where": "value"})
            elif key != "bound":  # a diverged median/max: cross at the top, no value
                any_div = True
                div_pts.append((r["batch_size"], c))
                manifest.append({**point, "kind": "diverged", "y": None, "where": "strip"})
            else:
                manifest.append({**point, "kind": "infinite", "y": None, "where": "not drawn"})
    if any_div:
        ax.plot(
            [], [], "x", color="0.3", mew=2, label="diverged (solver reported): × in the top strip, no value"
        )
    ax.axvline(meta["threshold"], color="k", lw=1, label=f"predicted threshold B* = {meta['threshold']:.3g}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    if div_pts:
        value_band(ax, div_pts, logy=True, top=True, label="diverged")
    ax.set_xlabel("batch size B")
    ax.set_ylabel("relative error ‖u_T − u*‖/‖u*‖")
    blk = short_block(meta["block"])
    kind = "damped Hessian H + λI" if meta.get("lambda_min", 0.0) < 0 else "Gram block G + λI"
    ax.set_title(
        f"LiSSA vs batch size — {meta['setting']}, rank {meta['rank']}, {kind}\n"
        f"{'' if blk.startswith('all ') else 'block '}{blk} (d = {meta['d']}, n = {meta['n']}), "
        f"η = {meta['step']:.3g}, T = {meta['steps']}",
        fontsize=10,
    )
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
