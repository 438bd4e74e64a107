"""Influence matrices against a dense numpy reference (docs/theory.md §1 sign)."""

from dataclasses import dataclass

import numpy as np
import pytest
from cases import needs_torch, torch

import invhvp as ih
from invhvp.errors import DampingError, DTypeError, InputError, NonFiniteError, ShapeError
from invhvp.solvers.base import Outcome, Solver
from invhvp.solvers.inverse import Inverse


def problem(seed=0, n=9, m=4, dims=(5, 13)):
    rng = np.random.default_rng(seed)
    train = [rng.standard_normal((n, d)) * (1 + i) for i, d in enumerate(dims)]
    test = [rng.standard_normal((m, d)) for d in dims]
    return train, test


def dense_inverse(U, lam):
    n, d = U.shape
    return np.linalg.inv(U.T @ U / n + lam * np.eye(d))


def datainf_dense(U, lam):
    n, d = U.shape
    return sum(np.linalg.inv(np.outer(g, g) + lam * np.eye(d)) for g in U) / n


def reference(train, test, lams, inv=dense_inverse):
    return -sum(v @ inv(g, lam) @ g.T for g, v, lam in zip(train, test, lams))


@dataclass(frozen=True)
class DenseSolver(Solver):
    """A user-defined solver: its inverse has no closed forms, so influence goes through solve()."""

    name = "dense-test"

    def _factor(self, counted, damping, rng=None):
        return DenseInverse(self, counted, damping, {"method": "dense-test"})


class DenseInverse(Inverse):
    kind = "iterative"  # the generic quadratic forms check every solve's residual

    def _apply(self, B):
        op = self.operator
        A = op.to_dense() + self.damping * np.eye(op.size)
        return Outcome(x=np.linalg.solve(A, B))


SOLVERS = {
    "exact": (ih.Exact(), dense_inverse, 1e-10),
    "exact-dense": (ih.Exact(woodbury=False), dense_inverse, 1e-10),
    "cg": (ih.CG(rtol=1e-12), dense_inverse, 1e-8),
    "custom": (DenseSolver(), dense_inverse, 1e-10),
    "datainf": (ih.DataInf(), datainf_dense, 1e-10),
    "identity": (ih.Identity(), lambda U, lam: np.eye(U.shape[1]), 1e-13),
}


@pytest.mark.parametrize("name", list(SOLVERS))
def test_influence_matrix_matches_dense(name):
    solver, inv, tol = SOLVERS[name]
    train, test = problem()
    lams = ih.default_damping(train)
    ref = reference(train, test, lams, inv)
    got = ih.influence_matrix(train, test, solver, damping=lams)
    assert got.shape == (4, 9)
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())
    self_ref = np.diag(reference(train, train, lams, inv))
    np.testing.assert_allclose(
        ih.self_influence(train, solver, damping=lams), self_ref, rtol=tol, atol=tol * np.abs(self_ref).max()
    )
    np.testing.assert_allclose(
        ih.average_influence(train, test, solver, damping=lams), ref.mean(axis=0), rtol=1e-8, atol=1e-12
    )


def test_sign_convention():
    """A training point whose gradient opposes the test gradient is harmful: positive."""
    rng = np.random.default_rng(1)
    U = rng.standard_normal((6, 8))
    test = np.stack([-U[0], U[0]])
    for solver in (ih.Exact(), ih.DataInf(), ih.Identity()):
        infl = ih.influence_matrix(U, test, solver, damping=0.5)
        assert infl[0, 0] > 0 and infl[1, 0] < 0
        assert np.all(ih.self_influence(U, solver, damping=0.5) < 0)


def test_sides_chunks_and_default_damping():
    train, test = problem(seed=2, n=7, m=11)
    lams = ih.default_damping(train, factor=0.3)
    ref = reference(train, test, lams)
    cg = ih.CG(rtol=1e-12)
    for side in ("test", "train", "auto"):
        got = ih.influence_matrix(train, test, cg, damping=lams, side=side, chunk_size=3)
        np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ih.influence_matrix(train, test, damping_factor=0.3), ref, rtol=1e-10)
    np.testing.assert_allclose(
        ih.influence_matrix(train, test, ih.Exact(), damping=lams, chunk_size=2), ref, rtol=1e-10
    )
    d_ref = reference(train, test, lams, datainf_dense)
    np.testing.assert_allclose(
        ih.influence_matrix(train, test, ih.DataInf(chunk_size=2), damping=lams), d_ref, rtol=1e-10
    )
    np.testing.assert_allclose(
        ih.self_influence(train, ih.DataInf(), damping=lams, chunk_size=2),
        np.diag(reference(train, train, lams, datainf_dense)),
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        ih.self_influence(train, cg, damping=lams, chunk_size=2),
        np.diag(reference(train, train, lams)),
        rtol=1e-8,
    )


@pytest.mark.parametrize("route", ["gram", "products"])
def test_datainf_routes_agree(route):
    train, test = problem(seed=3, n=8, m=5, dims=(20,))
    lam = 0.4
    out = ih.influence_matrix(train, test, ih.DataInf(route=route), damping=lam, chunk_size=2)
    np.testing.assert_allclose(out, reference(train, test, [lam], datainf_dense), rtol=1e-10)


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("solver", [ih.DataInf(), ih.Exact(), ih.Identity()], ids=lambda s: s.name)
def test_torch_and_dtypes(dtype, solver):
    train, test = problem(seed=4)
    lams = ih.default_damping(train)
    inv = datainf_dense if isinstance(solver, ih.DataInf) else dense_inverse
    if isinstance(solver, ih.Identity):
        inv = lambda U, lam: np.eye(U.shape[1])  # noqa: E731
    ref = reference(train, test, lams, inv)
    tol = 2e-4 if dtype == "float32" else 1e-9
    for conv in (lambda a: a.astype(dtype), lambda a: torch.tensor(a, dtype=getattr(torch, dtype))):
        tr, te = [conv(a) for a in train], [conv(a) for a in test]
        got = ih.influence_matrix(tr, te, solver, damping=lams)
        assert type(got) is type(tr[0]) and got.dtype == tr[0].dtype
        got_np = got.numpy() if isinstance(got, torch.Tensor) else got
        np.testing.assert_allclose(got_np, ref, rtol=tol, atol=tol * np.abs(ref).max())
        s = ih.self_influence(tr, solver, damping=lams)
        s_np = s.numpy() if isinstance(s, torch.Tensor) else s
        s_ref = np.diag(reference(train, train, lams, inv))
        np.testing.assert_allclose(s_np, s_ref, rtol=tol, atol=tol * np.abs(s_ref).max())


def test_single_array_input():
    train, test = problem(seed=5, dims=(6,))
    got = ih.influence_matrix(train[0], test[0], ih.Exact(), damping=0.2)
    np.testing.assert_allclose(got, reference(train, test, [0.2]), rtol=1e-10)


@needs_torch
def test_input_errors():
    train, test = problem()
    with pytest.raises(ShapeError, match="test_grads"):
        ih.influence_matrix(train, test[:1])
    with pytest.raises(ShapeError, match=r"test_grads\[1\]"):
        ih.influence_matrix(train, [test[0], test[1][:, :3]])
    with pytest.raises(ShapeError, match=r"train_grads\[1\]"):
        ih.influence_matrix([train[0], train[1][:4]], test)
    with pytest.raises(DTypeError, match=r"test_grads\[0\]"):
        ih.influence_matrix(train, [torch.tensor(test[0]), test[1]])
    with pytest.raises(DTypeError, match=r"train_grads\[1\]"):
        ih.influence_matrix([train[0], train[1].astype(np.float32)], test)
    with pytest.raises(DampingError, match="one value per block"):
        ih.influence_matrix(train, test, damping=[1.0])
    with pytest.raises(DampingError, match="DataInf needs .* > 0"):
        ih.influence_matrix(train, test, ih.DataInf(), damping=0.0)
    with pytest.raises(DampingError):
        ih.self_influence(train, damping=-1.0)
    with pytest.raises(InputError, match="side"):
        ih.influence_matrix(train, test, side="both")
    with pytest.raises(InputError, match="solver"):
        ih.influence_matrix(train, test, solver="datainf")
    with pytest.raises(InputError, match="chunk_size"):
        ih.self_influence(train, chunk_size=0)
    bad = train[0].copy()
    bad[0, 0] = np.nan
    with pytest.raises(NonFiniteError, match=r"train_grads\[0\]"):
        ih.influence_matrix([bad, train[1]], test)
    with pytest.raises(ShapeError, match="train_grads"):
        ih.self_influence(np.ones(5))
    # missing test gradients and non-numeric damping: typed errors naming the argument
    with pytest.raises(InputError, match="test_grads"):
        ih.influence_matrix(train, None)
    with pytest.raises(InputError, match="test_grads"):
        ih.average_influence(train, None)
    with pytest.raises(DampingError, match="damping"):
        ih.influence_matrix(train, test, damping=["a", "b"])


@pytest.mark.skipif(not hasattr(ih, "LiSSA"), reason="LiSSA not available")
def test_lissa_through_generic_path():
    """LiSSA plugs in through invhvp.solve like any Solver; it meets its own accuracy target."""
    train, test = problem(seed=6, n=200, m=3, dims=(6, 10))
    lams = ih.default_damping(train, factor=1.0)
    ref = reference(train, test, lams)
    got = ih.influence_matrix(train, test, ih.LiSSA(rng=0, rtol=0.05), damping=lams)
    assert np.linalg.norm(got - ref) <= 0.2 * np.linalg.norm(ref)
    avg = ih.average_influence(train, test, ih.LiSSA(rng=0, rtol=0.05), damping=lams)
    assert np.linalg.norm(avg - ref.mean(axis=0)) <= 0.2 * np.linalg.norm(ref.mean(axis=0))


def test_return_results_reports_each_generic_solve():
    rng = np.random.default_rng(7)
    U = [rng.standard_normal((12, 30)), rng.standard_normal((12, 20))]
    T = [rng.standard_normal((3, 30)), rng.standard_normal((3, 20))]
    ref = ih.influence_matrix(U, T, ih.Exact(), damping=0.3)
    # closed forms: no solve, one record per block with the setup's status (no residual)
    out, reports = ih.influence_matrix(U, T, ih.Exact(), damping=0.3, return_results=True)
    np.testing.assert_allclose(out, ref)
    assert [r.info["closed_form"] for r in reports] == ["quad", "quad"]
    assert all(r.ok and r.residual_norm is None and r.info["method"] == "woodbury" for r in reports)
    # a converged CG: one report per chunk, successful, solution dropped
    out, reports = ih.influence_matrix(U, T, ih.CG(rtol=1e-12), damping=0.3, side="test", return_results=True)
    np.testing.assert_allclose(out, ref, rtol=1e-8, atol=1e-10)
    # one report per block (CG runs per block) per chunk
    assert len(reports) == 2 and all(r.ok and r.x is None and r.n_matvec > 0 for r in reports)
    # a starved CG: the status comes back instead of a warning
    out, reports = ih.influence_matrix(
        U, T, ih.CG(maxiter=1), damping=0.3, on_failure="ignore", return_results=True
    )
    assert [r.status for r in reports] == [ih.Status.MAX_ITER] * 2
    assert np.max(np.abs(out - ref)) > 1e-3


def test_exact_quad_diag_with_rows_uses_one_triangular_solve_and_matches_dense():
    rng = np.random.default_rng(21)
    M = rng.standard_normal((30, 12))
    A = M.T @ M / 30
    G = rng.standard_normal((7, 12))
    inv = ih.inverse(ih.Dense(A), ih.Exact(), damping=0.2)
    ref = np.einsum("ij,jk,ik->i", G, np.linalg.inv(A + 0.2 * np.eye(12)), G)
    np.testing.assert_allclose(inv.quad_diag(G, chunk_size=3), ref, rtol=1e-10)
