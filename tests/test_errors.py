"""Bad input raises at once, with the right error type and a message naming the argument."""

import numpy as np
import pytest
from cases import needs_torch, torch

import invhvp as ih
from invhvp import Status
from invhvp.errors import (
    ConvergenceError,
    DampingError,
    DTypeError,
    InputError,
    NonFiniteError,
    NotPositiveDefiniteError,
    NotSymmetricError,
    OperatorTooLargeError,
    ShapeError,
    UnsupportedOperatorError,
)


def _A(d=4):
    return ih.Dense(np.eye(d) * 2.0)


# ------------------------------------------------------------------ shapes


def test_rhs_shape_mismatch():
    with pytest.raises(ShapeError, match="rhs.*got \\(5,\\)"):
        ih.solve(_A(), np.ones(5), damping=0.1)
    with pytest.raises(ShapeError, match="rhs"):
        ih.solve(_A(), np.ones((4, 0)), damping=0.1)
    with pytest.raises(ShapeError, match="rhs"):
        ih.solve(_A(), np.ones((4, 2, 1)), damping=0.1)


def test_matvec_operand_shape_mismatch():
    with pytest.raises(ShapeError, match="v: expected shape \\(4,\\)"):
        _A().matvec(np.ones(3))
    with pytest.raises(ShapeError, match="V: expected shape \\(4, k\\)"):
        _A().matmat(np.ones((3, 2)))


def test_x0_and_preconditioner_shape_mismatch():
    with pytest.raises(ShapeError, match="x0"):
        ih.solve(_A(), np.ones((4, 2)), ih.CG(x0=np.ones((4, 3))), damping=0.1)
    with pytest.raises(InputError, match="preconditioner"):
        ih.solve(_A(), np.ones(4), ih.CG(preconditioner=_A(3)), damping=0.1)


def test_non_square_dense():
    with pytest.raises(ShapeError, match="matrix.*square"):
        ih.Dense(np.ones((3, 4)))
    with pytest.raises(ShapeError, match="matrix"):
        ih.Dense(np.ones(3))
    with pytest.raises(ShapeError, match="matrix"):
        ih.Dense(np.ones((0, 0)))


def test_empty_or_bad_factor():
    with pytest.raises(ShapeError, match="factor"):
        ih.LowRankPlusIdentity(np.ones((0, 5)))
    with pytest.raises(ShapeError, match="factor"):
        ih.LowRankPlusIdentity(np.ones((5, 0)))
    with pytest.raises(ShapeError, match="factor"):
        ih.LowRankPlusIdentity(np.ones(5))
    with pytest.raises(InputError, match="shift"):
        ih.LowRankPlusIdentity(np.ones((2, 5)), shift=-1.0)
    with pytest.raises(InputError, match="scale"):
        ih.LowRankPlusIdentity(np.ones((2, 5)), scale=0.0)


# ------------------------------------------------------------------ non-finite


@needs_torch
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_inputs(bad):
    M = np.eye(3)
    M[1, 1] = bad
    with pytest.raises(NonFiniteError, match="matrix"):
        ih.Dense(M)
    U = np.ones((2, 3))
    U[0, 2] = bad
    with pytest.raises(NonFiniteError, match="factor"):
        ih.LowRankPlusIdentity(U)
    with pytest.raises(NonFiniteError, match="factor"):
        ih.LowRankPlusIdentity(torch.tensor(U))
    b = np.ones(3)
    b[0] = bad
    with pytest.raises(NonFiniteError, match="rhs"):
        ih.solve(ih.Dense(np.eye(3)), b, damping=0.1)
    with pytest.raises(NonFiniteError, match="x0"):
        ih.solve(ih.Dense(np.eye(3)), np.ones(3), ih.CG(x0=b), damping=0.1)


# ------------------------------------------------------------------ damping


@pytest.mark.parametrize("damping", [-1e-3, float("nan"), float("inf"), -np.inf])
def test_bad_scalar_damping(damping):
    with pytest.raises(DampingError, match="damping"):
        ih.solve(_A(), np.ones(4), damping=damping)


def test_bad_block_damping():
    op = ih.BlockDiagonal([_A(2), _A(3)])
    with pytest.raises(DampingError, match="damping: expected one value per block \\(2\\), got 3"):
        ih.solve(op, np.ones(5), damping=[0.1, 0.2, 0.3])
    with pytest.raises(DampingError, match="damping: block 1"):
        ih.solve(op, np.ones(5), damping=[0.1, -0.2])
    with pytest.raises(DampingError, match="damping: block 0"):
        ih.solve(op, np.ones(5), damping=[float("nan"), 0.2])
    with pytest.raises(DampingError, match="damping.*block-diagonal"):
        ih.solve(_A(), np.ones(4), damping=[0.1])
    with pytest.raises(DampingError, match="damping"):
        ih.solve(op, np.ones(5), damping="ab")
    with pytest.raises(DampingError, match="damping"):
        ih.solve(op, np.ones(5), damping=None)


# ------------------------------------------------------------------ symmetry


@needs_torch
def test_non_symmetric_dense():
    M = np.eye(3)
    M[0, 2] = 0.5
    with pytest.raises(NotSymmetricError, match="matrix: not symmetric"):
        ih.Dense(M)
    with pytest.raises(NotSymmetricError, match="matrix"):
        ih.Dense(torch.tensor(M, dtype=torch.float32))


@needs_torch
def test_slightly_asymmetric_float32_accepted():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((6, 6)).astype(np.float32)
    M = W @ W.T  # float32 product: asymmetric only by rounding
    M[0, 1] = M[1, 0] * (1 + 4 * np.finfo(np.float32).eps)
    assert np.any(M != M.T)
    ih.Dense(M)
    ih.Dense(torch.tensor(M))


# ------------------------------------------------------------------ dtypes and libraries


@needs_torch
def test_integer_dtype():
    with pytest.raises(DTypeError, match="matrix"):
        ih.Dense(np.eye(3, dtype=np.int64))
    with pytest.raises(DTypeError, match="factor"):
        ih.LowRankPlusIdentity(torch.ones((2, 3), dtype=torch.int32))
    with pytest.raises(DTypeError, match="rhs"):
        ih.solve(_A(3), np.ones(3, dtype=np.int64), damping=0.1)
    with pytest.raises(DTypeError, match="dtype"):
        ih.MatrixFree(lambda v: v, 3, np.int32)
    with pytest.raises(DTypeError, match="dtype"):
        ih.MatrixFree(lambda v: v, 3, torch.float16)


@needs_torch
def test_mixed_numpy_torch():
    with pytest.raises(DTypeError, match="rhs: array library mismatch"):
        ih.solve(_A(3), torch.ones(3, dtype=torch.float64), damping=0.1)
    with pytest.raises(DTypeError, match="rhs"):
        ih.solve(ih.Dense(torch.eye(3, dtype=torch.float64)), np.ones(3), damping=0.1)
    with pytest.raises(DTypeError, match="blocks\\[1\\]"):
        ih.BlockDiagonal([_A(2), ih.Dense(torch.eye(2, dtype=torch.float64))])
    with pytest.raises(DTypeError, match="v"):
        _A(3).matvec(torch.ones(3, dtype=torch.float64))


def test_mixed_float32_float64():
    with pytest.raises(DTypeError, match="rhs: dtype float32"):
        ih.solve(_A(3), np.ones(3, dtype=np.float32), damping=0.1)
    with pytest.raises(DTypeError, match="blocks\\[1\\]"):
        ih.BlockDiagonal([_A(2), ih.Dense(np.eye(2, dtype=np.float32))])
    with pytest.raises(DTypeError, match="x0"):
        ih.solve(_A(3), np.ones(3), ih.CG(x0=np.ones(3, dtype=np.float32)), damping=0.1)


def test_bad_blocks():
    with pytest.raises(InputError, match="blocks"):
        ih.BlockDiagonal([])
    with pytest.raises(DTypeError, match="blocks\\[0\\].*Dense"):
        ih.BlockDiagonal([np.eye(2)])


# ------------------------------------------------------------------ positive definiteness


@needs_torch
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_cholesky_not_positive_definite(lib):
    conv = (lambda a: a) if lib == "numpy" else torch.tensor
    indefinite = ih.Dense(conv(np.diag([1.0, -1.0, 2.0])), psd=False)
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite.*damping"):
        ih.solve(indefinite, conv(np.ones(3)), ih.Exact(), damping=0.5)
    # PSD but singular, damping 0: no jitter, must raise
    singular = ih.Dense(conv(np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])))
    with pytest.raises(NotPositiveDefiniteError, match="jitter"):
        ih.solve(singular, conv(np.ones(3)), ih.Exact(), damping=0.0)
    W = np.random.default_rng(0).standard_normal((20, 5))
    rank_deficient = ih.Dense(conv(W @ W.T))
    with pytest.raises(NotPositiveDefiniteError, match="no jitter"):
        ih.solve(rank_deficient, conv(np.ones(20)), ih.Exact(), damping=0.0)
    # the same matrix with damping is fine
    x = ih.solve(singular, conv(np.ones(3)), ih.Exact(), damping=1.0).x
    np.testing.assert_allclose(np.asarray(x), [1 / 3, 1 / 3, 1 / 3])


def test_woodbury_zero_damping():
    U = np.random.default_rng(0).standard_normal((3, 10))
    with pytest.raises(NotPositiveDefiniteError, match="damping > 0"):
        ih.solve(ih.LowRankPlusIdentity(U), np.ones(10), ih.Exact(), damping=0.0)
    with pytest.raises(NotPositiveDefiniteError, match="damping > 0"):
        ih.solve(ih.LowRankPlusIdentity(U), np.ones(10), ih.Exact(woodbury=True), damping=0.0)


def test_exact_on_large_matrix_free_recommends_cg():
    calls = []

    def mv(v):
        calls.append(1)
        return v

    op = ih.MatrixFree(mv, 10_000, np.float64)
    with pytest.raises(OperatorTooLargeError, match="use invhvp.CG"):
        ih.solve(op, np.ones(10_000), ih.Exact(), damping=0.1)
    assert calls == []  # refused up front, before any product
    assert issubclass(OperatorTooLargeError, UnsupportedOperatorError)


def test_jacobi_without_diagonal():
    op = ih.MatrixFree(lambda v: v, 4, np.float64)
    with pytest.raises(UnsupportedOperatorError, match="diagonal"):
        ih.solve(op, np.ones(4), ih.CG(preconditioner="jacobi"), damping=0.1)


# ------------------------------------------------------------------ solver / operator arguments


def test_bad_solve_arguments():
    with pytest.raises(DTypeError, match="solver"):
        ih.solve(_A(), np.ones(4), "cg", damping=0.1)
    with pytest.raises(DTypeError, match="operator"):
        ih.solve([[1.0, 0.0], [0.0, 1.0]], np.ones(2), damping=0.1)
    # a bare 2-D array is taken as Dense (issue 11: scipy and numpy inputs without glue)
    np.testing.assert_allclose(ih.solve(np.eye(4), np.ones(4), damping=1.0).x, 0.5)
    with pytest.raises(InputError, match="on_failure"):
        ih.solve(_A(), np.ones(4), damping=0.1, on_failure="explode")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"rtol": -1.0}, "rtol"),
        ({"rtol": float("nan")}, "rtol"),
        ({"atol": -1e-3}, "atol"),
        ({"atol": "small"}, "atol"),
        ({"maxiter": 0}, "maxiter"),
        ({"maxiter": 2.5}, "maxiter"),
        ({"maxiter": True}, "maxiter"),
        ({"preconditioner": "ilu"}, "preconditioner"),
        ({"preconditioner": 3}, "preconditioner"),
        ({"callback": 3}, "callback"),
    ],
)
def test_bad_cg_parameters(kwargs, name):
    with pytest.raises(InputError, match=name):
        ih.CG(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"max_dense_size": 0}, "max_dense_size"),
        ({"max_dense_size": 1.5}, "max_dense_size"),
        ({"woodbury": "yes"}, "woodbury"),
    ],
)
def test_bad_exact_parameters(kwargs, name):
    with pytest.raises(InputError, match=name):
        ih.Exact(**kwargs)


def test_bad_matrix_free_arguments():
    with pytest.raises(InputError, match="matvec"):
        ih.MatrixFree(np.eye(3), 3, np.float64)
    with pytest.raises(InputError, match="matmat"):
        ih.MatrixFree(lambda v: v, 3, np.float64, matmat=5)
    with pytest.raises(InputError, match="size"):
        ih.MatrixFree(lambda v: v, 0, np.float64)
    with pytest.raises(InputError, match="size"):
        ih.MatrixFree(lambda v: v, 2.5, np.float64)
    with pytest.raises(ShapeError, match="diagonal"):
        ih.MatrixFree(lambda v: v, 3, np.float64, diagonal=np.ones(4))


@needs_torch
def test_matrix_free_callable_wrong_output():
    wrong_shape = ih.MatrixFree(lambda v: v[:-1], 4, np.float64)
    with pytest.raises(ShapeError, match="matvec/matmat callable returned shape \\(3,\\)"):
        wrong_shape.matvec(np.ones(4))
    with pytest.raises(ShapeError, match="returned shape"):
        ih.solve(wrong_shape, np.ones(4), ih.CG(), damping=0.1)
    wrong_dtype = ih.MatrixFree(lambda v: v.astype(np.float32), 4, np.float64)
    with pytest.raises(DTypeError, match="returned dtype float32"):
        ih.solve(wrong_dtype, np.ones(4), ih.CG(), damping=0.1)
    wrong_matmat = ih.MatrixFree(lambda v: v, 4, torch.float64, matmat=lambda V: V[:, :1])
    with pytest.raises(ShapeError, match="returned shape"):
        wrong_matmat.matmat(torch.ones((4, 2), dtype=torch.float64))


# ------------------------------------------------------------------ never NaN silently


@needs_torch
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_nan_from_matrix_free_is_never_silent(lib):
    dtype = np.float64 if lib == "numpy" else torch.float64
    b = np.ones(5) if lib == "numpy" else torch.ones(5, dtype=torch.float64)
    op = ih.MatrixFree(lambda v: v * float("nan"), 5, dtype)
    with pytest.raises(ConvergenceError, match="nonfinite") as ei:
        ih.solve(op, b, ih.CG(), damping=0.1)
    assert ei.value.result.status is Status.NONFINITE
    res = ih.solve(op, b, ih.CG(), damping=0.1, on_failure="ignore")
    assert res.status is Status.NONFINITE
    with pytest.raises(NonFiniteError, match="returned NaN"):
        ih.solve(op, b, ih.Exact(), damping=0.1)
    with pytest.raises(ConvergenceError):
        ih.solve(op, b, damping=0.1)  # automatic choice: CG


def test_nan_in_preconditioner_output_is_never_silent():
    op = ih.Dense(np.eye(4) * 2.0)
    with pytest.raises(ConvergenceError) as ei:
        ih.solve(op, np.ones(4), ih.CG(preconditioner=lambda R: R * np.nan), damping=0.1)
    assert ei.value.result.status is Status.NONFINITE
