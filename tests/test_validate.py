"""Smoke and unit tests of ``invhvp validate`` (the CLI, the report folder, the metrics)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="invhvp validate needs the 'validate' extra")
pytest.importorskip("matplotlib", reason="invhvp validate needs the 'validate' extra")
pytest.importorskip("tqdm", reason="invhvp validate needs the 'validate' extra")
pytest.importorskip("torch", reason="invhvp validate needs torch")

from invhvp.cli import build_parser, main  # noqa: E402
from invhvp.validate.problem import flip_labels  # noqa: E402
from invhvp.validate.studies import auc, pearson, spearman  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke_report(validate_smoke):
    return validate_smoke  # tests/conftest.py: digits ranks 1, 2 and MiniLM rank 1, one thread


def test_report_folder_has_markdown_tables_and_plots(smoke_report):
    names = {p.name for p in smoke_report.iterdir()}
    for f in (
        "report.md",
        "summary.csv",
        "summary.json",
        "datainf_bounds.csv",
        "datainf_bounds.json",
        "lissa_batch.csv",
        "lissa_batch.json",
        "settings.json",
        "timings.csv",
        "plots.json",
    ):
        assert f in names, f"{f} missing from {sorted(names)}"
    text = (smoke_report / "report.md").read_text(encoding="utf-8")
    assert "positive means" in text and "harmful" in text  # the sign convention is stated
    assert "skipped" not in text  # MiniLM ran (rank 1)
    pngs = sorted(smoke_report.glob("*.png"))
    assert {
        "correlation_vs_rank.png",
        "auc_vs_rank.png",
        "runtime_vs_rank.png",
        "runtime_per_4500_vs_rank.png",
        "datainf_bounds.png",
        "lissa_batch_digits.png",
        "lissa_batch_minilm.png",
    } <= {p.name for p in pngs}
    import matplotlib.image as mpimg

    for p in pngs:
        assert p.read_bytes()[:8] == PNG_SIGNATURE
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert float(img[..., :3].std()) > 0.01  # not a blank canvas
        assert f"]({p.name})" in text  # every plot is shown in the report


def test_summary_numbers_are_finite_and_in_range(smoke_report):
    rows = json.loads((smoke_report / "summary.json").read_text())
    methods = {r["method"] for r in rows}
    assert {"exact", "datainf", "cg", "identity"} <= methods
    assert {(r["setting"], r["rank"]) for r in rows} == {("digits", 1), ("digits", 2), ("minilm", 1)}
    assert {"cg-nystrom", "lissa-nystrom"} <= methods  # the preconditioned solvers too
    for r in rows:
        assert r["seconds"] is not None and 0.0 <= r["seconds"] < 600
        if r["status"] != "ok":
            continue
        for key in ("pearson", "spearman", "pearson_pairs"):
            assert -1.0 - 1e-12 <= r[key] <= 1.0 + 1e-12, (r["method"], key, r[key])
        assert 0.0 <= r["auc"] <= 1.0
    ok = {(r["method"], r["rank"]): r for r in rows if r["status"] == "ok" and r["setting"] == "digits"}
    for rank in (1, 2):
        # the exact method is the reference: correlation 1 with itself
        assert ok[("exact", rank)]["pearson"] == pytest.approx(1.0, abs=1e-12)
        # CG solves the same systems to rtol 1e-6: its influence values match exact
        assert ok[("cg", rank)]["pearson"] > 0.999
        assert ok[("cg", rank)]["auc"] == pytest.approx(ok[("exact", rank)]["auc"], abs=0.02)
    csv_lines = (smoke_report / "summary.csv").read_text().strip().splitlines()
    assert len(csv_lines) == len(rows) + 1


def test_datainf_true_error_never_exceeds_its_certificate(smoke_report):
    rows = json.loads((smoke_report / "datainf_bounds.json").read_text())
    assert rows
    for r in rows:
        assert r["true_error"] is not None and r["true_error"] >= 0
        assert r["true_error"] <= r["certificate"] * (1 + 1e-9)
        assert r["certificate"] <= r["paper_bound"] * (1 + 1e-9)


def test_datainf_spectral_certificate_in_table_and_report(smoke_report):
    rows = json.loads((smoke_report / "datainf_bounds.json").read_text())
    for r in rows:
        assert r["true_error"] <= r["spectral"] <= r["certificate"]
        assert r["spectral_ratio"] == pytest.approx(r["spectral"] / r["true_error"], rel=1e-12)
        assert 1.0 <= r["spectral_ratio"] <= 3.0
    text = (smoke_report / "report.md").read_text(encoding="utf-8")
    assert "spectral_ratio" in text and "correlation with exact influence" in text


def test_lissa_study_rows(smoke_report):
    rows = json.loads((smoke_report / "lissa_batch.json").read_text())
    assert [r["batch_size"] for r in rows] == [1, 8, 64] * 2  # digits, then MiniLM
    for r in rows:
        assert r["meta_threshold"] > 0
        assert r["above_threshold"] == (r["batch_size"] > r["meta_threshold"])
        med = r["error_median"]
        assert med == "inf" or (isinstance(med, float) and med >= 0)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["validate", "--quick", "--full"],
        ["validate", "--ranks", "0,2"],
        ["validate", "--ranks", "a"],
        ["validate", "--device", "tpu"],
        ["validate", "--seed", "x"],
        ["validate", "--bogus"],
    ],
)
def test_argument_errors_exit_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_parser_defaults():
    args = build_parser().parse_args(["validate"])
    assert args.mode == "quick" and args.out == "invhvp-report" and args.device == "cpu" and args.seed == 0
    args = build_parser().parse_args(["validate", "--full", "--ranks", "1,4", "--device", "cuda:1"])
    assert args.mode == "full" and args.ranks == (1, 4) and args.device == "cuda:1"


def test_demo_exact_and_cg_agree(capsys):
    from invhvp.cli import demo

    out = demo(seed=1)
    assert out["exact"].ok and out["cg"].ok
    assert out["difference"] < 1e-6
    assert "woodbury" in capsys.readouterr().out


# --------------------------------------------------------------------------- metrics
def test_auc_matches_a_pairwise_count():
    rng = np.random.default_rng(0)
    s = rng.standard_normal(60).round(1)  # ties on purpose
    pos = rng.random(60) < 0.3
    pairs = [(a > b) + 0.5 * (a == b) for a in s[pos] for b in s[~pos]]
    assert auc(s, pos) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert auc(s, np.zeros(60, bool)) != auc(s, np.zeros(60, bool))  # nan without positives


def test_correlations_against_scipy():
    from scipy import stats

    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(50), rng.standard_normal(50)
    b = a + 0.5 * b
    assert pearson(a, b) == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-12)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
    assert math.isnan(pearson(np.ones(5), a[:5]))


def test_flip_labels_flips_the_requested_share_to_other_classes():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 10, size=500)
    noisy, mask = flip_labels(y, 10, 0.2, rng)
    assert mask.sum() == 100
    assert np.all(noisy[mask] != y[mask]) and np.all(noisy[~mask] == y[~mask])
    assert noisy.min() >= 0 and noisy.max() <= 9
