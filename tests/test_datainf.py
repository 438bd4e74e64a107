"""DataInf solver, Identity baseline and the default damping rule."""

import numpy as np
import pytest
from cases import needs_torch, torch
from hypothesis import given
from hypothesis import strategies as st

import invhvp as ih
from invhvp.errors import DampingError, InputError, NonFiniteError, UnsupportedOperatorError


def sample_loop_reference(U, B, lam, scale=None):
    """mean_i (g̃_i g̃_iᵀ + λI)⁻¹ B by an explicit loop of dense solves (float64)."""
    U = np.asarray(U, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    n, d = U.shape
    s = 1.0 / n if scale is None else scale
    out = np.zeros_like(B)
    for i in range(n):
        g = np.sqrt(n * s) * U[i]
        out += np.linalg.solve(np.outer(g, g) + lam * np.eye(d), B)
    return out / n


def rand(rng, *shape):
    return rng.standard_normal(shape)


@pytest.mark.parametrize("n,d,k", [(7, 5, 3), (4, 30, 2), (1, 6, 1), (20, 3, 4)])
def test_matches_per_sample_loop(n, d, k):
    rng = np.random.default_rng(n * 100 + d)
    U, B = rand(rng, n, d), rand(rng, d, k)
    res = ih.solve(ih.LowRankPlusIdentity(U), B, ih.DataInf(), damping=0.3)
    np.testing.assert_allclose(res.x, sample_loop_reference(U, B, 0.3), rtol=1e-10, atol=1e-12)
    assert res.status is ih.Status.SUCCESS and res.n_matvec == 0


def test_general_form_shift_and_scale():
    rng = np.random.default_rng(1)
    U, b = rand(rng, 6, 9), rand(rng, 9)
    op = ih.LowRankPlusIdentity(U, shift=0.2, scale=0.05)
    res = ih.solve(op, b, ih.DataInf(), damping=0.1)
    ref = sample_loop_reference(U, b[:, None], 0.3, scale=0.05)[:, 0]
    np.testing.assert_allclose(res.x, ref, rtol=1e-10)
    assert res.info["damping_total"] == pytest.approx(0.3)
    # shift alone is enough damping
    res0 = ih.solve(op, b, ih.DataInf(), damping=0.0)
    np.testing.assert_allclose(
        res0.x, sample_loop_reference(U, b[:, None], 0.2, scale=0.05)[:, 0], rtol=1e-10
    )


def test_chunked_equals_unchunked():
    rng = np.random.default_rng(2)
    U, B = rand(rng, 23, 11), rand(rng, 11, 3)
    op = ih.LowRankPlusIdentity(U)
    a = ih.solve(op, B, ih.DataInf(), damping=0.5).x
    b = ih.solve(op, B, ih.DataInf(chunk_size=4), damping=0.5).x
    np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(a, sample_loop_reference(U, B, 0.5), rtol=1e-10)


def test_block_diagonal_per_block_damping():
    rng = np.random.default_rng(3)
    U1, U2 = rand(rng, 5, 4), rand(rng, 5, 7)
    op = ih.BlockDiagonal([ih.LowRankPlusIdentity(U1), ih.LowRankPlusIdentity(U2)])
    B = rand(rng, 11, 2)
    res = ih.solve(op, B, ih.DataInf(certify=True), damping=[0.2, 1.5])
    np.testing.assert_allclose(res.x[:4], sample_loop_reference(U1, B[:4], 0.2), rtol=1e-10)
    np.testing.assert_allclose(res.x[4:], sample_loop_reference(U2, B[4:], 1.5), rtol=1e-10)
    assert [b["damping_total"] for b in res.info["blocks"]] == [0.2, 1.5]
    assert all("certificates" in b for b in res.info["blocks"])
    # the reported approximation bound holds against the exact solution
    exact = ih.solve(op, B, ih.Exact(), damping=[0.2, 1.5]).x
    err = np.linalg.norm(res.x - exact, axis=0)
    assert np.all(err <= res.info["approximation_bound"] * (1 + 1e-9))
    # the exact residual is not small, but solve() does not call that a failure
    assert res.ok and np.all(res.residual_norm > 1e-6)


def test_n_equal_one_is_exact_inverse():
    rng = np.random.default_rng(4)
    U, B = rand(rng, 1, 8), rand(rng, 8, 3)
    op = ih.LowRankPlusIdentity(U, shift=0.1)
    x = ih.solve(op, B, ih.DataInf(), damping=0.4).x
    np.testing.assert_allclose(x, np.linalg.solve(op.to_dense() + 0.4 * np.eye(8), B), rtol=1e-10)


@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 9),
    d=st.integers(1, 9),
    log_cond=st.floats(0.0, 6.0),
    log_lam=st.floats(-3.0, 1.0),
)
def test_R_minus_inverse_is_psd(seed, n, d, log_cond, log_lam):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((n, d)) * np.logspace(0, log_cond / 2, d)[None, :]
    lam = 10.0**log_lam
    op = ih.LowRankPlusIdentity(U)
    R = ih.solve(op, np.eye(d), ih.DataInf(), damping=lam).x
    Sinv = np.linalg.inv(op.to_dense() + lam * np.eye(d))
    ev = np.linalg.eigvalsh((R - Sinv + (R - Sinv).T) / 2)
    assert ev.min() >= -1e-9 * np.abs(R).max()
    np.testing.assert_allclose(R, R.T, atol=1e-12 * np.abs(R).max())


@needs_torch
@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_backends_and_dtypes(lib, dtype):
    rng = np.random.default_rng(5)
    U, B = rand(rng, 12, 10), rand(rng, 10, 3)
    ref = sample_loop_reference(U, B, 0.7)
    if lib == "numpy":
        Ux, Bx = U.astype(dtype), B.astype(dtype)
    else:
        Ux = torch.tensor(U, dtype=getattr(torch, dtype))
        Bx = torch.tensor(B, dtype=getattr(torch, dtype))
    res = ih.solve(ih.LowRankPlusIdentity(Ux), Bx, ih.DataInf(chunk_size=5), damping=0.7)
    assert type(res.x) is type(Bx) and res.x.dtype == Bx.dtype and tuple(res.x.shape) == (10, 3)
    x = res.x.numpy() if lib == "torch" else res.x
    tol = 1e-5 if dtype == "float32" else 1e-11
    np.testing.assert_allclose(x, ref, rtol=tol, atol=tol)


def test_refuses_other_operators():
    rng = np.random.default_rng(6)
    A = rand(rng, 4, 4)
    dense = ih.Dense(A @ A.T)
    with pytest.raises(UnsupportedOperatorError, match="per-sample factors"):
        ih.solve(dense, np.ones(4), ih.DataInf(), damping=1.0)
    mf = ih.MatrixFree(lambda v: v, size=4, dtype=np.float64)
    with pytest.raises(UnsupportedOperatorError, match="per-sample factors"):
        ih.solve(mf, np.ones(4), ih.DataInf(), damping=1.0)
    mixed = ih.BlockDiagonal([ih.LowRankPlusIdentity(rand(rng, 3, 2)), dense])
    with pytest.raises(UnsupportedOperatorError, match=r"blocks\[1\]"):
        ih.solve(mixed, np.ones(6), ih.DataInf(), damping=1.0)


def test_damping_errors_and_bad_config():
    op = ih.LowRankPlusIdentity(np.ones((2, 3)))
    with pytest.raises(DampingError, match="shift \\+ damping > 0"):
        ih.solve(op, np.ones(3), ih.DataInf(), damping=0.0)
    blk = ih.BlockDiagonal([op, op])
    with pytest.raises(DampingError, match=r"blocks\[1\]"):
        ih.solve(blk, np.ones(6), ih.DataInf(), damping=[1.0, 0.0])
    with pytest.raises(DampingError):
        ih.solve(op, np.ones(3), ih.DataInf(), damping=-1.0)
    with pytest.raises(InputError, match="chunk_size"):
        ih.DataInf(chunk_size=0)
    with pytest.raises(InputError, match="certify"):
        ih.DataInf(certify="yes")


def test_certificates_in_info():
    rng = np.random.default_rng(7)
    U = rand(rng, 10, 6)
    cheap = ih.solve(ih.LowRankPlusIdentity(U), np.ones(6), ih.DataInf(), damping=0.5).info
    full = ih.solve(ih.LowRankPlusIdentity(U), np.ones(6), ih.DataInf(certify=True), damping=0.5).info
    c0, c1 = cheap["certificates"], full["certificates"]
    assert c0["true_error"] is None and c0["lambda_max_method"].startswith("trace")
    assert c1["lambda_max_method"].startswith("gram")
    assert (
        c1["true_error"] <= c1["intermediate"] <= c1["certificate"] <= c0["certificate"] <= c0["paper_bound"]
    )
    assert "approximation" in full["note"]


@needs_torch
def test_identity_returns_rhs():
    rng = np.random.default_rng(8)
    b = rand(rng, 5, 2)
    res = ih.solve(ih.Dense(np.diag(np.arange(1.0, 6.0))), b, ih.Identity(), damping=3.0)
    np.testing.assert_array_equal(res.x, b)
    assert res.x is not b and res.ok
    tb = torch.tensor(b, dtype=torch.float32)
    op = ih.LowRankPlusIdentity(torch.ones(2, 5, dtype=torch.float32))
    assert torch.equal(ih.solve(op, tb, ih.Identity()).x, tb)


@needs_torch
def test_default_damping_rule():
    rng = np.random.default_rng(9)
    U1, U2 = rand(rng, 6, 4), 5.0 * rand(rng, 6, 9)
    mean_eig = [np.trace(U.T @ U / 6) / U.shape[1] for U in (U1, U2)]
    op1 = ih.LowRankPlusIdentity(U1, shift=3.0)  # shift is not counted
    assert ih.default_damping(op1) == pytest.approx(0.1 * mean_eig[0], rel=1e-12)
    blk = ih.BlockDiagonal([op1, ih.LowRankPlusIdentity(U2)])
    lam = ih.default_damping(blk, factor=0.5)
    assert isinstance(lam, tuple) and lam == pytest.approx([0.5 * v for v in mean_eig], rel=1e-12)
    assert ih.default_damping([U1, U2]) == pytest.approx([0.1 * v for v in mean_eig], rel=1e-12)
    assert ih.default_damping(torch.tensor(U2)) == pytest.approx(0.1 * mean_eig[1], rel=1e-12)
    assert ih.default_damping(ih.Dense(np.diag([1.0, 3.0])), factor=1.0) == pytest.approx(2.0)
    # usable as per-block damping
    res = ih.solve(blk, np.ones(13), ih.DataInf(), damping=lam)
    assert [b["damping_total"] for b in res.info["blocks"]] == pytest.approx([lam[0] + 3.0, lam[1]])
    with pytest.raises(InputError, match="factor"):
        ih.default_damping(op1, factor=0.0)
    with pytest.raises(InputError, match="op"):
        ih.default_damping("not an operator")
    bad = U1.copy()
    bad[2, 1] = np.nan
    with pytest.raises(NonFiniteError, match=r"op\[1\]"):
        ih.default_damping([U2, bad])  # NaN gradients must not give λ = nan silently
    with pytest.raises(UnsupportedOperatorError, match="trace"):
        ih.default_damping(ih.MatrixFree(lambda v: v, size=3, dtype=np.float64))
