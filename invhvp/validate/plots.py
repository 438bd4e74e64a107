"""PNG figures of the validation report (matplotlib, Agg backend, imported lazily)."""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["make_plots"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _by_method(rows, setting, key):
    out: dict[str, tuple[list, list]] = {}
    for r in rows:
        if r["setting"] != setting:
            continue
        xs, ys = out.setdefault(r["method"], ([], []))
        xs.append(r["rank"])
        ys.append(r[key])
    return out


_STYLES = ["o-", "s--", "^-.", "v:", "D-", "P--", "X-.", "*:"]


def _line_plot(plt, rows, settings, key, ylabel, title, path, ylim=None, logy=False):
    fig, axes = plt.subplots(1, len(settings), figsize=(6.4 * len(settings), 4.6), squeeze=False)
    order = list(dict.fromkeys(r["method"] for r in rows))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, setting in zip(axes[0], settings):
        missing, ranks = [], set()
        for method, (xs, ys) in _by_method(rows, setting, key).items():
            i = order.index(method)
            ys = [float("nan") if y is None else y for y in ys]
            if all(math.isnan(y) for y in ys):
                missing.append(method)
                continue
            ranks.update(xs)
            ax.plot(
                xs,
                ys,
                _STYLES[i % len(_STYLES)],
                color=colors[i % len(colors)],
                label=method,
                markersize=6,
                alpha=0.85,
            )
        ax.set_xscale("log", base=2)
        if ranks:
            ax.set_xticks(sorted(ranks), [str(r) for r in sorted(ranks)])
            ax.minorticks_off()
        ax.set_xlabel("LoRA rank")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} — {setting}")
        if ylim:
            ax.set_ylim(*ylim)
        if logy:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if missing:
            ax.text(
                0.01,
                0.01,
                "no finite values (diverged/failed): " + ", ".join(missing),
                transform=ax.transAxes,
                fontsize=7,
                va="bottom",
                color="0.3",
                wrap=True,
            )
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def make_plots(out: Path, rows, datainf_rows, lissa_results) -> list[Path]:
    """Draw the report's PNG figures into ``out``; return their paths."""
    plt = _plt()
    out = Path(out)
    paths = []
    settings = sorted({r["setting"] for r in rows}, key=lambda s: (s != "digits", s))
    if rows:
        p = out / "correlation_vs_rank.png"
        _line_plot(
            plt,
            [r for r in rows if r["method"] != "exact"],
            settings,
            "pearson",
            "Pearson r with exact (avg-test influence)",
            "Approximation error",
            p,
            ylim=(-0.2, 1.02),
        )
        paths.append(p)
        p = out / "auc_vs_rank.png"
        _line_plot(
            plt, rows, settings, "auc", "AUC (flipped labels)", "Mislabel detection", p, ylim=(0.0, 1.02)
        )
        paths.append(p)
        p = out / "runtime_vs_rank.png"
        _line_plot(
            plt, rows, settings, "seconds", "seconds (all blocks, m test points)", "Runtime", p, logy=True
        )
        paths.append(p)
    if datainf_rows:
        p = out / "datainf_bounds.png"
        fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.2), squeeze=False)
        for ax, setting in zip(axes[0], settings):
            sub = [r for r in datainf_rows if r["setting"] == setting]
            ratios = [r["spectral_ratio"] for r in sub if _finite(r.get("spectral_ratio"))]
            spectral_label = "spectral (docs/theory.md §4)"
            if ratios:
                spectral_label += f", ÷ true error: {min(ratios):.2f}–{max(ratios):.2f}"
            for key, mk, label in (
                ("true_error", "o", "true_error"),
                ("spectral", "D", spectral_label),
                ("intermediate", "^", "intermediate"),
                ("certificate", "s", "certificate"),
                ("paper_bound", "x", "paper_bound"),
            ):
                pts = [
                    (r["d"], r["damping"] * r[key])
                    for r in sub
                    if r.get(key) is not None and _finite(r[key]) and r[key] > 0
                ]
                if pts:
                    ax.scatter(*zip(*pts), marker=mk, label=label, s=20, alpha=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            dims = sorted({r["d"] for r in sub})
            if dims:
                ax.set_xticks(dims, [str(d) for d in dims], fontsize=7)
                ax.minorticks_off()
            ax.set_xlabel("block dimension d_l")
            ax.set_ylabel("λ_l · ‖S̄⁻¹ − R‖₂ (error in units of 1/λ_l)")
            ax.set_title(f"DataInf per-block error vs bounds — {setting}")
            ax.grid(True, alpha=0.3, which="both")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    for res in lissa_results:
        meta, lrows = res["meta"], res["rows"]
        p = out / f"lissa_batch_{meta['setting']}.png"
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        bs = [r["batch_size"] for r in lrows]
        cap = 1e6
        med = [min(r["error_median"], cap) for r in lrows]
        mx = [min(r["error_max"], cap) for r in lrows]
        bd = [min(r["bound"], cap) for r in lrows]
        ax.plot(bs, med, "o-", label="measured ‖u_T − u*‖/‖u*‖ (median)")
        ax.plot(bs, mx, "v:", label="measured (max over seeds)")
        ax.plot(bs, bd, "s--", label="THEORY §5(b) bound (capped at 1e6)")
        ax.axvline(
            meta["threshold"], color="k", lw=1, label=f"predicted threshold B* = {meta['threshold']:.1f}"
        )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B")
        ax.set_ylabel("relative error (log)")
        blk = meta["block"] if len(meta["block"]) <= 40 else "…" + meta["block"][-39:]
        ax.set_title(f"LiSSA vs batch size — {meta['setting']}, rank {meta['rank']}\n{blk}", fontsize=10)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
