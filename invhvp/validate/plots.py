"""PNG figures of the validation report (matplotlib, Agg backend, imported lazily).

Every figure says what it shows: measured values as filled markers; runs that kept their values
but did not meet their target (``max_iter``, ``inaccurate``) as hollow markers at their values;
runs without values (``diverged``, ``nonfinite``, ...) as crosses in a strip below the axis,
never at a cap as if measured; published figures as stars with a legend entry and a citation.
:func:`make_plots` also returns a manifest of every point drawn (``plots.json``), which the
tests read instead of the images.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from .plots_theory import _finite, datainf_figure, lissa_figure, short_block, value_band

__all__ = ["make_plots", "short_block", "PUBLISHED_POINTS", "status_kind"]

#: Published numbers drawn on the rank plots (docs/theory.md §12): (figure, our method, x, y, text).
PUBLISHED_POINTS = {
    "correlation_vs_rank.png": {
        "source": "Kwon et al. 2023 (DataInf), Fig. 1: GLUE-MRPC, RoBERTa, LoRA rank 1 — docs/theory.md §12",
        "points": [
            ("datainf", 1, 0.64, "DataInf 0.64"),
            ("identity", 1, 0.50, "Hessian-free 0.50"),
            ("lissa-fb10", 1, 0.45, "LiSSA, 10 it. 0.45"),
        ],
    },
    "runtime_per_4500_vs_rank.png": {
        "source": "Kwon et al. 2023 (DataInf), runtime table: GLUE-QQP, one A40 GPU — docs/theory.md §12",
        "points": [
            ("exact", None, 11279.0, "exact 11,279 s"),
            ("lissa-fb10", None, 70.0, "LiSSA 70 s"),
            ("datainf", None, 13.0, "DataInf 13 s"),
        ],
    },
    "auc_vs_rank.png": {
        "source": "Kwon et al. 2023 (DataInf), Fig. 2: 20% flipped labels, LoRA rank 4 — docs/theory.md §12",
        "points": [],
        "note": "DataInf well above Hessian-free and LiSSA, close to exact; qualitative, so nothing is drawn",
    },
}
_STYLES = ["o-", "s--", "^-.", "v:", "D-", "P--", "X-.", "*:", "h-", "p--"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def status_kind(row) -> str:
    """``"ok"`` (verified), ``"flagged"`` (values kept, target not met) or ``"failed"`` (no values)."""
    if not row.get("has_values", row.get("status") in ("ok", "max_iter", "inaccurate")):
        return "failed"
    return "ok" if row.get("status") in ("ok", "success") else "flagged"


def _palette(plt, methods):
    """One colour and line style per method, the same in every figure."""
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"] + ["#444444", "#9edae5"]
    order = list(dict.fromkeys(methods))
    return (
        {m: colors[i % len(colors)] for i, m in enumerate(order)},
        {m: _STYLES[i % len(_STYLES)] for i, m in enumerate(order)},
    )


def _rank_figure(
    plt,
    rows,
    settings,
    key,
    ylabel,
    title,
    path,
    manifest,
    ylim=None,
    logy=False,
    info=None,
    all_methods=None,
):
    """One panel per setting: ``key`` against the LoRA rank, one line per method."""
    fig, axes = plt.subplots(1, len(settings), figsize=(7.2 * len(settings), 5.0), squeeze=False)
    color, style_of = _palette(plt, all_methods or [r["method"] for r in rows])
    order = list(dict.fromkeys(r["method"] for r in rows))
    pub = PUBLISHED_POINTS.get(Path(path).name)
    timed = key in ("seconds", "seconds_per_4500")  # failed runs have a measured time, no value
    for ax, setting in zip(axes[0], settings):
        sub = [r for r in rows if r["setting"] == setting]
        ranks = sorted({r["rank"] for r in sub})
        kinds_seen, strip_pts = set(), []
        for m in order:
            mr = sorted((r for r in sub if r["method"] == m), key=lambda r: r["rank"])
            pts = [(r["rank"], r[key]) for r in mr if status_kind(r) != "failed"]
            pts = [(x, y) for x, y in pts if _finite(y)]
            style = style_of[m]
            if pts:
                ax.plot(*zip(*pts), style[1:], color=color[m], alpha=0.6, lw=1.2)
            ax.plot([], [], style, color=color[m], label=m)  # legend: method colour and line
            for r in mr:
                kind = status_kind(r)
                kinds_seen.add(kind)
                y = r.get(key)
                point = {
                    "figure": Path(path).name,
                    "panel": setting,
                    "method": m,
                    "rank": r["rank"],
                    "status": r["status"],
                    "kind": kind,
                }
                if kind == "failed" and not timed or not _finite(y):
                    strip_pts.append((r["rank"], color[m]))
                    manifest.append({**point, "y": None, "where": "strip"})
                    kinds_seen.add("failed")
                    continue
                face = color[m] if kind == "ok" else "none"
                mk = "x" if kind == "failed" else style[0]
                ax.plot(r["rank"], y, mk, color=color[m], mfc=face, ms=7, mew=1.6)
                manifest.append({**point, "y": float(y), "where": "value"})
        if pub and pub["points"]:
            _published(ax, pub, color, ranks, setting, Path(path).name, manifest)
        for kind, mk, text in (
            ("ok", "o", "filled: solver verified its target"),
            ("flagged", "o", "hollow: max_iter/inaccurate, values kept"),
            (
                "failed",
                "x",
                "×: diverged/failed, time until stopped"
                if timed
                else "× in the grey strip: diverged/failed, no value",
            ),
        ):
            if kind in kinds_seen:
                ax.plot([], [], mk, color="0.35", mfc="0.35" if kind == "ok" else "none", mew=1.6, label=text)
        ax.set_xscale("log", base=2)
        if ranks:
            ax.set_xticks(ranks, [str(r) for r in ranks])
            ax.minorticks_off()
        if logy:
            ax.set_yscale("log")
        if ylim:
            ax.set_ylim(*ylim)
        if ranks:
            ax.set_xlim(ranks[0] * 2 ** (-0.45 if pub and pub["points"] else -0.25), ranks[-1] * 2**0.25)
        if strip_pts:
            _no_value_band(ax, strip_pts, logy)
        ax.set_xlabel("LoRA rank")
        ax.set_ylabel(ylabel if not callable(ylabel) else ylabel(sub))
        extra = info(sub) if info else ""
        ax.set_title(f"{title} — {setting}{extra}", fontsize=11)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), framealpha=0.9)
    if pub:
        note = ("★ " if pub["points"] else "Published: ") + pub["source"]
        note += (": " + pub["note"]) if pub.get("note") else ""
        note += " (different model and data: a reference, not a target)"
        fig.text(0.01, 0.005, textwrap.fill(note, 125 * len(settings)), fontsize=7, color="0.25")
    fig.tight_layout(rect=(0, 0.045 if pub else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _no_value_band(ax, strip_pts, logy):
    """A shaded "no value" strip under the data with a cross per run without values."""
    value_band(ax, strip_pts, logy, top=False, label="no value")


def _published(ax, pub, color, ranks, setting, figure, manifest):
    """Stars at the published figures in the colour of the matching method, one legend entry with the values.

    A figure at a rank is a star just left of that rank; a figure without a rank (runtime) is a
    dotted line across the panel with a star at its left end and its value at its right end.
    """
    for m, x, y, text in pub["points"]:
        c = color.get(m, "k")
        if x is None:
            ax.axhline(y, color=c, ls=":", lw=1)
            xs = ranks[0] * 2**-0.25 if ranks else 1
            ax.annotate(
                text + " (paper)",
                (ranks[-1] if ranks else 1, y),
                xytext=(0, 3),
                textcoords="offset points",
                fontsize=7,
                ha="right",
            )
        else:
            xs = x * 2**-0.2
        ax.plot(xs, y, "*", ms=15, mfc=c, mec="k", mew=0.8, zorder=5)
        manifest.append(
            {
                "figure": figure,
                "panel": setting,
                "method": m,
                "kind": "published",
                "rank": x,
                "y": y,
                "where": "value",
                "source": pub["source"],
            }
        )
    values = ", ".join(t for *_, t in pub["points"])
    label = "★ published (" + pub["source"].split(":")[0] + ")"
    if any(x is not None for _, x, _, _ in pub["points"]):
        label += ":\n" + values
    ax.plot([], [], "*", ms=12, mfc="w", mec="k", label=label)


def _sizes(sub) -> str:
    return f" (n = {sub[0]['n_train']}, m = {sub[0]['n_test']})" if sub else ""


def make_plots(out: Path, rows, datainf_rows, lissa_results):
    """Draw the report's PNG figures into ``out``.

    Returns
    -------
    paths : list of Path
    manifest : list of dict
        One entry per point drawn: ``figure``, ``panel``, ``method``/series, ``kind`` (``ok``,
        ``flagged``, ``failed``, ``diverged``, ``published``), ``y`` (``None`` when drawn in a
        strip instead of at a value) and ``where`` (``"value"`` or ``"strip"``).
    """
    plt = _plt()
    out = Path(out)
    paths, manifest = [], []
    settings = sorted({r["setting"] for r in rows}, key=lambda s: (s != "digits", s))
    common = {"manifest": manifest, "info": _sizes, "all_methods": [r["method"] for r in rows]}

    def tlabel(sub):
        q = sub[0]["n_queries"] if sub else "the"  # 1 + min(n_pairs, m), recorded per row
        return f"seconds for {q} queries × n training points"

    figures = [
        (
            "correlation_vs_rank.png",
            "pearson",
            "Pearson r with exact (average-over-test scores)",
            "Approximation error",
            {"ylim": (-0.25, 1.02)},
        ),
        (
            "auc_vs_rank.png",
            "auc",
            "AUC of the score for the flipped labels",
            "Mislabel detection",
            {"ylim": (0.0, 1.02)},
        ),
        ("runtime_vs_rank.png", "seconds", tlabel, "Runtime, as timed", {"logy": True}),
        (
            "runtime_per_4500_vs_rank.png",
            "seconds_per_4500",
            "seconds per 4,500 influence values",
            "Runtime per 4,500 values",
            {"logy": True},
        ),
    ]
    for name, key, ylabel, title, kw in figures if rows else []:
        if not any(key in r for r in rows):
            continue
        sub = [r for r in rows if r["method"] != "exact"] if key == "pearson" else rows
        _rank_figure(plt, sub, settings, key, ylabel, title, out / name, **common, **kw)
        paths.append(out / name)
    if datainf_rows:
        p = out / "datainf_bounds.png"
        datainf_figure(plt, datainf_rows, settings, p, manifest)
        paths.append(p)
    for res in lissa_results:
        p = out / f"lissa_batch_{res['meta']['setting']}.png"
        lissa_figure(plt, res["meta"], res["rows"], p, manifest)
        paths.append(p)
    return paths, manifest
