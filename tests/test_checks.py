"""Bad input gets a typed error naming the argument (the defects listed in the Core v2 issue)."""

import math

import numpy as np
import pytest
from cases import needs_torch, torch

import invhvp as ih
from invhvp.errors import DampingError, DeviceError, DTypeError, InputError, NonFiniteError, NotSymmetricError

U = np.random.default_rng(0).standard_normal((4, 6))
OP = ih.LowRankPlusIdentity(U)
BLK = ih.BlockDiagonal([ih.LowRankPlusIdentity(U), ih.LowRankPlusIdentity(U)])


@pytest.mark.parametrize("bad", ["37", "0.1", {"a": 1.0, "b": 2.0}, {1.0, 2.0}, b"12", object()])
def test_damping_refuses_strings_dicts_sets(bad):
    with pytest.raises(DampingError, match="damping"):
        ih.solve(BLK, np.ones(12), ih.Exact(), damping=bad)
    with pytest.raises(DampingError, match="damping"):
        ih.influence_matrix([U, U], [U[:1], U[:1]], damping=bad)


@pytest.mark.parametrize("good", [0.5, np.float32(0.5), np.int64(1), (0.5, 1), [np.float64(0.5), 2], np.array([0.5, 1.0])])
def test_damping_accepts_numbers_and_sequences(good):
    ih.solve(BLK, np.ones(12), ih.Exact(), damping=good)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, (0.1, float("nan")), (0.1,), (0.1, 0.2, 0.3)])
def test_damping_values(bad):
    with pytest.raises(DampingError):
        ih.solve(BLK, np.ones(12), ih.Exact(), damping=bad)


def test_damping_sequence_needs_blocks():
    with pytest.raises(DampingError, match="block-diagonal"):
        ih.solve(OP, np.ones(6), ih.Exact(), damping=(0.1, 0.2))


def test_symmetry_rtol_nan_and_psd_string_refused():
    A = np.array([[2.0, 1.0], [0.0, 2.0]])
    with pytest.raises(InputError, match="symmetry_rtol"):
        ih.Dense(A, symmetry_rtol=float("nan"))
    with pytest.raises(NotSymmetricError):
        ih.Dense(A)
    with pytest.raises(InputError, match="psd"):
        ih.Dense(np.eye(2), psd="False")
    with pytest.raises(InputError, match="psd"):
        ih.MatrixFree(lambda v: v, 2, np.float64, psd="no")


@pytest.mark.parametrize(
    "make,name",
    [
        (lambda: ih.CG(record_history="yes"), "record_history"),
        (lambda: ih.CG(per_block=1), "per_block"),
        (lambda: ih.CG(rtol=float("nan")), "rtol"),
        (lambda: ih.CG(maxiter=2.5), "maxiter"),
        (lambda: ih.Exact(woodbury="no"), "woodbury"),
        (lambda: ih.DataInf(certify=1), "certify"),
        (lambda: ih.LiSSA(variance=float("inf")), "variance"),
        (lambda: ih.LiSSA(lambda_max=float("nan")), "lambda_max"),
        (lambda: ih.LiSSA(max_matvec=-1), "max_matvec"),
        (lambda: ih.DataInf(route="fast"), "route"),
    ],
)
def test_solver_options_name_the_argument(make, name):
    with pytest.raises(InputError, match=name):
        make()


def test_numpy_integers_accepted_everywhere():
    ih.CG(maxiter=np.int64(5), max_restarts=np.int32(1))
    ih.Exact(max_dense_size=np.int64(10))
    ih.DataInf(chunk_size=np.int64(3))
    ih.LiSSA(steps=np.int64(4), batch_size=np.int32(2), step=np.float32(0.1), lanczos_steps=np.int16(5))
    ih.MatrixFree(lambda v: v, np.int64(3), np.float64)


def test_trace_of_a_nan_operator_raises():
    op = ih.MatrixFree(lambda v: v * np.nan, 5, np.float64, matmat=lambda V: V * np.nan)
    for method in ("hutchinson", "hutchpp"):
        with pytest.raises(NonFiniteError):
            ih.trace(op, method=method, rng=0)
    with pytest.raises(NonFiniteError):
        ih.lambda_max(op, rng=0)


def test_default_damping_of_an_indefinite_operator_raises():
    with pytest.raises(DampingError, match="positive"):
        ih.default_damping(ih.Dense(np.diag([1.0, -3.0]), psd=False))
    with pytest.raises(DampingError):
        ih.default_damping(np.zeros((3, 4)))  # all-zero gradients: λ would be 0


@needs_torch
def test_meta_device_and_foreign_device_outputs_are_typed():
    with pytest.raises(DeviceError, match="meta"):
        ih.Dense(torch.eye(3, device="meta"))
    with pytest.raises(DeviceError, match="meta"):
        ih.LowRankPlusIdentity(torch.ones(2, 3, device="meta"))
    with pytest.raises(DeviceError):
        ih.MatrixFree(lambda v: v, 3, torch.float64, device="meta")
    op = ih.MatrixFree(lambda v: torch.empty_like(v, device="meta"), 3, torch.float64)
    with pytest.raises(DeviceError, match="device"):
        ih.solve(op, torch.ones(3, dtype=torch.float64), ih.CG(), damping=0.1)


def test_lists_where_arrays_are_expected_name_the_argument():
    with pytest.raises(DTypeError, match="matrix"):
        ih.Dense([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(DTypeError, match="factor"):
        ih.LowRankPlusIdentity([[1.0, 2.0]])
    with pytest.raises(DTypeError, match="rhs"):
        ih.solve(ih.Dense(np.eye(2)), [1.0, 2.0])
    with pytest.raises(DTypeError, match="train_grads"):
        ih.influence_matrix([[1.0, 2.0]], np.ones((1, 2)))


def test_influence_damping_factor_is_named():
    with pytest.raises(InputError, match="damping_factor"):
        ih.influence_matrix(U, U[:1], damping_factor=-1)
    with pytest.raises(InputError, match="damping_factor"):
        ih.self_influence(U, damping_factor=float("nan"))


def test_influence_default_damping_factor_is_the_documented_one():
    T = U[:2] + 0.3
    lam = ih.default_damping(U, factor=0.1)
    np.testing.assert_allclose(ih.influence_matrix(U, T), ih.influence_matrix(U, T, damping=lam), rtol=1e-12)
    np.testing.assert_allclose(
        ih.influence_matrix(U, T, damping_factor=0.5), ih.influence_matrix(U, T, damping=5 * lam), rtol=1e-12
    )
    assert not np.allclose(ih.influence_matrix(U, T), ih.influence_matrix(U, T, damping=2 * lam))


def test_on_failure_and_check_flags():
    with pytest.raises(InputError, match="on_failure"):
        ih.solve(OP, np.ones(6), on_failure="quiet")
    inv = ih.inverse(OP, damping=0.1)
    with pytest.raises(InputError, match="check"):
        inv.solve(np.ones(6), check="no")
    res = inv.solve(np.ones(6), check=False)
    assert res.residual_norm is None and res.info["checked"] is False and res.info["check_matvec"] == 0
    assert math.isfinite(float(np.sum(res.x)))
