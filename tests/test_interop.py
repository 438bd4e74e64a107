"""scipy in and out, torch.func operators (the interop module) against independent references."""

import numpy as np
import pytest
import scipy.sparse as sp
from cases import needs_torch, torch
from scipy.sparse.linalg import LinearOperator, aslinearoperator
from scipy.sparse.linalg import cg as scipy_cg

import invhvp as ih
from invhvp.errors import DTypeError, NotSymmetricError, ShapeError


def spd(d, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (Q * np.geomspace(1.0, 50.0, d)) @ Q.T


def test_solve_accepts_linear_operators_sparse_matrices_and_arrays():
    M = spd(30)
    b = np.random.default_rng(1).standard_normal(30)
    xs = np.linalg.solve(M + 0.5 * np.eye(30), b)
    for A in (aslinearoperator(M), sp.csr_matrix(M), sp.csr_array(M), M):
        res = ih.solve(A, b, damping=0.5)  # automatic choice: CG for wrapped scipy objects, Exact for arrays
        assert res.ok and np.linalg.norm(res.x - xs) <= res.info["error_bound"]
        assert res.info["method"] == ("cholesky" if isinstance(A, np.ndarray) else "cg")
    # a genuinely sparse tridiagonal matrix keeps its sparsity and its diagonal (Jacobi)
    T = sp.diags([-1.0, 2.5, -1.0], [-1, 0, 1], shape=(200, 200)).tocsr()
    res = ih.solve(T, np.ones(200), ih.CG(rtol=1e-12, preconditioner="jacobi"), damping=0.1)
    np.testing.assert_allclose(res.x, np.linalg.solve(T.toarray() + 0.1 * np.eye(200), np.ones(200)), rtol=1e-9)
    inv = ih.inverse(aslinearoperator(M), ih.Exact(), damping=0.5)
    np.testing.assert_allclose(inv @ b, xs, rtol=1e-10)


def test_from_scipy_refuses_what_it_cannot_use():
    with pytest.raises(NotSymmetricError):
        ih.solve(sp.csr_matrix(np.triu(np.ones((3, 3)))), np.ones(3), damping=0.1)
    with pytest.raises(ShapeError):
        ih.interop.from_scipy(sp.csr_matrix(np.ones((3, 4))))
    with pytest.raises(DTypeError):
        ih.interop.from_scipy(sp.csr_matrix(np.eye(3, dtype=np.int64)))
    with pytest.raises(DTypeError, match="operator"):
        ih.solve("matrix", np.ones(3))
    lo = LinearOperator((3, 3), matvec=lambda v: v, dtype=np.float64)
    assert ih.interop.from_scipy(lo).size == 3


def test_to_scipy_inverse_equals_inverse_solve():
    rng = np.random.default_rng(2)
    U = [rng.standard_normal((20, 40)), rng.standard_normal((20, 15))]
    op = ih.BlockDiagonal([ih.LowRankPlusIdentity(u) for u in U])
    for solver in (ih.Exact(), ih.DataInf(), ih.CG(rtol=1e-12)):
        inv = ih.inverse(op, solver, damping=(0.3, 1.2))
        L = ih.interop.to_scipy(inv)
        v = rng.standard_normal(55)
        np.testing.assert_allclose(L @ v, inv.solve(v).x, rtol=1e-12, atol=1e-14)
        V = rng.standard_normal((55, 3))
        np.testing.assert_allclose(L.matmat(V), inv.solve(V).x, rtol=1e-12, atol=1e-14)


def test_to_scipy_operator_is_the_damped_operator():
    M = spd(25, seed=3)
    A = ih.interop.to_scipy(ih.Dense(M), damping=0.7)
    b = np.random.default_rng(4).standard_normal(25)
    np.testing.assert_allclose(A @ b, (M + 0.7 * np.eye(25)) @ b, rtol=1e-13)
    x, info = scipy_cg(A, b, rtol=1e-12, atol=0.0)
    assert info == 0
    np.testing.assert_allclose(x, ih.solve(ih.Dense(M), b, damping=0.7).x, rtol=1e-8)


@needs_torch
def test_to_scipy_refuses_torch_operators():
    with pytest.raises(DTypeError, match="numpy"):
        ih.interop.to_scipy(ih.Dense(torch.eye(2, dtype=torch.float64)))


@needs_torch
def test_hvp_and_ggn_from_loss_match_autograd():
    torch.manual_seed(0)
    X = torch.randn(12, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    params = {"w": torch.randn(4, 3, dtype=torch.float64) * 0.3, "b": torch.zeros(3, dtype=torch.float64)}

    def logits(p):
        return X @ p["w"] + p["b"]

    def ce(z):
        return torch.nn.functional.cross_entropy(z, y)

    flat = torch.cat([params["w"].reshape(-1), params["b"]])

    def flat_loss(x):
        return ce(X @ x[:12].reshape(4, 3) + x[12:])

    H = torch.autograd.functional.hessian(flat_loss, flat)
    Hop = ih.interop.hvp_from_loss(lambda p: ce(logits(p)), params)
    V = torch.randn(15, 4, dtype=torch.float64)
    torch.testing.assert_close(Hop.matmat(V), H @ V)
    torch.testing.assert_close(Hop.matvec(V[:, 0]), H @ V[:, 0])
    # GGN of a linear model under cross-entropy equals its Hessian
    G = ih.interop.ggn_from_loss(logits, ce, params)
    torch.testing.assert_close(G.matmat(V), H @ V)
    res = ih.solve(G, V[:, 0], ih.CG(rtol=1e-10), damping=0.1)
    torch.testing.assert_close(res.x, torch.linalg.solve(H + 0.1 * torch.eye(15, dtype=torch.float64), V[:, 0]))
