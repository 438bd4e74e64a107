"""Solver contract over catalogue × solvers × backends × dtypes, and CG specifics."""

import warnings

import numpy as np
import pytest
from cases import (
    BACKEND_PARAMS,
    CASE_PARAMS,
    DTYPES,
    Backend,
    assert_same_kind,
    eps,
    host64,
    needs_torch,
    torch,
)

import invhvp as ih
from invhvp import Status
from invhvp.errors import ConvergenceError, OperatorTooLargeError, UnsupportedOperatorError

DAMPING = 0.3
CG_RTOL = {"float32": 1e-4, "float64": 1e-10}

# name -> factory(built, backend, dtype) -> solver or None (automatic choice)
SOLVERS = {
    "exact": lambda b, bk, dt: ih.Exact(),
    "exact-capped": lambda b, bk, dt: ih.Exact(max_dense_size=20),
    "cg": lambda b, bk, dt: ih.CG(rtol=CG_RTOL[dt]),
    "cg-jacobi": lambda b, bk, dt: ih.CG(rtol=CG_RTOL[dt], preconditioner="jacobi"),
    "cg-operator-prec": lambda b, bk, dt: ih.CG(
        rtol=CG_RTOL[dt], preconditioner=ih.Dense(bk.asarray(np.diag(1.0 / (np.diag(b.ref) + DAMPING)), dt))
    ),
    "datainf": lambda b, bk, dt: ih.DataInf(),
    "lissa": lambda b, bk, dt: ih.LiSSA(rng=0),
    "lissa-nystrom": lambda b, bk, dt: ih.LiSSA(rng=0, preconditioner="nystrom"),
    "cg-nystrom": lambda b, bk, dt: ih.CG(rtol=CG_RTOL[dt], preconditioner="nystrom"),
    "cg-nystrom-r3": lambda b, bk, dt: ih.CG(rtol=CG_RTOL[dt], preconditioner=ih.NystromPreconditioner(rank=3)),
    "nystrom": lambda b, bk, dt: ih.Nystrom(rank=64),  # covers every catalogue block: exact
    "nystrom-r4": lambda b, bk, dt: ih.Nystrom(rank=4),  # an approximation that reports its error
    "identity": lambda b, bk, dt: ih.Identity(),
    "auto": lambda b, bk, dt: None,
}


def _leaves(op):
    return [x for b in op.blocks for x in _leaves(b)] if isinstance(op, ih.BlockDiagonal) else [op]


def expectation(built, solver_name):
    """The expectation table: None (must succeed, contract checked) or the error it must raise."""
    if solver_name == "exact-capped" and built.matrix_free and built.op.size > 20:
        return OperatorTooLargeError
    if solver_name == "cg-jacobi" and not built.has_diagonal:
        return UnsupportedOperatorError
    if solver_name == "datainf" and not all(isinstance(x, ih.LowRankPlusIdentity) for x in _leaves(built.op)):
        return UnsupportedOperatorError
    return None


def _reference_solve(ref, B, damping_diag):
    return np.linalg.solve(ref + np.diag(damping_diag), B)


def _kappa(ref, damping_diag):
    ev = np.linalg.eigvalsh(ref + np.diag(damping_diag))
    return ev[-1] / ev[0], ev[0]


def _kind(res):
    """The leaf method(s) that ran ("cholesky", "woodbury", "cg", ...)."""
    info = res.info
    while info.get("method") == "block-diagonal":
        info = info["blocks"][0]
    return info["method"]


def _check_solution(res, rhs, built, damping_diag, dt, solver):
    """The contract every successful solve must meet, against an independent float64 reference."""
    ref = built.ref
    d = ref.shape[0]
    B64 = host64(rhs).reshape(d, -1)
    X64 = host64(res.x).reshape(d, -1)
    Xstar = _reference_solve(ref, B64, damping_diag)
    kappa, lam_min = _kappa(ref, damping_diag)
    assert_same_kind(res.x, rhs)
    assert res.status is Status.SUCCESS and res.ok, res.info.get("advice")
    rn = host64(res.residual_norm)
    assert rn.shape == (() if rhs.ndim == 1 else (rhs.shape[1],))
    # the reported residual is the true one
    R64 = B64 - (ref + np.diag(damping_diag)) @ X64
    true_rn = np.linalg.norm(R64, axis=0)
    scale = np.linalg.norm(ref + np.diag(damping_diag), 2) * np.linalg.norm(X64, axis=0) + np.linalg.norm(
        B64, axis=0
    )
    np.testing.assert_allclose(rn.reshape(-1), true_rn, rtol=0, atol=float(20 * eps(dt) * np.sqrt(d) * scale.max()))
    err = np.linalg.norm(X64 - Xstar, axis=0)
    rel = err / np.linalg.norm(Xstar, axis=0)
    # a reported error bound holds (the operators in the catalogue are PSD)
    bound = np.asarray(res.info["error_bound"]).reshape(-1)
    assert np.all(err <= bound * (1 + 1e-6)), (err, bound)
    method = _kind(res)
    bnorm = np.linalg.norm(B64, axis=0)
    if method == "cg":
        rtol = solver.rtol if solver is not None else 1e-5
        # SUCCESS means the *true* residual met the tolerance (up to the rounding of this check)
        assert np.all(true_rn <= rtol * bnorm + 20 * eps(dt) * np.sqrt(d) * scale)
    elif method == "lissa":
        assert np.all(rel <= 3 * solver.rtol), rel  # the plan bounds the RMS error by rtol
    elif method == "nystrom":
        assert res.n_matvec == 0 and res.n_iter == 0  # applying the low-rank inverse costs no product
        energy = _leaf_info(res, "energy_bound")
        if energy is not None:  # the a-posteriori bound sqrt(rᵀ(Ĥ + (μ−ν)I)⁻¹r/μ) holds
            assert np.all(err <= energy * (1 + 1e-6) + 100 * eps(dt) * np.linalg.norm(Xstar, axis=0)), (err, energy)
        if solver.rank >= d:  # the sketch covers the spectrum: exact up to rounding
            assert np.all(rel <= 1000 * kappa * eps(dt)), (rel, kappa)
    elif method in ("datainf", "identity"):
        assert res.n_matvec == 0 and res.n_iter == 0
        if method == "identity":
            np.testing.assert_array_equal(X64, B64)
        else:
            assert np.all(err <= np.asarray(res.info["approximation_bound"]).reshape(-1) * (1 + 1e-6))
    else:  # exact: Cholesky / Woodbury / materialized
        assert method in ("cholesky", "woodbury", "materialized-cholesky"), method
        est = _leaf_info(res, "error_estimate")
        assert np.all(rel <= 100 * kappa * eps(dt)), (rel, kappa)
        if est is not None:
            assert np.all(rel <= est * (1 + 1e-6)), (rel, est)  # the estimate bounds the true error
        assert res.n_iter == 0 and res.n_matvec == 0
        assert res.info["setup_matvec"] >= (d if built.matrix_free else 0)


def _leaf_info(res, key):
    return res.info.get(key) if res.info.get("method") != "block-diagonal" else None


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("bk", BACKEND_PARAMS)
@pytest.mark.parametrize("solver_name", list(SOLVERS))
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_solver_contract(case, solver_name, bk, dt):
    built = case(bk, dt)
    solver = SOLVERS[solver_name](built, bk, dt)
    d = built.ref.shape[0]
    rng = np.random.default_rng(11)
    rhs2 = bk.asarray(rng.standard_normal((d, 3)), dt)
    rhs1 = bk.asarray(rng.standard_normal(d), dt)
    expected_error = expectation(built, solver_name)
    damping_diag = np.full(d, DAMPING)
    for rhs in (rhs1, rhs2):
        if expected_error is not None:
            with pytest.raises(expected_error):
                ih.solve(built.op, rhs, solver, damping=DAMPING)
            continue
        res = ih.solve(built.op, rhs, solver, damping=DAMPING)
        if solver is None:
            assert ("Exact" if not built.matrix_free else "CG") in res.info["auto"]
        _check_solution(res, rhs, built, damping_diag, dt, solver)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("bk", BACKEND_PARAMS)
@pytest.mark.parametrize("solver_name", ["exact", "cg", "cg-jacobi", "lissa"])
def test_block_damping_per_block(solver_name, bk, dt):
    from cases import CASES

    built = next(c for c in CASES if c.name == "block-nested")(bk, dt)
    damping = (0.1, 0.7, 2.0)
    damping_diag = np.repeat(damping, built.blocks)
    solver = SOLVERS[solver_name](built, bk, dt)
    rhs = bk.asarray(np.random.default_rng(3).standard_normal((built.ref.shape[0], 2)), dt)
    res = ih.solve(built.op, rhs, solver, damping=damping)
    _check_solution(res, rhs, built, damping_diag, dt, solver)
    # a per-block damping differs from a scalar one: the test above could not pass by accident
    scalar = ih.solve(built.op, rhs, solver, damping=0.7)
    assert np.max(np.abs(host64(scalar.x) - host64(res.x))) > 1e-2


# ---------------------------------------------------------------- CG specifics

NP = Backend("numpy")


def _spd(d=40, seed=0, lo=1.0, hi=50.0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    M = (Q * np.geomspace(lo, hi, d)) @ Q.T
    return (M + M.T) / 2


def test_cg_columns_converge_independently():
    M = _spd()
    rng = np.random.default_rng(1)
    B = rng.standard_normal((40, 4))
    B[:, 1] = 0.0  # zero column: solved before the first iteration
    B[:, 3] *= 1e-3  # scaled column: rtol is relative, needs the same iterations as unscaled
    Xstar = np.linalg.solve(M + 0.5 * np.eye(40), B)
    X0 = np.zeros_like(B)
    X0[:, 2] = Xstar[:, 2]  # already solved
    cg = ih.CG(rtol=1e-10, x0=X0, record_history=True)
    res = ih.solve(ih.Dense(M), B, cg, damping=0.5)
    its = res.info["iterations_per_column"]
    assert its[1] == 0 and its[2] == 0 and its[0] > 0
    assert res.info["column_status"] == ["success"] * 4
    np.testing.assert_allclose(res.x, Xstar, rtol=1e-8, atol=1e-12)
    assert np.all(res.x[:, 1] == 0.0)
    # k for the initial residual with x0, then one per active column per iteration
    assert res.n_matvec == 4 + int(its.sum())
    assert res.n_iter == int(its.max())
    h = res.info["residual_history"]
    assert h.shape == (res.n_iter + 1, 4)
    np.testing.assert_allclose(
        h[0], np.linalg.norm(B - (M + 0.5 * np.eye(40)) @ X0, axis=0), rtol=1e-12, atol=1e-13
    )
    assert h[-1, 0] <= 1e-10 * np.linalg.norm(B[:, 0])


def test_cg_one_block_equals_separate_solves():
    M = _spd(seed=3)
    B = np.random.default_rng(2).standard_normal((40, 3))
    B[:, 1] *= 1e-4
    together = ih.solve(ih.Dense(M), B, ih.CG(rtol=1e-9), damping=0.2)
    for j in range(3):
        alone = ih.solve(ih.Dense(M), B[:, j], ih.CG(rtol=1e-9), damping=0.2)
        # same recurrence per column (up to BLAS rounding of a block vs a single product)
        # (a rounding difference can move the crossing of tol/2 by one step, and a restart by one more)
        assert abs(int(together.info["iterations_per_column"][j]) - alone.n_iter) <= 2
        np.testing.assert_allclose(together.x[:, j], alone.x, rtol=1e-7, atol=1e-7 * np.abs(alone.x).max())


def test_cg_callback_called_each_iteration():
    seen = []
    res = ih.solve(
        ih.Dense(_spd()), np.ones(40), ih.CG(rtol=1e-8, callback=lambda X: seen.append(X.copy())), damping=0.1
    )
    assert len(seen) == res.n_iter > 1
    assert seen[-1].shape == (40, 1)
    np.testing.assert_allclose(seen[-1][:, 0], res.x)


def _indefinite():
    M = np.diag([3.0, 1.0, -2.0, 0.5])
    return ih.Dense(M, psd=False), np.ones(4)


def test_cg_nonpositive_curvature_raises_by_default():
    op, b = _indefinite()
    with pytest.raises(ConvergenceError, match="nonpositive_curvature") as ei:
        ih.solve(op, b, ih.CG(), damping=0.1)
    assert ei.value.result.status is Status.NONPOSITIVE_CURVATURE
    assert "damping" in ei.value.result.info["advice"]
    assert np.all(np.isfinite(ei.value.result.x))
    # the failing column keeps its last iterate: no step along the bad direction
    seen = []
    res = ih.solve(op, b, ih.CG(callback=lambda X: seen.append(X.copy())), damping=0.1, on_failure="ignore")
    assert len(seen) == res.n_iter >= 2
    np.testing.assert_array_equal(seen[-1], seen[-2])
    np.testing.assert_array_equal(res.x, seen[-1][:, 0])


def test_cg_nonpositive_curvature_warn_and_ignore():
    op, b = _indefinite()
    with pytest.warns(RuntimeWarning, match="nonpositive_curvature"):
        res = ih.solve(op, b, ih.CG(), damping=0.1, on_failure="warn")
    assert res.status is Status.NONPOSITIVE_CURVATURE and not res.ok
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = ih.solve(op, b, ih.CG(), damping=0.1, on_failure="ignore")
    assert res.status is Status.NONPOSITIVE_CURVATURE
    assert "error_bound" not in res.info  # no bound for a non-PSD operator
    # enough damping makes the same operator positive definite
    ok = ih.solve(op, b, ih.CG(rtol=1e-12), damping=2.5)
    np.testing.assert_allclose(ok.x, b / (np.array([3.0, 1.0, -2.0, 0.5]) + 2.5), rtol=1e-10)


def test_cg_max_iter_reported():
    M = _spd(d=60, hi=1e4)
    with pytest.raises(ConvergenceError, match="max_iter") as ei:
        ih.solve(ih.Dense(M), np.ones((60, 2)), ih.CG(rtol=1e-12, maxiter=3), damping=1e-3)
    res = ei.value.result
    assert res.status is Status.MAX_ITER and res.n_iter == 3
    assert res.info["column_status"] == ["max_iter", "max_iter"]
    assert res.n_matvec == 6
    assert "maxiter" in res.info["advice"]


@pytest.mark.parametrize("bk", BACKEND_PARAMS)
def test_cg_nan_from_operator_is_nonfinite(bk):
    dt = "float64"
    op = ih.MatrixFree(lambda v: v * float("nan"), 5, bk.dtype(dt), device=bk.device)
    with pytest.raises(ConvergenceError, match="nonfinite") as ei:
        ih.solve(op, bk.asarray(np.ones(5), dt), ih.CG(), damping=0.1)
    assert ei.value.result.status is Status.NONFINITE
    res = ih.solve(op, bk.asarray(np.ones(5), dt), ih.CG(), damping=0.1, on_failure="ignore")
    assert res.status is Status.NONFINITE


@needs_torch
def test_exact_nan_from_matrix_free_never_silent():
    op = ih.MatrixFree(lambda v: v * float("nan"), 5, np.float64)
    with pytest.raises(ih.errors.NonFiniteError):
        ih.solve(op, np.ones(5), ih.Exact(), damping=0.1)
    op_t = ih.MatrixFree(lambda v: v * float("nan"), 5, torch.float64)
    with pytest.raises(ih.errors.NonFiniteError):
        ih.solve(op_t, torch.ones(5, dtype=torch.float64), ih.Exact(), damping=0.1)


def test_auto_choice_and_reason():
    U = np.random.default_rng(0).standard_normal((5, 50))
    res = ih.solve(ih.LowRankPlusIdentity(U), np.ones(50), damping=0.1)
    assert res.info["method"] == "woodbury" and "Exact" in res.info["auto"]
    A = ih.Dense(_spd())
    assert isinstance(ih.choose_solver(A)[0], ih.Exact)
    mf = ih.MatrixFree(lambda v: 2 * v, 10_000, np.float64)
    assert isinstance(ih.choose_solver(mf)[0], ih.CG)


def test_error_bound_reported_and_valid():
    M = _spd()
    b = np.random.default_rng(4).standard_normal(40)
    res = ih.solve(ih.Dense(M), b, ih.CG(rtol=1e-3), damping=0.5)
    xstar = np.linalg.solve(M + 0.5 * np.eye(40), b)
    bound = res.info["error_bound"]
    np.testing.assert_allclose(bound, res.residual_norm / 0.5)
    assert np.linalg.norm(res.x - xstar) <= bound


def test_cg_per_block_matches_joint_and_needs_fewer_iterations():
    rng = np.random.default_rng(5)
    # three low-rank blocks with very different spectra: joint CG must resolve all of them at once
    blocks = [ih.LowRankPlusIdentity(s * rng.standard_normal((6, 30))) for s in (0.1, 1.0, 30.0)]
    op = ih.BlockDiagonal(blocks)
    B = rng.standard_normal((90, 2))
    ref = np.zeros((90, 90))
    for i, b in enumerate(blocks):
        ref[30 * i : 30 * (i + 1), 30 * i : 30 * (i + 1)] = b.factor.T @ b.factor / 6
    Xstar = np.linalg.solve(ref + 0.05 * np.eye(90), B)
    per = ih.solve(op, B, ih.CG(rtol=1e-10), damping=0.05)
    joint = ih.solve(op, B, ih.CG(rtol=1e-10, per_block=False), damping=0.05)
    assert per.info["method"] == "block-diagonal" and joint.info["method"] == "cg"
    assert [b["method"] for b in per.info["blocks"]] == ["cg"] * 3
    np.testing.assert_allclose(per.x, Xstar, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(joint.x, Xstar, rtol=1e-7, atol=1e-9)
    # each block has rank 6: exact arithmetic needs <= 7 iterations per block, joint CG up to 19
    assert max(per.info["blocks"][i]["iterations_per_column"].max() for i in range(3)) <= 8
    assert per.n_iter < joint.n_iter
