"""Preconditioned LiSSA (the bound, the plan, the automatic choice) and indefinite operators (CG, LiSSA).

docs/theory.md §8.6–8.11: with ``I ⪯ P ⪯ κ_P I``, ``m <= λ_min(M)``, ``λ_max(M) <= L_M``
for ``M = P^{-1/2}(A + λI)P^{-1/2}`` and ``η <= 1/L_M``,
``E‖u_T − u*‖²/‖u*‖² <= κ_P ρ^T + (1 + 1/γ)η²σ_B²/(1 − ρ)``, ``ρ = (1 − ηm)² + (1 + γ)η²σ_B²``.
The references below are computed from dense float64 matrices, never from the solver's estimates.
"""

import numpy as np
import pytest
from test_lissa import exact, gram_problem, sigma1_sq

import invhvp as ih
from invhvp.bounds import lissa_error_bound
from invhvp.errors import ConvergenceError


def _dense_p_inv(applied, d):
    return applied(np.eye(d))


def _m_spectrum(P_inv, A):
    w, Q = np.linalg.eigh(P_inv)
    R = (Q * np.sqrt(w)) @ Q.T  # P^{-1/2}
    return np.linalg.eigvalsh(R @ A @ R), 1.0 / w.min() / (1.0 / w.max())


def _setting(lam=0.03):
    U, v = gram_problem(21, 400, 12, decay=1.5, tail=0.3)
    n, d = U.shape
    A = U.T @ U / n + lam * np.eye(d)
    pc = ih.NystromPreconditioner(rank=4, rng=0)
    P_inv = _dense_p_inv(pc.build(ih.LowRankPlusIdentity(U), lam), d)
    ev, kappa_p = _m_spectrum(P_inv, A)
    return U, v, A, pc, P_inv, ev[0], ev[-1], kappa_p


def test_preconditioned_second_moment_bound_holds_empirically():
    """Monte Carlo check of the derivation with exact m, L_M, κ_P and σ₁² (mini-batches, B above threshold)."""
    lam = 0.03
    U, v, A, pc, _, m, L_M, kappa_p = _setting(lam)
    assert kappa_p > 5 and L_M / m < 0.2 * np.linalg.cond(A)  # a real preconditioner, not a trivial one
    eta, B, T = 0.1 / L_M, 256, 200
    bound = lissa_error_bound(eta, m, L_M - m, sigma1_sq(U), B, T, weight=kappa_p)
    assert np.isfinite(bound) and bound < 1.0
    xs = exact(U, v, lam)
    errs = []
    for seed in range(100):
        solver = ih.LiSSA(step=eta, batch_size=B, steps=T, preconditioner=pc, rng=seed)
        res = ih.solve(ih.LowRankPlusIdentity(U), v, solver, damping=lam, on_failure="ignore")
        assert res.info["preconditioned"]
        errs.append(np.sum((res.x - xs) ** 2) / np.sum(xs**2))
    rms = float(np.sqrt(np.mean(errs)))
    assert rms <= bound, (rms, bound)


def test_the_weight_of_the_preconditioner_is_needed():
    """Full batch from the worst right-hand side: ‖e_T‖/‖u*‖ = ‖(I − ηP⁻¹A)^T‖ exceeds (1 − ηm)^T.

    The P-norm contracts by (1 − ηm) per step; converting to the Euclidean norm costs sqrt(κ_P).
    """
    lam = 0.03
    U, _, A, pc, P_inv, m, L_M, kappa_p = _setting(lam)
    eta, T = 1.0 / L_M, 1
    N = np.linalg.matrix_power(np.eye(A.shape[0]) - eta * P_inv @ A, T)
    _, sv, Wt = np.linalg.svd(N)
    u_star = Wt[0]  # the direction N stretches most
    solver = ih.LiSSA(step=eta, batch_size="full", steps=T, preconditioner=pc)
    res = ih.solve(ih.LowRankPlusIdentity(U), A @ u_star, solver, damping=lam, on_failure="ignore")
    measured = np.linalg.norm(res.x - u_star) / np.linalg.norm(u_star)
    np.testing.assert_allclose(measured, sv[0], rtol=1e-8)
    assert measured > lissa_error_bound(eta, m, L_M - m, 0.0, None, T) * 1.005  # unweighted: violated
    assert measured <= lissa_error_bound(eta, m, L_M - m, 0.0, None, T, weight=kappa_p)


def test_preconditioned_plan_uses_the_preconditioned_step_bound():
    U, v = gram_problem(22, 3000, 40, decay=2.0, tail=0.2)
    n, d = U.shape
    lam = 1e-5
    G = U.T @ U / n
    op = ih.LowRankPlusIdentity(U)
    res = ih.solve(op, v, ih.LiSSA(rng=0, preconditioner="nystrom", batch_size="full"), damping=lam)
    plan = res.info["plan"]
    assert plan["preconditioned"] and res.info["choice"] == "nystrom"
    P_inv = res.info["preconditioner_info"]
    lmax_A = np.linalg.eigvalsh(G)[-1] + lam
    # the step is far above the plain bound 1/(λ_max(A) + λ): the preconditioner is in the step rule
    assert plan["step"] > 10.0 / lmax_A
    assert plan["step"] <= 1.0 / P_inv["bounds"]["m_upper"] * (1 + 1e-9)
    xs = exact(U, v, lam)
    assert np.linalg.norm(res.x - xs) <= 0.1 * np.linalg.norm(xs)
    plain = ih.solve(
        op, v, ih.LiSSA(rng=0, preconditioner=None, batch_size="full"), damping=lam, on_failure="ignore"
    )
    assert plan["steps"] * 20 < plain.info["plan"]["cost_to_meet_target"] / n  # κ·log → κ_P·log


def test_true_preconditioned_spectrum_respects_the_step():
    """η·λ_max(M) <= 1 for the M the iteration really applies (dense reference)."""
    U, v = gram_problem(23, 500, 30, decay=1.5)
    n, d = U.shape
    lam = 1e-3
    pc = ih.NystromPreconditioner(rank=12, rng=3)
    res = ih.solve(
        ih.LowRankPlusIdentity(U), v, ih.LiSSA(rng=0, preconditioner=pc, batch_size="full"), damping=lam
    )
    applied = pc.build(ih.LowRankPlusIdentity(U), lam)
    ev, kappa_p = _m_spectrum(_dense_p_inv(applied, d), U.T @ U / n + lam * np.eye(d))
    assert res.info["plan"]["step"] * ev[-1] <= 1.0 + 1e-9
    assert res.info["preconditioner_info"]["bounds"]["m_lower"] <= ev[0] * (1 + 1e-9)
    np.testing.assert_allclose(res.info["preconditioner_info"]["bounds"]["p_max"], kappa_p, rtol=1e-6)


def test_automatic_choice_compares_both_plans():
    U, v = gram_problem(24, 3000, 40, decay=2.0, tail=0.2)
    op = ih.LowRankPlusIdentity(U)
    hard = ih.solve(op, v, ih.LiSSA(rng=0), damping=1e-5)
    plans = hard.info["plans"]
    assert hard.info["choice"] == "nystrom" and plans["plain"] is not None and plans["nystrom"] is not None
    assert plans["nystrom_cost_per_column"] < plans["plain_cost_per_column"]
    assert hard.ok and np.linalg.norm(hard.x - exact(U, v, 1e-5)) <= 0.1 * np.linalg.norm(exact(U, v, 1e-5))
    easy = ih.solve(op, v, ih.LiSSA(rng=0), damping=10.0)  # κ ≈ 1: the plain plan is cheap, no sketch
    assert easy.info["choice"] == "plain" and "preconditioner_info" not in easy.info
    assert easy.info["plans"]["nystrom"] is None


# ------------------------------------------------------------------ indefinite operators


def _indefinite(d=50, seed=30, neg=-0.3):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    ev = np.concatenate([np.geomspace(50.0, 0.05, d - 3), [neg, neg / 2, neg / 4]])
    M = (Q * ev) @ Q.T
    return (M + M.T) / 2, ev.min()


@pytest.mark.parametrize("make", ["dense", "matrixfree"])
def test_cg_and_lissa_on_an_indefinite_operator(make):
    M, lmin = _indefinite()
    d = M.shape[0]
    op = (
        ih.Dense(M, psd=False)
        if make == "dense"
        else ih.MatrixFree(lambda x: M @ x, d, np.float64, psd=False, matmat=lambda X: M @ X)
    )
    b = np.random.default_rng(31).standard_normal((d, 2))
    lam = 2.0 * abs(lmin)
    xs = np.linalg.solve(M + lam * np.eye(d), b)
    cg = ih.solve(op, b, ih.CG(rtol=1e-10), damping=lam)
    assert np.linalg.norm(cg.x - xs) <= 1e-8 * np.linalg.norm(xs)
    low = cg.info["lower_end"]
    assert low["certified"] and low["lower"] <= lmin * (1 - 1e-9) and low["ritz_min"] >= lmin - 1e-9
    err = np.linalg.norm(cg.x - xs, axis=0)
    assert np.all(err <= cg.info["error_bound"])  # the certified lower end makes the bound valid
    pcg = ih.solve(op, b, ih.CG(rtol=1e-10, preconditioner="nystrom"), damping=lam)
    assert pcg.ok and pcg.n_iter < cg.n_iter and np.linalg.norm(pcg.x - xs) <= 1e-8 * np.linalg.norm(xs)
    li = ih.solve(op, b, ih.LiSSA(rng=0), damping=lam)
    rel = np.linalg.norm(li.x - xs, axis=0) / np.linalg.norm(xs, axis=0)
    assert li.ok and np.all(rel <= 0.1), rel
    # λ below |λ_min|: A + λI is indefinite -- a typed status, with advice, for both
    for solver in (ih.CG(), ih.CG(preconditioner="nystrom"), ih.LiSSA(rng=0)):
        with pytest.raises(ConvergenceError, match="nonpositive_curvature") as ei:
            ih.solve(op, b, solver, damping=0.5 * abs(lmin))
        res = ei.value.result
        assert res.status is ih.Status.NONPOSITIVE_CURVATURE and "damping >" in res.info["advice"]
        assert np.all(np.isfinite(res.x))


def test_lissa_minibatch_on_an_indefinite_sampled_operator():
    """A "Hessian" that is a mean of indefinite per-sample matrices, with a sampler (mini-batch LiSSA)."""
    rng = np.random.default_rng(32)
    n, d = 4000, 12
    Apos = rng.standard_normal((n, d)) * np.geomspace(1.0, 0.1, d)
    Aneg = 0.15 * rng.standard_normal((n, d))

    def batch_mm(idx):
        P, N = Apos[idx], Aneg[idx]
        return lambda V: (P.T @ (P @ V) - N.T @ (N @ V)) / len(idx)

    full = batch_mm(np.arange(n))
    M = full(np.eye(d))
    lmin = np.linalg.eigvalsh(M)[0]
    assert lmin < 0
    op = ih.MatrixFree(
        lambda x: full(x[:, None])[:, 0],
        d,
        np.float64,
        psd=False,
        matmat=full,
        sampler=lambda B, g: batch_mm(g.integers(0, n, size=B)),
        n_samples=n,
    )
    v = rng.standard_normal(d)
    lam = 3.0 * abs(lmin)
    xs = np.linalg.solve(M + lam * np.eye(d), v)
    res = ih.solve(op, v, ih.LiSSA(rng=1, preconditioner=None), damping=lam)
    assert res.ok and np.linalg.norm(res.x - xs) <= 0.1 * np.linalg.norm(xs)
    assert (
        res.info["lower_end"]["lower"] <= lmin and "Hutchinson" in res.info["estimates"]["sigma1_sq_source"]
    )


def test_weighted_bound_and_plan_are_consistent():
    """The weight enters every path: mini-batch bound as σ → 0, full-batch bound, and the planned T."""
    from invhvp.bounds import plan_lissa

    eta, m, spread, w, T = 0.1, 1.0, 8.0, 50.0, 30
    full = lissa_error_bound(eta, m, spread, 0.0, None, T, weight=w)
    assert full == pytest.approx(np.sqrt(w) * (1 - eta * m) ** T, rel=1e-12)
    tiny = lissa_error_bound(eta, m, spread, 1e-12, 10, T, weight=w)
    assert tiny == pytest.approx(full, rel=1e-6)
    p = plan_lissa(spread, m, 0.0, 0.1, n_samples=100, batch_size="full", weight=w)
    rho = (1 - p.step * m) ** 2
    assert p.steps == int(np.ceil(np.log(0.01 / w) / np.log(rho)))
    assert p.predicted_error <= 0.1 < lissa_error_bound(p.step, m, spread, 0.0, None, p.steps - 1, weight=w)
