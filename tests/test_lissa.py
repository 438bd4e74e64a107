"""LiSSA: convergence, the docs/theory.md §5 bound, automatic plans, divergence, refusals, counting."""

import math

import numpy as np
import pytest
from cases import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import invhvp as ih
from invhvp.bounds import lissa_batch_threshold, lissa_error_bound, plan_lissa
from invhvp.errors import ConvergenceError, DampingError, InputError, UnsupportedOperatorError

BACKENDS = ["numpy"] + (["torch"] if torch is not None else [])
DTYPES = ["float32", "float64"]


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Tiny products: BLAS threads only add contention on shared CPUs."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(1):
        yield


def to_backend(a, backend, dtype):
    a = np.asarray(a, dtype=dtype)
    return torch.from_numpy(a.copy()) if backend == "torch" else a


def to_np(x):
    return x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)


def gram_problem(seed, n, d, decay=1.0, tail=0.5):
    """Rows with a decaying covariance spectrum and log-normal norms (heavy-ish tails)."""
    rng = np.random.default_rng(seed)
    scales = np.exp(-decay * np.linspace(0, 3, d))
    U = rng.standard_normal((n, d)) * scales * np.exp(tail * rng.standard_normal((n, 1)))
    v = rng.standard_normal(d)
    return U, v


def exact(U, v, lam, shift=0.0):
    n, d = U.shape
    return np.linalg.solve(U.T @ U / n + (lam + shift) * np.eye(d), v)


def sigma1_sq(U, scale=None):
    n = U.shape[0]
    s = 1.0 / n if scale is None else scale
    G = s * U.T @ U
    r = np.sum(U * U, axis=1) * (s * n)
    S = (s * n) * (U.T * r) @ U / n - G @ G
    return float(np.linalg.eigvalsh(S)[-1])


# ------------------------------------------------------------------------ exact hyperparameters


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_full_batch_exact_step_converges_to_exact_solution(backend, dtype):
    U, v = gram_problem(0, 60, 12)
    lam = 0.5
    lmax = np.linalg.eigvalsh(U.T @ U / 60)[-1]
    eta = 1.0 / (lmax + lam)
    T = int(math.ceil(math.log(1e-12) / math.log(1 - eta * lam)))
    op = ih.LowRankPlusIdentity(to_backend(U, backend, dtype))
    res = ih.solve(
        op, to_backend(v, backend, dtype), ih.LiSSA(step=eta, batch_size="full", steps=T), damping=lam
    )
    xs = exact(U, v, lam)
    tol = 1e-4 if dtype == "float32" else 1e-10
    assert res.ok and res.n_iter == T
    assert np.linalg.norm(to_np(res.x) - xs) <= tol * np.linalg.norm(xs)
    assert res.x.dtype == op.dtype and type(res.x) is type(op.factor)
    # T-1 full products (u_0 = 0 needs none)
    assert res.n_matvec == T - 1


# ------------------------------------------------------------------------ docs/theory.md §5 bound


@settings(max_examples=12)
@given(
    seed=st.integers(0, 2**31 - 1),
    d=st.integers(3, 10),
    decay=st.floats(0.0, 2.0),
    tail=st.floats(0.0, 1.0),
    lam=st.floats(0.05, 1.0),
    frac=st.floats(0.2, 1.0),
    batch=st.sampled_from([4, 16, 64]),
)
def test_mean_squared_error_below_theory_bound(seed, d, decay, tail, lam, frac, batch):
    n = 40
    U, v = gram_problem(seed, n, d, decay, tail)
    lmax = np.linalg.eigvalsh(U.T @ U / n)[-1]
    eta = frac / (lmax + lam)
    s1 = sigma1_sq(U)
    T = 60
    bound = lissa_error_bound(eta, lam, lmax, s1, batch, T)
    xs = exact(U, v, lam)
    op = ih.LowRankPlusIdentity(U)
    V = np.repeat(v[:, None], 1, axis=1)
    errs2 = []
    for r in range(16):
        res = ih.solve(
            op, V, ih.LiSSA(step=eta, batch_size=batch, steps=T, rng=r), damping=lam, on_failure="ignore"
        )
        if res.status in (ih.Status.DIVERGED, ih.Status.NONFINITE):
            errs2.append(math.inf)
            continue
        errs2.append(np.sum((res.x[:, 0] - xs) ** 2) / np.sum(xs**2))
    mse = float(np.mean(errs2))
    if math.isfinite(bound):
        assert mse <= bound**2
    # the bound is also what the planner's fixed-everything plan reports
    p = plan_lissa(lmax, lam, s1, 0.5, step=eta, batch_size=batch, steps=T)
    assert p.predicted_error == pytest.approx(bound, rel=1e-9) or not math.isfinite(bound)


def test_bound_helpers():
    # deterministic: (1 - ηλ)^T
    assert lissa_error_bound(0.5, 1.0, 1.0, 0.0, None, 3) == pytest.approx(0.125)
    assert lissa_error_bound(0.6, 1.0, 1.0, 0.0, None, 3) == math.inf  # step beyond 1/(λmax+λ)
    assert lissa_batch_threshold(0.1, 1.0, 190.0) == pytest.approx(10.0)
    p = plan_lissa(9.0, 1.0, 50.0, 0.05, n_samples=10**6)
    assert p.meets_target and p.predicted_error <= 0.05 and p.step <= 0.1 + 1e-15
    assert p.batch_size is not None and p.batch_size > lissa_batch_threshold(p.step, 1.0, 50.0)
    q = plan_lissa(9.0, 1.0, 50.0, 0.05, n_samples=10**6, budget=p.cost / 10)
    assert not q.meets_target and q.cost <= p.cost / 10 and q.cost_to_meet_target <= p.cost
    with pytest.raises(InputError, match="rtol"):
        plan_lissa(1.0, 1.0, 1.0, 1.5)


def test_zero_curvature_plan_takes_a_step():
    """λ_max = 0 makes ρ = 0 at η = 1/λ; the plan must still take T >= 1 steps (u_0 = 0 is wrong)."""
    p = plan_lissa(0.0, 1.0, 0.0, 0.1, n_samples=10)
    assert p.steps >= 1 and p.predicted_error <= 0.1 and p.meets_target
    v = np.array([1.0, -2.0, 3.0])
    res = ih.solve(ih.Dense(np.zeros((3, 3))), v, ih.LiSSA(rng=0), damping=2.0)
    np.testing.assert_allclose(res.x, v / 2.0, rtol=1e-12)


# ------------------------------------------------------------------------ automatic plan


@pytest.mark.parametrize(
    "backend,dtype,seed",
    [("numpy", "float64", 1), ("numpy", "float32", 2)]
    + ([("torch", "float64", 3), ("torch", "float32", 4)] if torch is not None else []),
)
def test_automatic_plan_reaches_rtol_on_held_out_problems(backend, dtype, seed):
    # many samples, moderate conditioning: the plan uses mini-batches
    n, d = 50000, 8
    U, v = gram_problem(seed, n, d, decay=0.5, tail=0.3)
    lam = 0.2 * np.sum(U * U) / U.size
    op = ih.LowRankPlusIdentity(to_backend(U, backend, dtype))
    V = np.stack([v, np.random.default_rng(seed).standard_normal(d)], axis=1)
    res = ih.solve(op, to_backend(V, backend, dtype), ih.LiSSA(rtol=0.1, rng=seed), damping=lam)
    X = to_np(res.x)
    for j in range(2):
        xs = exact(U, V[:, j], lam)
        assert np.linalg.norm(X[:, j] - xs) <= 0.1 * np.linalg.norm(xs)
    plan, est = res.info["plan"], res.info["estimates"]
    assert res.ok and plan["meets_target"] and plan["predicted_error"] <= 0.1
    assert plan["batch_size"] is not None and plan["batch_size"] < n
    assert est["lambda_max_upper"] >= np.linalg.eigvalsh(U.T @ U / n)[-1]
    assert est["sigma1_sq"] >= sigma1_sq(U) * (1 - 1e-6)  # a bound on the true variance
    # counting: ceil(sum of B*k/n) over the steps; the estimates are setup work
    assert res.n_matvec == math.ceil((plan["steps"] - 1) * plan["batch_size"] * 2 / n - 1e-9)
    assert res.info["setup_matvec"] == 9  # d = 8 <= lanczos_steps: exact small spectrum (8) + row norms (1)


def test_automatic_plan_on_digits_ten_seeds():
    lissa_study = pytest.importorskip("validation.lissa_study")
    pytest.importorskip("sklearn")
    prob = lissa_study.digits_gram_problem(n_train=300, maxiter=50)
    U, v, lam = prob.grads, prob.rhs, prob.damping
    op = ih.LowRankPlusIdentity(U)
    xs = ih.solve(op, v, ih.Exact(), damping=lam).x
    for s in range(10):
        res = ih.solve(op, v, ih.LiSSA(rng=s, max_matvec=10_000), damping=lam)  # the plan needs ~5500
        assert np.linalg.norm(res.x - xs) <= 0.1 * np.linalg.norm(xs), s
        assert res.info["plan"]["predicted_error"] <= 0.1


def test_budget_too_small_is_reported():
    U, v = gram_problem(5, 2000, 20)
    op = ih.LowRankPlusIdentity(U)
    with pytest.raises(ConvergenceError, match="max_matvec") as exc:
        ih.solve(op, v, ih.LiSSA(max_matvec=40, rng=0, preconditioner=None), damping=0.01)
    res = exc.value.result
    assert res.status is ih.Status.MAX_ITER and not res.info["plan"]["meets_target"]
    assert res.n_matvec <= 40 + 1
    assert np.all(np.isfinite(res.x))


def test_block_diagonal_own_plan_and_damping_per_block():
    U1, v1 = gram_problem(6, 500, 8)
    U2, v2 = gram_problem(7, 3000, 5, decay=0.0)
    op = ih.BlockDiagonal([ih.LowRankPlusIdentity(U1), ih.LowRankPlusIdentity(U2)])
    lams = (0.3, 0.05)
    res = ih.solve(op, np.concatenate([v1, v2]), ih.LiSSA(rng=0), damping=lams)
    assert [b["plan"]["meets_target"] for b in res.info["blocks"]] == [True, True]
    assert res.info["blocks"][0]["plan"]["step"] != res.info["blocks"][1]["plan"]["step"]
    for x, (U, v, lam) in zip(np.split(res.x, [8]), [(U1, v1, 0.3), (U2, v2, 0.05)]):
        xs = exact(U, v, lam)
        assert np.linalg.norm(x - xs) <= 0.1 * np.linalg.norm(xs)


def test_matrix_free_with_sampler_automatic_plan():
    U, v = gram_problem(8, 4000, 15, decay=0.3, tail=0.2)
    n = U.shape[0]
    lam = 0.3

    def sampler(batch_size, rng):
        rows = U[rng.integers(0, n, size=batch_size)]
        return lambda V: rows.T @ (rows @ V) / batch_size

    op = ih.MatrixFree(lambda x: U.T @ (U @ x) / n, size=15, dtype=np.float64, sampler=sampler, n_samples=n)
    res = ih.solve(op, v, ih.LiSSA(rng=1), damping=lam)
    xs = exact(U, v, lam)
    assert np.linalg.norm(res.x - xs) <= 0.1 * np.linalg.norm(xs)
    assert "Hutchinson" in res.info["estimates"]["sigma1_sq_source"]
    # σ₁² estimate (mean + 3 stderr of a trace) is above the true spectral variance
    assert res.info["estimates"]["sigma1_sq"] >= sigma1_sq(U)


def test_multiple_rhs_equal_single_columns_with_shared_batches():
    U, v = gram_problem(9, 300, 10)
    op = ih.LowRankPlusIdentity(U)
    V = np.stack([v, 2 * v + 1], axis=1)
    cfg = ih.LiSSA(step=0.3, batch_size=8, steps=50, rng=11)
    X = ih.solve(op, V, cfg, damping=0.5, on_failure="ignore").x  # too few steps for rtol: not the point
    for j in range(2):
        xj = ih.solve(op, V[:, j], cfg, damping=0.5, on_failure="ignore").x
        np.testing.assert_allclose(X[:, j], xj, rtol=1e-10, atol=1e-12)


def test_from_scale_is_step_one_over_scale_and_counts_minibatch_products():
    U, v = gram_problem(10, 100, 6)
    op = ih.LowRankPlusIdentity(U)
    a = ih.solve(op, np.stack([v, v], 1), ih.LiSSA.from_scale(4.0, 50, 10, rng=3), damping=0.1, on_failure="ignore")
    b = ih.solve(
        op, np.stack([v, v], 1), ih.LiSSA(step=0.25, steps=50, batch_size=10, rng=3), damping=0.1, on_failure="ignore"
    )
    assert a.status is not ih.Status.SUCCESS  # batch 10 is below the variance threshold: reported
    np.testing.assert_array_equal(a.x, b.x)
    # 49 products with B=10 samples and k=2 columns, n=100: ceil(49*10*2/100) = 10
    assert a.n_matvec == 10 and a.info["n_sample_products"] == 980
    assert "B*k/n" in a.info["matvec_convention"]


# ------------------------------------------------------------------------ divergence


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_step_beyond_bound_is_reported_diverged(backend, dtype):
    U, v = gram_problem(11, 50, 8)
    lmax = np.linalg.eigvalsh(U.T @ U / 50)[-1]
    op = ih.LowRankPlusIdentity(to_backend(U, backend, dtype))
    solver = ih.LiSSA(step=3.0 / (lmax + 0.1), batch_size="full", steps=2000)
    with pytest.raises(ConvergenceError) as exc:
        ih.solve(op, to_backend(v, backend, dtype), solver, damping=0.1)
    res = exc.value.result
    assert res.status in (ih.Status.DIVERGED, ih.Status.NONFINITE)
    assert res.n_iter < 200  # detected early
    assert np.all(np.isfinite(to_np(res.x)))
    assert "1/(λ_max+λ)" in res.info["advice"]


def test_batch_one_below_threshold_diverges():
    U, v = gram_problem(12, 400, 10, decay=0.0, tail=1.0)
    lam = 0.01
    lmax = np.linalg.eigvalsh(U.T @ U / 400)[-1]
    eta = 1.0 / (lmax + lam)
    assert lissa_batch_threshold(eta, lam, sigma1_sq(U)) > 100  # B = 1 far below
    op = ih.LowRankPlusIdentity(U)
    res = ih.solve(
        op, v, ih.LiSSA(step=eta, batch_size=1, steps=5000, rng=0), damping=lam, on_failure="ignore"
    )
    assert res.status in (ih.Status.DIVERGED, ih.Status.NONFINITE)
    assert np.all(np.isfinite(res.x)) and "batch" in res.info["advice"]
    # the same step with a batch above the threshold converges
    ok = ih.solve(op, v, ih.LiSSA(step=eta, batch_size="full", steps=5000), damping=lam)
    assert ok.ok


# ------------------------------------------------------------------------ refusals and errors


def test_refuses_unsupported_operators_up_front():
    D = ih.Dense(np.eye(4))
    with pytest.raises(UnsupportedOperatorError, match="batch_size='full'"):
        ih.solve(D, np.ones(4), ih.LiSSA(batch_size=2, step=0.5, steps=3), damping=1.0)
    mf = ih.MatrixFree(lambda x: x, size=4, dtype=np.float64)
    with pytest.raises(UnsupportedOperatorError, match="sampler"):
        ih.solve(mf, np.ones(4), ih.LiSSA(batch_size=2), damping=1.0)
    with pytest.raises(UnsupportedOperatorError, match=r"blocks\[1\]"):
        ih.solve(
            ih.BlockDiagonal([ih.LowRankPlusIdentity(np.ones((3, 4))), mf]),
            np.ones(8),
            ih.LiSSA(batch_size=2),
            damping=1.0,
        )
    with pytest.raises(InputError, match="preconditioner"):
        ih.LiSSA(preconditioner="jacobi")  # the preconditioned plan needs the Nyström bounds
    mf_s = ih.MatrixFree(lambda x: x, size=4, dtype=np.float64, sampler=lambda b, g: lambda V: V)
    with pytest.raises(UnsupportedOperatorError, match="n_samples"):
        ih.solve(mf_s, np.ones(4), ih.LiSSA(max_matvec=10), damping=1.0)
    with pytest.raises(DampingError, match="damping"):
        ih.solve(ih.LowRankPlusIdentity(np.ones((3, 5))), np.ones(5), ih.LiSSA(), damping=0.0)


def test_full_batch_fallback_for_operators_without_sampler():
    A = np.diag(np.linspace(0.1, 2.0, 50))
    mf = ih.MatrixFree(lambda x: A @ x, size=50, dtype=np.float64)
    res = ih.solve(mf, np.ones(50), ih.LiSSA(rng=0), damping=0.5)
    assert res.info["plan"]["batch_size"] is None and "full-batch" in res.info["batch_note"]
    xs = np.ones(50) / (np.diag(A) + 0.5)
    assert np.linalg.norm(res.x - xs) <= 0.1 * np.linalg.norm(xs)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"step": -1.0}, "step"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": "half"}, "batch_size"),
        ({"steps": 0}, "steps"),
        ({"rtol": 1.5}, "rtol"),
        ({"lambda_max": "big"}, "lambda_max"),
        ({"variance": -1.0}, "variance"),
        ({"rng": "x"}, "rng"),
        ({"safety": 0.5}, "safety"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, name):
    with pytest.raises(InputError, match=name):
        ih.LiSSA(**kwargs)
