"""Randomized Nyström: the sketch's guarantees, the preconditioner, CG with it, and the low-rank inverse.

References are independent of the code under test: dense eigendecompositions in float64 of the
matrix the operator represents (never ``op.to_dense()`` of the sketch).
"""

import numpy as np
import pytest
from cases import BACKEND_PARAMS, Backend, host64, torch
from hypothesis import given
from hypothesis import strategies as st

import invhvp as ih
from invhvp.errors import DampingError, InputError, UnsupportedOperatorError
from invhvp.solvers.base import Counted
from invhvp.solvers.sketch import nystrom

NP = Backend("numpy")


def decaying(d, n_nonzero=None, seed=0, lo=1e-6, hi=1.0):
    """Symmetric PSD matrix with log-spaced eigenvalues in [lo, hi] (zeros past ``n_nonzero``)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    ev = np.geomspace(hi, lo, d)
    if n_nonzero is not None:
        ev[n_nonzero:] = 0.0
    M = (Q * ev) @ Q.T
    return (M + M.T) / 2, ev


def sketch(M, rank, bk=NP, dt="float64", seed=0, **kw):
    op = ih.Dense(bk.asarray(M, dt))
    return nystrom(Counted(op), rank, np.random.default_rng(seed), **kw), op


# ------------------------------------------------------------------ the sketch


@pytest.mark.parametrize("bk", BACKEND_PARAMS)
@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_sketch_is_below_the_operator_and_orthonormal(bk, dt):
    M, ev = decaying(80, seed=1, lo=1e-7)  # κ = 1e7: hard in float32 without the shift ν
    Mr = np.asarray(M, dtype=dt).astype(np.float64)
    Mr = (Mr + Mr.T) / 2
    a, _ = sketch(M, 30, bk, dt)
    V, lam = host64(a.V), a.values
    u = float(np.finfo(dt).eps)
    assert a.rank == 30 and a.n_matvec == 30 + 10 and np.all(np.diff(lam) <= 0) and lam[-1] >= 0  # + ‖E‖
    # orthonormal to working precision (float64: up to eps·λ̂_1/λ̂_ℓ, here 1e-7 spread)
    np.testing.assert_allclose(V.T @ V, np.eye(30), atol=max(50 * u, 1e-9))
    true = np.linalg.eigvalsh(Mr)[::-1]
    scale = true[0]
    # Ĥ ⪯ H + ν (up to rounding): every eigenvalue of H − Ĥ is >= −(ν + rounding)
    E = Mr - (V * lam) @ V.T
    assert np.linalg.eigvalsh((E + E.T) / 2)[0] >= -(a.nu + 200 * u * scale)
    assert np.all(lam <= true[:30] + a.nu + 200 * u * scale)  # interlacing: λ̂_i <= λ_i
    # the top of the spectrum is captured
    assert abs(lam[0] - true[0]) <= 1e-2 * scale


def test_sketch_covering_the_rank_is_exact_and_counts_products():
    M, _ = decaying(60, n_nonzero=12, seed=2)
    a, _ = sketch(M, 16)
    np.testing.assert_allclose((a.V * a.values) @ a.V.T, M, atol=1e-12)
    assert a.error is not None and a.error["upper"] <= 1e-10  # ‖E‖ estimate, 10 more products
    assert a.n_matvec == 16 + 10


@pytest.mark.parametrize("bk", BACKEND_PARAMS)
def test_float32_sketch_beyond_the_rank_drops_its_noise_columns(bk):
    """Past the numerical rank, σ² ≈ ν: the ν correction makes those λ̂ zero and they are dropped
    (their float32 columns are not orthogonal); what remains is an accurate, orthonormal basis."""
    M, ev = decaying(60, n_nonzero=15, seed=14, lo=1e-3)
    a, _ = sketch(M, 20, bk, "float32", seed=2)
    V = host64(a.V)
    assert a.truncated == 5 and a.rank == 15 and a.tail == 0.0
    np.testing.assert_allclose(V.T @ V, np.eye(15), atol=1e-5)
    np.testing.assert_allclose(a.values, ev[:15], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose((V * a.values) @ V.T, M, atol=1e-5)


def test_adaptive_growth_doubles_and_stops_at_the_condition_target():
    M, ev = decaying(400, seed=3, lo=1e-8)
    mu = 1e-4
    a, _ = sketch(M, 8, mu=mu, kappa_target=5.0, max_rank=400)
    ranks = [h["rank"] for h in a.history]
    assert ranks == [8 * 2**i for i in range(len(ranks))] and len(ranks) > 2
    assert a.kappa <= 5.0
    # the estimated condition number bounds the true one of the preconditioned matrix
    P_inv = _p_inv(a, mu)
    kappa_true = _cond(P_inv, M + mu * np.eye(400))[0]
    assert kappa_true <= a.kappa * (1 + 1e-6)
    # reused products: doubling spent the final rank plus the ‖E‖ checks, not a sum of sketches
    assert a.n_matvec == ranks[-1] + 10 * sum("error_upper" in h for h in a.history)


def _p_inv(a, mu):
    V, lam = a.V, a.values
    return V @ np.diag((lam[-1] + mu) / (lam + mu) - 1.0) @ V.T + np.eye(V.shape[0])


def _cond(P_inv, A):
    w, Q = np.linalg.eigh(P_inv)
    R = (Q * np.sqrt(w)) @ Q.T  # P^{-1/2}
    ev = np.linalg.eigvalsh(R @ A @ R)
    return ev[-1] / ev[0], ev


def test_budget_caps_the_growth():
    M, _ = decaying(300, seed=4, lo=1e-9)
    a, _ = sketch(M, 16, mu=1e-7, kappa_target=2.0, max_rank=64)
    assert a.rank == 64 and a.kappa > 2.0  # the target is out of reach: reported, not hidden
    b, _ = sketch(M, 16, mu=1e-7, kappa_target=2.0, max_matvec=40)
    assert b.n_matvec <= 40


# ------------------------------------------------------------------ the preconditioner


@pytest.mark.parametrize("bk", BACKEND_PARAMS)
def test_preconditioner_bounds_hold_for_the_preconditioned_matrix(bk):
    M, _ = decaying(150, seed=5, lo=1e-6)
    lam = 1e-4
    applied = ih.NystromPreconditioner(rank=40, rng=1).build(ih.Dense(bk.asarray(M, "float64")), lam)
    b = applied.bounds
    E = np.eye(150)
    P_inv = host64(applied(bk.asarray(E, "float64")))
    np.testing.assert_allclose(P_inv, P_inv.T, atol=1e-12)
    w = np.linalg.eigvalsh(P_inv)
    assert w[-1] <= 1 + 1e-10 and w[0] >= 1 / b["p_max"] * (1 - 1e-8)  # I ⪯ P ⪯ κ_P I
    _, ev = _cond(P_inv, M + lam * E)
    assert ev[0] >= b["m_lower"] * (1 - 1e-8)  # certified lower end (Â ⪯ A)
    assert ev[-1] <= b["m_upper"]  # estimated upper end (Lanczos with a safety factor)
    info = applied.info
    assert info["rank"] == 40 and info["sketch_matvec"] == 50 and info["memory_bytes"] == 150 * 40 * 8


def test_preconditioner_needs_a_lower_bound_for_indefinite_operators():
    op = ih.Dense(np.diag([2.0, 1.0, -0.5]), psd=False)
    with pytest.raises(UnsupportedOperatorError, match="psd=False"):
        ih.NystromPreconditioner().build(op, 1.0)
    applied = ih.NystromPreconditioner().build_with_lower(op, 1.0, eig_lower=-0.5)
    assert applied.info["shift"] == -0.5 and applied.info["mu"] == 0.5


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"rank": 0}, "rank"),
        ({"kappa_target": 1.0}, "kappa_target"),
        ({"max_memory": 0.0}, "max_memory"),
        ({"error_steps": -1}, "error_steps"),
        ({"rng": "x"}, "rng"),
        ({"initial_rank": 1.5}, "initial_rank"),
    ],
)
def test_bad_preconditioner_arguments_name_them(kwargs, name):
    with pytest.raises(InputError, match=name):
        ih.NystromPreconditioner(**kwargs)


@pytest.mark.parametrize("bk", BACKEND_PARAMS)
@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_cg_iterations_stay_flat_across_damping(bk, dt):
    rng = np.random.default_rng(6)
    n, d = 400, 600
    U = rng.standard_normal((n, d)) / np.arange(1, d + 1) ** 0.8  # decaying Gram spectrum
    op = ih.LowRankPlusIdentity(bk.asarray(U, dt))
    B = bk.asarray(rng.standard_normal((d, 4)), dt)
    mean = op.trace() / d
    # float32 cannot verify small residuals once λ is tiny (the product's rounding, docs/theory.md §7.2)
    rtol, factors = ((1e-2, (1.0, 1e-1, 1e-2)) if dt == "float32" else (1e-8, (1e-1, 1e-2, 1e-3)))
    plain, pre = [], []
    for f in factors:
        p = ih.solve(op, B, ih.CG(rtol=rtol), damping=f * mean, on_failure="ignore")
        q = ih.solve(op, B, ih.CG(rtol=rtol, preconditioner="nystrom"), damping=f * mean)
        assert q.ok and q.info["preconditioner_info"]["condition_estimate"] <= 10.0
        plain.append(p.n_iter)
        pre.append(q.n_iter)
    # no growth as λ shrinks (the sketch grows instead; once it covers the spectrum, 1-2 iterations)
    assert max(pre) <= 2 * pre[0], pre
    assert plain[2] >= 3 * plain[0] and all(q < p for p, q in zip(plain, pre)), (plain, pre)


def test_gram_products_for_tall_factors_match_and_are_reported():
    rng = np.random.default_rng(7)
    U = rng.standard_normal((300, 40))
    b = rng.standard_normal(40)
    xs = np.linalg.solve(U.T @ U / 300 + 0.01 * np.eye(40), b)
    res = ih.solve(ih.LowRankPlusIdentity(U), b, ih.CG(rtol=1e-12), damping=0.01)
    assert "Gram" in res.info["products"] and res.info["setup_matvec"] == 40
    np.testing.assert_allclose(res.x, xs, rtol=1e-9)
    wide = ih.solve(ih.LowRankPlusIdentity(U[:30]), b, ih.CG(rtol=1e-12), damping=0.01)
    assert "factor products" in wide.info["products"] and wide.info["setup_matvec"] == 0
    lissa = ih.solve(ih.LowRankPlusIdentity(U), b, ih.LiSSA(batch_size="full", rng=0), damping=0.01)
    assert "Gram" in lissa.info["products"] and np.linalg.norm(lissa.x - xs) <= 0.1 * np.linalg.norm(xs)


# ------------------------------------------------------------------ the low-rank inverse


@st.composite
def decaying_problems(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    d = draw(st.integers(8, 60))
    decay = draw(st.floats(0.5, 3.0))  # eigenvalues i^{-decay}
    rank = draw(st.integers(1, d))
    lam = 10.0 ** draw(st.floats(-6.0, 0.0))
    return seed, d, decay, rank, lam


@given(decaying_problems())
def test_nystrom_stays_within_its_reported_error_estimate(problem):
    seed, d, decay, rank, lam = problem
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    ev = np.arange(1, d + 1, dtype=float) ** -decay
    M = (Q * ev) @ Q.T
    M = (M + M.T) / 2
    B = rng.standard_normal((d, 3))
    res = ih.solve(ih.Dense(M), B, ih.Nystrom(rank=rank, rng=seed), damping=lam)
    Xs = np.linalg.solve(M + lam * np.eye(d), B)
    err = np.linalg.norm(res.x - Xs, axis=0)
    rel = err / np.linalg.norm(Xs, axis=0)
    slack = 1e-9 * np.linalg.norm(Xs, axis=0) / lam  # rounding of the references themselves
    assert np.all(err <= res.info["energy_bound"] * (1 + 1e-7) + slack)
    assert np.all(err <= res.info["error_bound"] * (1 + 1e-7) + slack)
    assert np.all(res.info["energy_bound"] <= res.info["error_bound"] * (1 + 1e-9))  # never looser
    est = res.info["error_estimate"]
    assert np.all(rel <= np.where(np.isfinite(est), est * (1 + 1e-7) + 1e-9, np.inf))


@pytest.mark.parametrize("bk", BACKEND_PARAMS)
def test_nystrom_covering_the_spectrum_matches_exact(bk):
    M, _ = decaying(50, n_nonzero=10, seed=8)
    U = np.random.default_rng(9).standard_normal((10, 70))
    rhs = np.random.default_rng(10).standard_normal((50, 3))
    for op, b, r in [
        (ih.Dense(bk.asarray(M, "float64")), rhs, 12),
        (ih.LowRankPlusIdentity(bk.asarray(U, "float64")), rhs[:, :2].repeat(2, 0)[:70], 10),
    ]:
        B = bk.asarray(b, "float64")
        x = host64(ih.solve(op, B, ih.Nystrom(rank=r, rtol=1e-6), damping=1e-3).x)
        xe = host64(ih.solve(op, B, ih.Exact(), damping=1e-3).x)
        assert np.linalg.norm(x - xe) <= 1e-6 * np.linalg.norm(xe)


def test_nystrom_rtol_decides_success_and_inverse_is_reusable():
    M, _ = decaying(100, seed=11, lo=1e-5)
    b = np.random.default_rng(12).standard_normal((100, 2))
    inv = ih.inverse(ih.Dense(M), ih.Nystrom(rank=10, rtol=1e-3), damping=1e-4, on_failure="ignore")
    res = inv.solve(b)
    assert res.status is ih.Status.INACCURATE and "raise rank" in res.info["advice"]
    assert res.n_matvec == 0 and res.info["check_matvec"] >= 2  # applies cost no operator product
    assert inv.info["probe_error_estimate"] > 1e-3 and inv.info["relative_error_bound"] > 1e-3
    loose = ih.solve(ih.Dense(M), b, ih.Nystrom(rank=10), damping=1e-4)
    assert loose.ok  # rtol=None: an approximation that reports its error
    np.testing.assert_allclose(loose.x, res.x)
    good = ih.solve(ih.Dense(M), b, ih.Nystrom(rank=100, rtol=1e-3), damping=1e-4)
    assert good.ok


def test_nystrom_refusals_and_influence():
    with pytest.raises(UnsupportedOperatorError, match="psd=False"):
        ih.solve(ih.Dense(np.diag([1.0, -1.0]), psd=False), np.ones(2), ih.Nystrom(), damping=2.0)
    with pytest.raises(DampingError, match="damping"):
        ih.solve(ih.Dense(np.eye(3)), np.ones(3), ih.Nystrom(), damping=0.0)
    with pytest.raises(InputError, match="rank"):
        ih.Nystrom(rank=0)
    rng = np.random.default_rng(13)
    G, T = rng.standard_normal((30, 20)), rng.standard_normal((4, 20))
    full = ih.influence_matrix([G], [T], ih.Exact(), damping=0.1)
    low = ih.influence_matrix([G], [T], ih.Nystrom(rank=20), damping=0.1)
    np.testing.assert_allclose(low, full, rtol=1e-8, atol=1e-10)


@pytest.mark.skipif(torch is None, reason="torch is not installed")
def test_torch_and_numpy_sketches_agree():
    M, ev = decaying(60, n_nonzero=15, seed=14)
    a, _ = sketch(M, 20, NP, "float64", seed=3)
    b, _ = sketch(M, 20, Backend("torch-cpu"), "float64", seed=3)
    # the test matrices differ (torch draws on its own generator); covering the rank, both are exact
    np.testing.assert_allclose(a.values[:15], ev[:15], rtol=1e-9)
    np.testing.assert_allclose(b.values[:15], ev[:15], rtol=1e-9)
    assert isinstance(b.V, torch.Tensor) and b.V.dtype == torch.float64


def test_nystrom_without_check_spends_no_product():
    M, _ = decaying(40, seed=15)
    inv = ih.inverse(ih.Dense(M), ih.Nystrom(rank=40), damping=1e-2)
    res = inv.solve(np.ones(40), check=False)
    assert res.residual_norm is None and res.info["check_matvec"] == 0 and "error_estimate" not in res.info
    np.testing.assert_allclose(res.x, inv.solve(np.ones(40)).x)
