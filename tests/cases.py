"""The one catalogue of operator test cases.

Every case builds an invhvp operator on a given backend and dtype from raw data, and a
float64 numpy dense reference built *independently* from the same raw data (never via
``op.to_dense()``).  The raw data are rounded to the test dtype first, so that the
reference is exactly the matrix the operator represents.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import invhvp as ih

try:  # torch is optional: without it the torch backends and torch tests are skipped
    import torch
except ImportError:  # pragma: no cover - CI installs torch
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

# ------------------------------------------------------------------ backends


@dataclass(frozen=True)
class Backend:
    name: str  # "numpy", "torch-cpu", "torch-cuda"

    @property
    def is_torch(self) -> bool:
        return self.name.startswith("torch")

    @property
    def device(self):
        return {"numpy": None, "torch-cpu": "cpu", "torch-cuda": "cuda"}[self.name]

    def dtype(self, dt: str):
        return getattr(torch, dt) if self.is_torch else np.dtype(dt)

    def asarray(self, a, dt: str):
        """numpy data -> this backend's array of dtype ``dt``."""
        if self.is_torch:
            return torch.as_tensor(np.array(a), dtype=getattr(torch, dt), device=self.device)
        return np.asarray(a, dtype=dt)


BACKENDS = [Backend("numpy")] + ([Backend("torch-cpu")] if torch is not None else [])
if torch is not None and torch.cuda.is_available():  # pragma: no cover - no GPU in CI
    BACKENDS.append(Backend("torch-cuda"))
BACKEND_PARAMS = [pytest.param(b, id=b.name) for b in BACKENDS]
DTYPES = ["float32", "float64"]


def host64(x) -> np.ndarray:
    """float64 numpy copy of an array or tensor (tests only)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def rounded(a: np.ndarray, dt: str) -> np.ndarray:
    """float64 copy of ``a`` rounded to ``dt`` (what the operator really holds)."""
    return np.asarray(a, dtype=dt).astype(np.float64)


def eps(dt: str) -> float:
    return float(np.finfo(dt).eps)


def assert_same_kind(x, like):
    """``x`` has the array type, dtype, device and shape of ``like``."""
    assert type(x) is type(like)
    assert x.dtype == like.dtype
    assert tuple(x.shape) == tuple(like.shape)
    if hasattr(like, "device") and not isinstance(like, np.ndarray):
        assert x.device == like.device


# ------------------------------------------------------------------ raw data


def spd_matrix(rng, d, lo=1.0, hi=100.0, rank=None):
    """Symmetric matrix Q diag(ev) Qᵀ with log-spaced eigenvalues in [lo, hi] (zeros past ``rank``)."""
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    ev = np.geomspace(lo, hi, d)
    if rank is not None:
        ev[: d - rank] = 0.0
    return (Q * ev) @ Q.T


def symmetric_rounded(M, dt):
    """``M`` rounded to ``dt`` and symmetrized exactly in that dtype."""
    Mr = np.asarray(M, dtype=dt)
    Mr = (Mr + Mr.T) / np.asarray(2, dtype=dt)
    return Mr.astype(np.float64)


# ------------------------------------------------------------------ cases


@dataclass
class Built:
    op: Any
    ref: np.ndarray  # float64 dense reference
    blocks: list = field(default_factory=list)  # top-level block sizes (BlockDiagonal)
    has_diagonal: bool = True
    matrix_free: bool = False


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Backend, str], Built]

    def __call__(self, backend, dt) -> Built:
        return self.make(backend, dt)


def _dense_spd(bk, dt):
    M = symmetric_rounded(spd_matrix(np.random.default_rng(1), 30), dt)
    return Built(ih.Dense(bk.asarray(M, dt)), M)


def _dense_psd_rankdef(bk, dt):
    M = symmetric_rounded(spd_matrix(np.random.default_rng(2), 25, 0.5, 20.0, rank=10), dt)
    return Built(ih.Dense(bk.asarray(M, dt)), M)


def _low_rank(n, d, shift, scale, seed):
    def make(bk, dt):
        U = rounded(np.random.default_rng(seed).standard_normal((n, d)), dt)
        s = 1.0 / n if scale is None else scale
        ref = s * U.T @ U + shift * np.eye(d)
        op = ih.LowRankPlusIdentity(bk.asarray(U, dt), shift=shift, scale=scale)
        return Built(op, ref)

    return make


def _block(bk, dt):
    rng = np.random.default_rng(5)
    D1 = symmetric_rounded(spd_matrix(rng, 10, 0.5, 5.0), dt)
    U2 = rounded(rng.standard_normal((4, 12)), dt)
    D3 = symmetric_rounded(spd_matrix(rng, 5, 1.0, 3.0), dt)
    U4 = rounded(rng.standard_normal((3, 6)), dt)
    inner = ih.BlockDiagonal(
        [ih.Dense(bk.asarray(D3, dt)), ih.LowRankPlusIdentity(bk.asarray(U4, dt), shift=0.2, scale=0.5)]
    )
    op = ih.BlockDiagonal([ih.Dense(bk.asarray(D1, dt)), ih.LowRankPlusIdentity(bk.asarray(U2, dt)), inner])
    ref = np.zeros((33, 33))
    ref[:10, :10] = D1
    ref[10:22, 10:22] = U2.T @ U2 / 4
    ref[22:27, 22:27] = D3
    ref[27:, 27:] = 0.5 * U4.T @ U4 + 0.2 * np.eye(6)
    return Built(op, ref, blocks=[10, 12, 11])


def _matrix_free(with_matmat):
    def make(bk, dt):
        M = symmetric_rounded(spd_matrix(np.random.default_rng(7), 30, 0.1, 10.0), dt)
        Mb = bk.asarray(M, dt)
        kw = {}
        if with_matmat:
            kw = {"matmat": lambda V: Mb @ V, "diagonal": bk.asarray(np.diag(M), dt)}
        op = ih.MatrixFree(lambda v: Mb @ v, 30, bk.dtype(dt), device=bk.device, **kw)
        return Built(op, M, has_diagonal=with_matmat, matrix_free=True)

    return make


CASES = [
    Case("dense-spd", _dense_spd),
    Case("dense-psd-rankdef", _dense_psd_rankdef),
    Case("lowrank-wide", _low_rank(6, 40, 0.0, None, 3)),  # n < d: Woodbury
    Case("lowrank-tall", _low_rank(50, 20, 0.0, None, 4)),  # n >= d: Cholesky
    Case("lowrank-shift-scale", _low_rank(8, 30, 0.5, 0.3, 6)),
    Case("block-nested", _block),
    Case("matrixfree-matmat", _matrix_free(True)),
    Case("matrixfree-matvec", _matrix_free(False)),
]
CASE_PARAMS = [pytest.param(c, id=c.name) for c in CASES]
