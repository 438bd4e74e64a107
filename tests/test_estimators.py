"""Spectral estimators (invhvp.estimators) and operator mini-batches, on numpy and torch."""

import numpy as np
import pytest
from cases import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import invhvp as ih
from invhvp.errors import InputError, ShapeError, UnsupportedOperatorError

BACKENDS = ["numpy"] + (["torch"] if torch is not None else [])
DTYPES = ["float32", "float64"]


def to_backend(a, backend, dtype):
    a = np.asarray(a, dtype=dtype)
    if backend == "torch":
        return torch.from_numpy(a.copy())
    return a


def spd_from_spectrum(evals, seed):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((len(evals), len(evals))))
    A = (Q * np.asarray(evals)) @ Q.T
    return (A + A.T) / 2


@settings(max_examples=15)
@given(
    seed=st.integers(0, 2**31 - 1),
    d=st.integers(5, 60),
    decay=st.floats(0.0, 3.0),
    backend=st.sampled_from(BACKENDS),
    dtype=st.sampled_from(DTYPES),
)
def test_lanczos_and_power_lower_bound_and_accuracy(seed, d, decay, backend, dtype):
    ev = np.exp(-decay * np.linspace(0, 5, d))
    A = spd_from_spectrum(ev, seed)
    op = ih.Dense(to_backend(A, backend, dtype))
    true = float(np.max(ev))
    tol = 1e-5 if dtype == "float32" else 1e-12
    for method in ("lanczos", "power"):
        est = ih.lambda_max(op, method=method, rng=seed, k=30, maxiter=500, rtol=1e-8)
        assert est.lower_is_bound
        assert est.lower <= true * (1 + tol)
        assert est.lower <= est.value <= est.upper
    est = ih.lambda_max(op, method="lanczos", rng=seed, k=30)
    # upper is an estimate, but Lanczos with k >= d (or a converged top pair) does cover λ_max
    assert est.upper >= true * (1 - 1e-3)
    assert abs(est.value - true) <= 1e-3 * true
    if est.n_matvec == d:  # full Krylov space: the Ritz values are the eigenvalues
        assert est.upper_is_bound and est.upper >= true * (1 - tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d", [(7, 40), (40, 9)])
def test_exact_lambda_max_low_rank_is_an_enclosure(backend, dtype, n, d):
    rng = np.random.default_rng(n * d)
    U = rng.standard_normal((n, d)) * rng.uniform(0.1, 3, size=(n, 1))
    op = ih.LowRankPlusIdentity(to_backend(U, backend, dtype), shift=0.3)
    true = np.linalg.eigvalsh(U.T @ U / n + 0.3 * np.eye(d))[-1]
    est = ih.lambda_max(op, method="exact")
    assert est.upper_is_bound and est.lower_is_bound and est.n_matvec == 0
    assert est.lower <= true <= est.upper
    assert est.upper - est.lower <= 1e-3 * true
    blk = ih.BlockDiagonal([op, ih.Dense(to_backend(np.diag([1.0, 2 * true]), backend, dtype))])
    eb = ih.lambda_max(blk, method="exact")
    assert eb.lower <= 2 * true <= eb.upper


def test_exact_refuses_matrix_free():
    op = ih.MatrixFree(lambda v: v, size=3, dtype=np.float64)
    with pytest.raises(UnsupportedOperatorError, match="lanczos"):
        ih.lambda_max(op, method="exact")
    with pytest.raises(UnsupportedOperatorError, match="hutch"):
        ih.trace(op, method="exact")


@pytest.mark.parametrize("backend", BACKENDS)
def test_hutchinson_three_stderr_coverage_rate(backend):
    rng = np.random.default_rng(1)
    ev = rng.uniform(0, 2, size=50)
    A = spd_from_spectrum(ev, 2)
    op = ih.Dense(to_backend(A, backend, "float64"))
    true = ev.sum()
    hits, z = 0, []
    n_rep = 300
    for s in range(n_rep):
        est = ih.trace(op, n_matvec=30, rng=s)
        assert est.n_matvec == 30 and est.stderr > 0
        hits += abs(est.value - true) <= 3 * est.stderr
        z.append((est.value - true) / est.stderr)
    # nominal ≈ 99.7 % for a normal mean; t with 29 dof gives ≈ 99.4 %
    assert hits / n_rep >= 0.97
    assert abs(np.mean(z)) < 0.25  # unbiased


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_hutchpp_exact_on_low_rank_and_exact_traces(backend, dtype):
    rng = np.random.default_rng(3)
    U = rng.standard_normal((5, 60))
    op = ih.LowRankPlusIdentity(to_backend(U, backend, dtype))
    true = np.sum(U * U) / 5
    tol = 1e-4 if dtype == "float32" else 1e-10
    est = ih.trace(op, method="hutchpp", n_matvec=30, rng=0)  # sketch of 10 >= rank 5
    assert abs(est.value - true) <= tol * true
    assert abs(ih.trace(op, method="exact").value - true) <= tol * true
    blk = ih.BlockDiagonal([op, ih.Dense(to_backend(np.eye(4), backend, dtype))])
    assert abs(ih.trace(blk, method="exact").value - true - 4) <= tol * true
    # Hutch++ on a full-rank decaying spectrum: much smaller error than Hutchinson on average
    A = spd_from_spectrum(1.0 / np.arange(1, 81) ** 2, 5)
    dop = ih.Dense(to_backend(A, backend, "float64"))
    t = np.trace(A)
    e_h = np.mean([abs(ih.trace(dop, n_matvec=30, rng=s).value - t) for s in range(20)])
    e_pp = np.mean([abs(ih.trace(dop, method="hutchpp", n_matvec=30, rng=s).value - t) for s in range(20)])
    assert e_pp < e_h


def test_seeding_and_argument_errors():
    op = ih.Dense(spd_from_spectrum(np.linspace(1, 2, 10), 0))
    a = ih.trace(op, rng=5)
    b = ih.trace(op, rng=np.random.default_rng(5))
    assert a == b
    assert ih.lambda_max(op, rng=3) == ih.lambda_max(op, rng=3)
    with pytest.raises(InputError, match="rng"):
        ih.trace(op, rng="seed")
    with pytest.raises(InputError, match="method"):
        ih.trace(op, method="nope")
    with pytest.raises(InputError, match="n_matvec"):
        ih.trace(op, n_matvec=1)
    with pytest.raises(InputError, match="k"):
        ih.lambda_max(op, k=0)
    with pytest.raises(InputError, match="op"):
        ih.lambda_max(np.eye(3))


# ----------------------------------------------------------------------------- mini-batches


@pytest.mark.parametrize("backend", BACKENDS)
def test_low_rank_minibatch_is_unbiased_and_seeded(backend):
    rng = np.random.default_rng(0)
    U = rng.standard_normal((30, 6))
    op = ih.LowRankPlusIdentity(to_backend(U, backend, "float64"), shift=0.2, scale=0.5 / 30)
    g = np.random.default_rng(1)
    m = op.minibatch(8, g)
    assert m.n_rows == 8 and m.shift == 0.2
    assert abs(m.scale - 0.5 / 8) < 1e-15
    # seeded: numpy and torch draw the same rows for the same seed
    i1 = op.minibatch_indices(5, np.random.default_rng(7))
    i2 = op.minibatch_indices(5, np.random.default_rng(7))
    assert np.array_equal(i1, i2)
    # unbiased: the average of the expectation over uniform single draws is exact
    full = U.T @ U * 0.5 / 30 + 0.2 * np.eye(6)
    avg = np.mean([np.asarray(op.minibatch(1, None, indices=[i]).to_dense()) for i in range(30)], axis=0)
    np.testing.assert_allclose(avg, full, rtol=1e-12, atol=1e-12)
    with pytest.raises(InputError, match="batch_size"):
        op.minibatch(0, g)


def test_matrix_free_sampler_protocol_and_block_diagonal():
    rng = np.random.default_rng(0)
    U = rng.standard_normal((40, 5))
    lr = ih.LowRankPlusIdentity(U)

    def sampler(batch_size, gen):
        rows = U[gen.integers(0, 40, size=batch_size)]
        return lambda V: rows.T @ (rows @ V) / batch_size

    mf = ih.MatrixFree(lambda v: lr.matvec(v), size=5, dtype=np.float64, sampler=sampler, n_samples=40)
    assert mf.supports_minibatch and mf.n_samples == 40
    est = mf.minibatch(4, np.random.default_rng(0))
    assert isinstance(est, ih.Operator) and est.size == 5
    rows = U[np.random.default_rng(0).integers(0, 40, size=4)]  # the sampler's draw, recomputed
    np.testing.assert_allclose(est.matmat(np.eye(5)), rows.T @ rows / 4, rtol=1e-12)
    # an int seed is turned into a Generator (as for LowRankPlusIdentity.minibatch)
    np.testing.assert_allclose(mf.minibatch(4, 0).matmat(np.eye(5)), rows.T @ rows / 4, rtol=1e-12)
    with pytest.raises(InputError, match="batch_size"):
        mf.minibatch(0, 0)
    mf2 = ih.MatrixFree(lambda v: v, size=5, dtype=np.float64, sampler=lambda b, g: ih.Dense(np.eye(3)))
    with pytest.raises(ShapeError, match="sampler"):
        mf2.minibatch(2, np.random.default_rng(0))
    with pytest.raises(InputError, match="sampler"):
        ih.MatrixFree(lambda v: v, size=5, dtype=np.float64, sampler=3)
    with pytest.raises(UnsupportedOperatorError, match="sampler"):
        ih.MatrixFree(lambda v: v, size=5, dtype=np.float64).minibatch(2, None)
    blk = ih.BlockDiagonal([lr, mf])
    assert blk.supports_minibatch
    m = blk.minibatch(3, np.random.default_rng(0))
    assert isinstance(m, ih.BlockDiagonal) and m.size == 10
    assert not ih.BlockDiagonal([lr, ih.Dense(np.eye(2))]).supports_minibatch
