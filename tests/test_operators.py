"""Operator contract over the whole catalogue, plus check_operator's own failure modes."""

import numpy as np
import pytest
from cases import BACKEND_PARAMS, CASE_PARAMS, DTYPES, assert_same_kind, eps, host64, needs_torch, torch

import invhvp as ih
from invhvp.errors import OperatorContractError
from invhvp.testing import check_operator


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("bk", BACKEND_PARAMS)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_operator_contract(case, bk, dt):
    built = case(bk, dt)
    op, ref = built.op, built.ref
    check_operator(op)
    d = ref.shape[0]
    assert op.shape == (d, d) and op.size == d
    V64 = np.random.default_rng(0).standard_normal((d, 4))
    V = bk.asarray(V64, dt)
    out = op.matmat(V)
    assert_same_kind(out, V)
    tol = 50 * eps(dt) * np.sqrt(d) * np.linalg.norm(ref, 2)
    np.testing.assert_allclose(host64(out), ref @ host64(V), rtol=0, atol=tol * np.abs(V64).max() * 4)
    v = op.matvec(V[:, 1])
    assert_same_kind(v, V[:, 1])
    np.testing.assert_allclose(host64(v), ref @ host64(V[:, 1]), rtol=0, atol=tol * 4 * np.abs(V64).max())
    if built.has_diagonal:
        np.testing.assert_allclose(host64(op.diagonal()), np.diag(ref), rtol=10 * eps(dt), atol=10 * eps(dt))
    np.testing.assert_allclose(host64(op.to_dense()), ref, rtol=0, atol=tol)


def _mf(f, d=4, **kw):
    return ih.MatrixFree(f, d, np.float64, **kw)


def test_check_operator_rejects_asymmetric():
    A = np.triu(np.ones((4, 4)))
    with pytest.raises(OperatorContractError, match="not symmetric"):
        check_operator(_mf(lambda v: A @ v))


def test_check_operator_rejects_nonlinear():
    with pytest.raises(OperatorContractError, match="not linear"):
        check_operator(_mf(lambda v: v + 1.0))


def test_check_operator_rejects_matmat_matvec_mismatch():
    class Bad(ih.Dense):
        def matvec(self, v):
            return 2.0 * super().matvec(v)

    with pytest.raises(OperatorContractError, match="differs from matmat"):
        check_operator(Bad(np.eye(3)))


def test_check_operator_rejects_false_psd_claim():
    with pytest.raises(OperatorContractError, match="psd=True"):
        check_operator(_mf(lambda v: -v))
    check_operator(_mf(lambda v: -v, psd=False))  # honest claim passes


@needs_torch
def test_check_operator_rejects_dtype_change():
    op = ih.MatrixFree(lambda v: v, 3, torch.float32, matmat=lambda V: V.double())
    with pytest.raises(OperatorContractError, match="dtype"):
        check_operator(op)

    class Upcasting(ih.Dense):
        def _matmat(self, V):
            return super()._matmat(V).astype(np.float64)

    with pytest.raises(OperatorContractError, match="matmat does not preserve.*dtype"):
        check_operator(Upcasting(np.eye(3, dtype=np.float32)))


def test_check_operator_rejects_wrong_to_dense():
    class Bad(ih.Dense):
        def to_dense(self):
            return self.matrix + 1.0

    with pytest.raises(OperatorContractError, match="to_dense"):
        check_operator(Bad(np.eye(3)))


def test_check_operator_rejects_nonfinite_and_non_operator():
    with pytest.raises(OperatorContractError, match="NaN"):
        check_operator(_mf(lambda v: v * np.nan))
    with pytest.raises(OperatorContractError, match="Operator"):
        check_operator(np.eye(3))


def test_check_operator_tolerance_is_relative():
    # an asymmetry of 1e-9 relative is rejected in float64 but accepted with a loose rtol
    A = np.eye(5) * 1e6
    A[0, 1] += 1e-3
    op = _mf(lambda v: A @ v, d=5)
    with pytest.raises(OperatorContractError, match="not symmetric"):
        check_operator(op)
    check_operator(op, rtol=1e-6)


def test_low_rank_diagonal_and_exact_trace_form_no_factor_sized_temporary():
    """diag(sUᵀU) and tr(sUᵀU) are reductions over U: no n×d temporary (``U * U``)."""
    import tracemalloc

    U = np.random.default_rng(3).standard_normal((1500, 1000))
    op = ih.LowRankPlusIdentity(U, shift=0.5)
    want_diag = 0.5 + np.einsum("ij,ij->j", U, U) / 1500
    want_trace = 0.5 * 1000 + np.einsum("ij,ij->", U, U) / 1500
    op.diagonal(), ih.trace(op, method="exact")  # warm-up (imports, caches)
    tracemalloc.start()
    try:
        diag = op.diagonal()
        tr = ih.trace(op, method="exact").value
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(diag, want_diag, rtol=1e-12)
    assert tr == pytest.approx(want_trace, rel=1e-12)
    assert peak < 0.1 * U.nbytes
