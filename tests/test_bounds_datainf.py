"""DataInf certificates (THEORY.md §4) against dense references built here."""

import numpy as np
import pytest
from cases import needs_torch, torch
from hypothesis import given
from hypothesis import strategies as st

import invhvp as ih
from invhvp import bounds
from invhvp.errors import DampingError, OperatorTooLargeError, ShapeError


def dense_parts(U, lam, scale=None):
    """S̄⁻¹, R and the list of ||S_i − S̄||₂ computed densely (float64)."""
    U = np.asarray(U, dtype=np.float64)
    n, d = U.shape
    s = 1.0 / n if scale is None else scale
    Gt = np.sqrt(n * s) * U
    S = [np.outer(g, g) + lam * np.eye(d) for g in Gt]
    Sbar = sum(S) / n
    R = sum(np.linalg.inv(Si) for Si in S) / n
    dev = [np.linalg.norm(Si - Sbar, 2) for Si in S]
    return np.linalg.inv(Sbar), R, dev, Gt


def instance(seed, n, d, log_cond, heavy):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((n, d)) * np.logspace(0, log_cond / 2, d)[None, :]
    if heavy and n > 1:
        U[0] *= 30.0  # one heavy row
    return U


@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 10),
    d=st.integers(1, 10),
    log_cond=st.floats(0.0, 6.0),
    heavy=st.booleans(),
    lam_factor=st.floats(0.01, 10.0),
)
def test_chain_of_bounds_holds(seed, n, d, log_cond, heavy, lam_factor):
    U = instance(seed, n, d, log_cond, heavy)
    lam = ih.default_damping(U, factor=lam_factor)
    Sinv, R, dev, Gt = dense_parts(U, lam)
    true = np.linalg.norm(Sinv - R, 2)
    c = bounds.datainf_certificates(U, lam)
    rt = 1e-8
    assert c["true_error"] == pytest.approx(true, rel=1e-6, abs=1e-12 / lam)
    inter = sum(v**2 for v in dev) / (n * lam**3)
    assert c["intermediate"] == pytest.approx(inter, rel=1e-6, abs=1e-12 / lam)
    lmax = np.linalg.eigvalsh(Gt.T @ Gt / n).max()
    assert c["lambda_max"] == pytest.approx(lmax, rel=1e-9, abs=1e-12)
    cert = sum(max(g @ g, lmax) ** 2 for g in Gt) / (n * lam**3)
    assert c["certificate"] == pytest.approx(cert, rel=1e-9)
    assert true <= c["intermediate"] * (1 + rt) + 1e-14 / lam
    assert c["intermediate"] <= c["certificate"] * (1 + rt)
    assert c["certificate"] <= c["paper_bound"] * (1 + rt)
    cheap = bounds.datainf_certificates(U, lam, full=False)
    assert c["certificate"] <= cheap["certificate"] * (1 + rt) <= cheap["paper_bound"] * (1 + rt)


def test_paper_bound_formula():
    U = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    lam = 0.5
    tr_S = [np.trace(np.outer(g, g) + lam * np.eye(3)) for g in U]
    tr_bar = np.mean(tr_S)
    M = max(t + tr_bar for t in tr_S) / 3
    assert bounds.datainf_paper_bound(U, lam) == pytest.approx(2 * M**2 * 9 / lam**3, rel=1e-12)


def test_general_scale_matches_scaled_factor():
    rng = np.random.default_rng(0)
    U = rng.standard_normal((5, 7))
    a = bounds.datainf_certificates(U, 0.3, scale=0.4)
    b = bounds.datainf_certificates(np.sqrt(0.4 * 5) * U, 0.3)
    for key in ("paper_bound", "certificate", "intermediate", "true_error", "lambda_max"):
        assert a[key] == pytest.approx(b[key], rel=1e-9)


def test_lambda_max_methods():
    rng = np.random.default_rng(1)
    U = rng.standard_normal((6, 40))
    exact, how = bounds.gram_lambda_max(U)
    upper, how2 = bounds.gram_lambda_max(U, method="trace")
    assert how.startswith("gram") and how2.startswith("trace")
    assert exact == pytest.approx(np.linalg.eigvalsh(U.T @ U / 6).max(), rel=1e-10)
    assert upper >= exact
    assert bounds.gram_lambda_max(U, max_rows=3)[1].startswith("trace")


def test_n_one_true_error_is_zero():
    U = np.array([[1.0, -2.0, 0.5, 3.0]])
    assert bounds.datainf_true_error(U, 0.2) < 1e-12


def test_influence_error_bound_holds():
    rng = np.random.default_rng(2)
    train = [rng.standard_normal((9, 6)), 3.0 * rng.standard_normal((9, 14))]
    test = [rng.standard_normal((4, 6)), rng.standard_normal((4, 14))]
    lam = ih.default_damping(train)
    ex = ih.influence_matrix(train, test, ih.Exact(), damping=lam)
    di = ih.influence_matrix(train, test, ih.DataInf(), damping=lam)
    for key in ("true_error", "certificate", "paper_bound"):
        b = [bounds.datainf_certificates(g, lm)[key] for g, lm in zip(train, lam)]
        bound = bounds.datainf_influence_error_bound(train, test, b)
        assert bound.shape == (4, 9)
        assert np.all(np.abs(ex - di) <= bound * (1 + 1e-9))
    # norms are Euclidean: one block, explicit check
    b1 = bounds.datainf_influence_error_bound(train[0], test[0], 2.0)
    expect = 2.0 * np.linalg.norm(test[0], axis=1)[:, None] * np.linalg.norm(train[0], axis=1)[None, :]
    np.testing.assert_allclose(b1, expect, rtol=1e-12)


@needs_torch
@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_torch_matches_numpy(dt):
    dtype = getattr(torch, dt)
    rng = np.random.default_rng(3)
    for n, d in [(8, 5), (4, 12)]:
        U = rng.standard_normal((n, d))
        a = bounds.datainf_certificates(U, 0.7)
        b = bounds.datainf_certificates(torch.tensor(U, dtype=dtype), 0.7)
        for key in ("paper_bound", "certificate", "intermediate", "true_error", "lambda_max"):
            assert b[key] == pytest.approx(a[key], rel=1e-5)
            assert isinstance(b[key], float)


def test_errors():
    U = np.ones((3, 4))
    with pytest.raises(DampingError, match="λ"):
        bounds.datainf_certificate(U, 0.0)
    with pytest.raises(ShapeError):
        bounds.datainf_paper_bound(np.ones(4), 1.0)
    with pytest.raises(OperatorTooLargeError):
        bounds.datainf_true_error(np.ones((5, 5)), 1.0, max_dim=4)
    with pytest.raises(OperatorTooLargeError):
        bounds.datainf_intermediate_bound(np.ones((5, 5)), 1.0, max_work=10)
    with pytest.raises(ShapeError, match="bounds"):
        bounds.datainf_influence_error_bound([U, U], [U, U], [1.0])
    # a test block whose width differs from its training block is not a valid pairing
    with pytest.raises(ShapeError, match=r"test_grads\[0\]"):
        bounds.datainf_influence_error_bound(U, np.ones((2, 3)), 1.0)
    with pytest.raises(ShapeError, match="block 1"):
        bounds.datainf_influence_error_bound([U, np.ones((2, 4))], [U, np.ones((2, 4))], [1.0, 1.0])
    big = bounds.datainf_certificates(np.ones((5, 5)), 1.0, max_true_dim=4, max_intermediate_work=10)
    assert big["true_error"] is None and big["intermediate"] is None
    assert big["bound"] == min(big["certificate"], big["paper_bound"])


def test_precomputed_norms_give_valid_bounds():
    rng = np.random.default_rng(4)
    U = rng.standard_normal((30, 50)).astype(np.float32)
    a = bounds.datainf_certificates(U, 0.2)
    b = bounds.datainf_certificates(U, 0.2, sq_norms=np.einsum("ij,ij->i", U, U))
    for key in ("paper_bound", "certificate"):
        assert a[key] <= b[key] <= a[key] * (1 + 1e-3)
