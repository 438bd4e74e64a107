"""LiSSA and CG on the damped Hessian of the digits LoRA MLP (``psd=False``), against a dense Hessian solve.

The Hessian of a fine-tuned LoRA model is indefinite (LoRA is bilinear in ``A`` and ``B``): with
``λ > |λ_min|`` both solvers must agree with ``numpy.linalg.solve`` on the dense Hessian
(CG to 1e-6, LiSSA to its rtol 0.1); with ``λ < |λ_min|`` they must report the typed status.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

import invhvp as ih  # noqa: E402
from invhvp.errors import ConvergenceError  # noqa: E402
from invhvp.validate.digits import DigitsConfig, digits_problems  # noqa: E402

CFG = DigitsConfig(n_pretrain=200, n_train=200, n_test=20, hidden=16, pretrain_steps=80, finetune_steps=80)


@pytest.fixture(scope="module")
def hessian():
    torch.set_num_threads(1)
    (prob,), (model,) = digits_problems([1], CFG, seed=0, return_models=True)
    H = model.hessian(chunk_size=200)
    dense = H.to_dense().numpy()
    dense = (dense + dense.T) / 2
    rhs = np.concatenate([g[:3] for g in prob.test_grads], axis=1).T  # 3 test gradients, block order
    return H, dense, torch.as_tensor(np.ascontiguousarray(rhs)), prob, model


def test_the_digits_hessian_is_indefinite(hessian):
    H, dense, rhs, _, _ = hessian
    ev = np.linalg.eigvalsh(dense)
    assert not H.psd and ev[0] < 0 < ev[-1] and H.size == rhs.shape[0] == 144


@pytest.mark.slow
def test_cg_and_lissa_agree_with_a_dense_hessian_solve(hessian):
    H, dense, rhs, _, _ = hessian
    lmin = np.linalg.eigvalsh(dense)[0]
    lam = 2.0 * abs(lmin)
    xs = np.linalg.solve(dense + lam * np.eye(H.size), rhs.numpy())

    def rel(res):
        x = res.x.numpy()
        return np.linalg.norm(x - xs, axis=0) / np.linalg.norm(xs, axis=0)

    cg = ih.solve(H, rhs, ih.CG(rtol=1e-10), damping=lam)
    assert cg.ok and np.all(rel(cg) <= 1e-6), rel(cg)
    assert cg.info["lower_end"]["certified"] and cg.info["lower_end"]["lower"] <= lmin
    assert "Nyström" in ih.inverse(H, damping=lam).info["auto"]  # the automatic choice
    pcg = ih.solve(H, rhs, ih.CG(rtol=1e-10, preconditioner="nystrom"), damping=lam)
    assert pcg.ok and np.all(rel(pcg) <= 1e-6) and pcg.n_iter < cg.n_iter
    li = ih.solve(H, rhs, ih.LiSSA(rng=0), damping=lam)
    assert li.ok and np.all(rel(li) <= 0.1), rel(li)
    below = 0.5 * abs(lmin)
    for solver in (ih.CG(), ih.LiSSA(rng=0)):
        with pytest.raises(ConvergenceError, match="nonpositive_curvature") as ei:
            ih.solve(H, rhs, solver, damping=below)
        assert ei.value.result.status is ih.Status.NONPOSITIVE_CURVATURE
        assert "damping" in ei.value.result.info["advice"]


@pytest.mark.slow
def test_lissa_batch_study_on_the_hessian(hessian, tmp_path):
    from invhvp.validate.hessian_study import lissa_batch_rows_hessian
    from invhvp.validate.plots import make_plots

    H, dense, _, prob, model = hessian
    rows, meta = lissa_batch_rows_hessian(prob, model, [64], 40, repeats=1)
    ev = np.linalg.eigvalsh(dense)
    assert meta["setting"] == "digits-hessian" and meta["lambda_min"] == pytest.approx(ev[0], rel=1e-6)
    assert meta["damping"] >= 2 * abs(ev[0]) and meta["threshold"] == pytest.approx(12.0, rel=1e-6)
    assert meta["sigma1_sq"] <= meta["sigma1_sq_trace_bound"]  # λ_max(S) <= tr(S) for PSD S
    big = rows[-1]
    assert big["above_threshold"] and big["diverged"] == 0 and big["error_max"] <= big["bound"]
    (png,), drawn = make_plots(tmp_path, [], [], [{"meta": meta, "rows": rows}])
    assert png.name == "lissa_batch_digits-hessian.png" and png.stat().st_size > 1000
    assert {p["series"] for p in drawn} == {"error_median", "error_max", "bound"}
    from invhvp.validate.report_theory import lissa_paragraph

    text = lissa_paragraph(meta)  # the Hessian's wording: an estimated σ₁², λ_eff = λ + λ_min
    assert "λ_eff = λ + λ_min" in text and "σ₁² ≈" in text and "estimate: Lanczos" in text
