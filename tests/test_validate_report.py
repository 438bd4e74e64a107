"""``invhvp validate``: thread limits, cost-weighted progress, the new options, and what the plots draw.

The plots are checked through ``plots.json`` (every point drawn, with its kind and where it was
drawn), never through the images.
"""

from __future__ import annotations

import csv
import json
import math

import pytest

pytest.importorskip("sklearn", reason="invhvp validate needs the 'validate' extra")
pytest.importorskip("matplotlib", reason="invhvp validate needs the 'validate' extra")
pytest.importorskip("tqdm", reason="invhvp validate needs the 'validate' extra")
pytest.importorskip("torch", reason="invhvp validate needs torch")

from invhvp.cli import build_parser, main  # noqa: E402
from invhvp.validate.plan import Item  # noqa: E402
from invhvp.validate.progress import Progress  # noqa: E402


@pytest.fixture(scope="module")
def report(validate_smoke):
    return validate_smoke


def _json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_threads_apply_to_torch_and_every_blas_and_openmp_pool(report):
    run = _json(report / "settings.json")["run"]
    assert run["threads"] == 1
    pools = run["thread_pools"]
    apis = {p["api"] for p in pools}
    assert "blas" in apis and "torch" in apis  # numpy's BLAS is limited too, not only torch
    assert all(p["num_threads"] == 1 for p in pools), pools


def test_timings_cover_every_phase_with_expected_costs(report):
    with open(report / "timings.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["phase"] for r in rows} >= {"gradients", "influence", "datainf bounds", "lissa study"}
    assert all(float(r["expected_seconds"]) > 0 and float(r["seconds"]) >= 0 for r in rows)
    summary = _json(report / "summary.json")
    assert sum(r["phase"] == "influence" for r in rows) == len(summary)  # one item per method × rank
    text = (report / "report.md").read_text(encoding="utf-8")
    assert "expected before the start" in text and "## Time per phase" in text


def test_sizes_and_runtime_per_4500_values(report):
    rows = _json(report / "summary.json")
    for r in rows:
        n, m = (100, 16) if r["setting"] == "digits" else (24, 6)  # --n-train/--n-test; the smoke MiniLM
        assert r["n_train"] == n and r["n_test"] == m
        assert r["n_queries"] == 1 + m  # the average test gradient and the m test points (n_pairs 20 > m)
        assert r["seconds_per_4500"] == pytest.approx(r["seconds"] * 4500 / (r["n_queries"] * r["n_train"]))
    text = (report / "report.md").read_text(encoding="utf-8")
    assert "queries actually timed, 17 for digits, 7 for minilm" in text and "4,500 influence values" in text


def test_failed_runs_are_never_drawn_at_a_value(report):
    rows = _json(report / "summary.json")
    pts = [p for p in _json(report / "plots.json") if p["kind"] != "published"]
    corr = {(p["panel"], p["rank"], p["method"]): p for p in pts if p["figure"] == "correlation_vs_rank.png"}
    runtime = {(p["panel"], p["rank"], p["method"]): p for p in pts if p["figure"] == "runtime_vs_rank.png"}
    assert any(not r["has_values"] for r in rows)  # the smoke run has diverging classic LiSSA settings
    for r in rows:
        key = (r["setting"], r["rank"], r["method"])
        if r["method"] != "exact":
            p = corr[key]
            if r["has_values"]:
                assert p["where"] == "value" and p["y"] == pytest.approx(r["pearson"])
                assert p["kind"] == ("ok" if r["status"] == "ok" else "flagged")
            else:
                assert p["kind"] == "failed" and p["where"] == "strip" and p["y"] is None
        # a failed run's time is a measurement (until the solver stopped it): drawn as such
        assert runtime[key]["y"] == pytest.approx(r["seconds"])


def test_published_references_are_drawn_with_their_source(report):
    pts = [p for p in _json(report / "plots.json") if p["kind"] == "published"]
    corr = {(p["method"], p["y"]) for p in pts if p["figure"] == "correlation_vs_rank.png"}
    assert corr == {("datainf", 0.64), ("identity", 0.50), ("lissa-fb10", 0.45)}
    rt = {p["y"] for p in pts if p["figure"] == "runtime_per_4500_vs_rank.png"}
    assert rt == {11279.0, 70.0, 13.0}
    assert all("docs/theory.md §12" in p["source"] for p in pts)
    text = (report / "report.md").read_text(encoding="utf-8")
    assert "MiniLM-L6, rank 8, n = 2000" not in text  # an internal measurement is not listed as published


def test_lissa_divergence_is_a_strip_marker_not_a_capped_value(report):
    rows = _json(report / "lissa_batch.json")
    pts = [p for p in _json(report / "plots.json") if p["figure"].startswith("lissa_batch_")]
    for r in rows:
        for key in ("error_median", "error_max"):
            at = (r["meta_setting"], key, r["batch_size"])
            p = next(p for p in pts if (p["panel"], p["series"], p["x"]) == at)
            if r[key] == "inf":
                assert p["kind"] == "diverged" and p["y"] is None
            else:
                assert p["y"] == pytest.approx(r[key])
    assert all(p["y"] is None or p["y"] < 1e6 for p in pts)


def test_report_separates_flagged_runs_from_runs_without_values(report):
    text = (report / "report.md").read_text(encoding="utf-8")
    rows = _json(report / "summary.json")
    without = text.split("Runs without values")[1].split("\n\n")[1] if "Runs without values" in text else ""
    for r in rows:
        line = f"{r['setting']} rank {r['rank']} `{r['method']}`: {r['status']}"
        if not r["has_values"]:
            assert line in without
        else:
            assert line not in without
    assert "lambda_min" not in text and "intermediate" in text and "not cheap" in text


def test_minilm_block_names_are_short_in_titles_and_tables(report):
    meta = _json(report / "lissa_batch.json")
    minilm = [r for r in meta if r["meta_setting"] == "minilm"]
    assert minilm and ".default.weight" in minilm[0]["meta_block"]  # the full name stays in the data
    text = (report / "report.md").read_text(encoding="utf-8")
    assert ".default.weight" not in text and "layer 0 query lora_A" in text


def test_help_is_formatted_and_lists_the_new_options(capsys):
    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    out = capsys.readouterr().out
    assert "%%" not in out and "20 percent" in out
    for opt in ("--threads", "--n-train", "--n-test", "--minilm-ranks", "--minilm-n-train", "--estimate"):
        assert opt in out


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--threads", "0"], "--threads"),
        (["--n-train", "1500"], "--n-train"),
        (["--n-test", "-3"], "--n-test"),
        (["--minilm-n-train", "4000"], "--minilm-n-train"),
        (["--minilm-ranks", "0"], "--minilm-ranks"),
        (["--no-minilm", "--minilm-ranks", "1"], "--minilm-ranks"),
        (["--ranks", "1,1"], "--ranks"),  # a repeated rank used to crash the progress plan
    ],
)
def test_bad_options_are_errors_naming_the_option(argv, names, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["validate", *argv])
    assert exc.value.code == 2
    assert names in capsys.readouterr().err


def test_cuda_device_is_refused_with_a_clear_error_when_unavailable(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--smoke", "--device", "cuda"])
    assert exc.value.code == 2 and "--device cuda: CUDA is not available" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SystemExit):
        main(["validate", "--smoke", "--device", "cuda:3"])
    assert "--device cuda:3" in capsys.readouterr().err


def test_estimate_prints_the_expected_duration_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["validate", "--full", "--estimate", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "expected duration" in text and "influence" in text and "gradients" in text
    assert not out.exists()
    args = build_parser().parse_args(["validate", "--threads", "3", "--minilm-ranks", "2,4"])
    assert args.threads == 3 and args.minilm_ranks == (2, 4)


def test_progress_eta_is_weighted_by_cost_and_calibrated_per_kind():
    now = [0.0]
    items = [
        Item(("a",), "p", "k1", "a", 1.0),
        Item(("b",), "p", "k2", "b", 100.0),
        Item(("c",), "p", "k1", "c", 2.0),
    ]
    prog = Progress(items, bars=False, say=lambda s: None, clock=lambda: now[0])
    assert prog.remaining() == pytest.approx(103.0)

    def work(dt):
        now[0] += dt

    prog.run(("a",), work, 3.0)  # k1 took 3× its expected cost
    assert prog.factor("k1") == pytest.approx(3.0)
    assert prog.factor("k2") == pytest.approx(3.0)  # not seen yet: everything finished so far
    assert prog.remaining() == pytest.approx(3.0 * 100.0 + 3.0 * 2.0)
    prog.run(("b",), work, 50.0)  # k2 ran at half its expected cost
    assert prog.remaining() == pytest.approx(3.0 * 2.0)
    assert prog.percent() == pytest.approx(100.0 * 101.0 / 103.0)
    assert math.isclose(sum(r["seconds"] for r in prog.records() if r["seconds"] == r["seconds"]), 53.0)


def test_hessian_study_wording_says_estimate_and_lambda_eff():
    from invhvp.validate.report_theory import lissa_paragraph

    meta = {
        "setting": "digits-hessian",
        "rank": 1,
        "block": "all LoRA tensors (Hessian)",
        "d": 704,
        "n": 500,
        "damping": 0.5,
        "default_damping": 0.1,
        "default_threshold": float("inf"),
        "lambda_max": 150.0,
        "lambda_min": -0.23,
        "step": 0.0066,
        "steps": 400,
        "sigma1_sq": 12.0,
        "sigma1_sq_trace_bound": 90.0,
        "sigma1_sq_source": "Lanczos (20 steps) on E(H_i − H)²; trace: Hutchinson (20 probes)",
        "threshold": 12.0,
        "threshold_trace_bound": 80.0,
    }
    text = lissa_paragraph(meta)
    assert "σ₁² ≈ 12.000 (estimate: Lanczos" in text and "(exact" not in text.split("λ_min")[1].split(",")[1]
    assert "λ_eff = λ + λ_min" in text and "B* = ησ₁²/(λ_eff(2 − ηλ_eff))" in text
    assert "λ_eff = 0.270" in text and "B* is an estimate" in text
    gram = lissa_paragraph({**meta, "lambda_min": 0.0, "sigma1_sq_source": "exact (n×n eigenproblem)"})
    assert "σ₁² = 12.000 (exact" in gram and "λ_eff" not in gram and "B* = ησ₁²/(λ(2 − ηλ))" in gram


def test_torch_device_path_matches_numpy_and_is_recorded():
    import numpy as np

    from invhvp.validate.methods import default_damping, default_methods, run_method
    from invhvp.validate.problem import InfluenceProblem
    from invhvp.validate.runner import _device_text

    rng = np.random.default_rng(0)
    prob = InfluenceProblem(
        "toy",
        1,
        [rng.standard_normal((30, 12)) for _ in range(2)],
        [rng.standard_normal((5, 12)) for _ in range(2)],
        np.zeros(30, bool),
        ["a", "b"],
    )
    lam = default_damping(prob.train_grads)
    for m in (m for m in default_methods() if m.name in ("exact", "cg", "datainf")):
        a = run_method(prob, m, lam, device=None, n_pairs=3)
        b = run_method(prob, m, lam, device="cpu", n_pairs=3)  # --device torch-cpu: the cuda code path
        assert a.status == b.status == "ok" and np.allclose(a.influence, b.influence, rtol=1e-8, atol=1e-12)
    assert "numpy solves" in _device_text(None) and "torch float64" in _device_text("cpu")


def test_hessian_study_below_the_lower_end_says_indefinite():
    from invhvp.validate.report_theory import lissa_paragraph

    meta = {
        "setting": "digits-hessian",
        "rank": 1,
        "block": "all",
        "d": 704,
        "n": 500,
        "damping": 19.3,
        "default_damping": 0.098,
        "default_threshold": float("inf"),
        "lambda_max": 191.0,
        "lambda_min": -0.42,
        "step": 0.005,
        "steps": 300,
        "sigma1_sq": 9e4,
        "sigma1_sq_trace_bound": 3e5,
        "sigma1_sq_source": "Lanczos (20 steps)",
        "threshold": 12.0,
        "threshold_trace_bound": 41.7,
    }
    text = lissa_paragraph(meta)
    assert "H + λI is indefinite (λ + λ_min ≤ 0)" in text and "B* = inf" not in text


def test_datainf_bounds_series_keep_their_colour_and_say_when_not_computed(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    from invhvp.validate.plots_theory import datainf_figure

    def row(setting, d, intermediate):
        return {
            "setting": setting,
            "d": d,
            "damping": 0.5,
            "true_error": 1.0,
            "spectral": 1.2,
            "spectral_ratio": 1.2,
            "intermediate": intermediate,
            "certificate": 10.0,
            "paper_bound": 100.0,
        }

    rows = [row("a", 8, 5.0), row("a", 16, 6.0), row("b", 8, None), row("b", 16, float("nan"))]
    captured = {}
    real_close = plt.close

    def keep(fig=None):  # look at the figure before the plotting code closes it
        captured["fig"] = fig if fig is not None else plt.gcf()

    plt.close = keep
    try:
        datainf_figure(plt, rows, ["a", "b"], tmp_path / "bounds.png", [])
    finally:
        plt.close = real_close
    assert (tmp_path / "bounds.png").exists()
    axes = captured["fig"].axes
    legends = [
        {t.get_text(): h for t, h in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles)}
        for ax in axes
    ]
    # panel b has no intermediate values: its legend says so, panel a's does not
    assert not any("not computed" in t for t in legends[0])
    assert any(t.startswith("intermediate") and "not computed" in t for t in legends[1])

    def colour(leg, prefix):
        h = next(h for t, h in leg.items() if t.startswith(prefix))
        return mcolors.to_hex(h.get_facecolor()[0])

    for prefix in ("true error", "spectral", "intermediate", "computable", "paper"):
        assert colour(legends[0], prefix) == colour(legends[1], prefix), prefix
    real_close(captured["fig"])
