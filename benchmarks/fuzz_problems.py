"""Random damped symmetric problems with an independent reference, for ``fuzz_status.py``.

``make_problem(seed, i)`` builds problem ``i`` of the run with ``seed`` (reproducible on its own):
an invhvp operator (numpy or torch, float32 or float64), a right-hand side, a damping, and from
the raw data the operator holds (rounded to its dtype) a long-double dense matrix ``M = A + λI``
and the true solution by float64 LU plus iterative refinement with residuals in ``np.longdouble``
(no BLAS).  Spectra are drawn (κ up to 1e12) and rotated by random orthogonal matrices.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import numpy as np

import invhvp as ih

LD = np.longdouble
OP_KINDS = ("dense", "dense_indef", "lr_wide", "lr_tall", "lr_rankdef", "lr_gauss", "block", "mf_mv", "mf_mm")
OP_WEIGHTS = (0.17, 0.05, 0.13, 0.13, 0.08, 0.06, 0.18, 0.10, 0.10)
TORCH_FRACTION = 0.15


@dataclass
class Leaf:
    op: object  # invhvp operator
    A: np.ndarray  # long-double dense matrix from the operator's raw data
    g_mean: float  # mean eigenvalue of the unshifted part (damping unit)
    desc: dict = field(default_factory=dict)


@dataclass
class Problem:
    seed: int
    index: int
    op_kind: str
    dtype: str  # "float32" | "float64"
    backend: str  # "numpy" | "torch"
    op: object
    rhs: object
    damping: object  # float or tuple
    desc: dict
    M: np.ndarray  # long double A + diag(λ)
    lam: np.ndarray  # float64 per-coordinate damping
    B: np.ndarray  # float64 (d, k) rounded right-hand side
    x_ref: np.ndarray | None  # float64 (d, k), None when the reference is not trustworthy
    ref_err: float  # relative error estimate of x_ref (per column max)
    eig_A: np.ndarray  # float64 eigenvalues of A (ascending)
    eig_M: np.ndarray  # float64 eigenvalues of A + λI
    psd_declared: bool
    leaves: list  # [(slice, Leaf)]
    psd_true: bool = True  # no leaf is certainly below the eig_lower() it declares (Rayleigh quotients)
    rq_M: float = np.nan  # min Rayleigh quotient of A + λI (long double): an upper bound on λ_min

    @property
    def pd_M(self) -> bool:
        return bool(self.rq_M > 0 and self.eig_M[0] > 1e-14 * np.max(np.abs(self.eig_M)))

    def well_posed(self) -> bool:
        """A + λI certainly positive definite, κ·u·d <= 1e-3, and every magnitude representable in the dtype."""
        fi = np.finfo(self.dtype)
        if self.x_ref is None or not self.pd_M or self.kappa * float(fi.eps) * self.d > 1e-3:
            return False
        big = max(float(np.max(np.abs(self.eig_M))), float(np.max(np.abs(self.B))), float(np.max(np.abs(self.x_ref))))
        small = min(float(self.eig_M[0]), float(np.max(np.abs(self.x_ref))) or np.inf, float(np.max(np.abs(self.B))) or np.inf)
        big *= max(float(np.max(np.abs(self.x_ref))), 1.0)
        return bool(big < 1e-6 * float(fi.max) and small > 1e6 * float(fi.tiny))

    @property
    def d(self) -> int:
        return self.M.shape[0]

    @functools.cached_property
    def kappa(self) -> float:
        """Largest condition number of A + λI over the leaves (blocks are solved independently)."""
        out = 0.0
        for sl, _ in self.leaves:
            m = np.abs(np.linalg.eigvalsh(self.M[sl, sl].astype(np.float64)))
            out = max(out, float(m.max() / m.min()) if m.min() > 0 else np.inf)
        return out


# ----------------------------------------------------------------------------- pieces
def _orth(rng, n, m):
    q, r = np.linalg.qr(rng.standard_normal((n, m)))
    return q * np.sign(np.diag(r))


def _spectrum(rng, m, kappa):
    """m eigenvalues in [1/κ, 1] (max 1, and min 1/κ when m > 1), of a random shape."""
    kind = rng.choice(["log", "two", "iso", "geo"], p=[0.5, 0.2, 0.15, 0.15])
    lk = np.log10(kappa)
    if kind == "log":
        ev = 10.0 ** rng.uniform(-lk, 0.0, m)
    elif kind == "two":
        ev = np.where(rng.random(m) < 0.5, 1.0, 1.0 / kappa) * (1 + 1e-3 * rng.random(m))
    elif kind == "iso":
        ev = np.ones(m) * (1 + 1e-2 * rng.random(m))
    else:
        ev = np.logspace(-lk, 0.0, m)
    ev = np.sort(ev)[::-1].copy()
    ev[0] = 1.0
    if m > 1:
        ev[-1] = 1.0 / kappa
    return ev, str(kind)


def _exp10(rng, p_zero, lo, hi):
    return 0 if rng.random() < p_zero else int(rng.integers(lo, hi + 1))


def _cast(a, dtype, backend):
    a = np.ascontiguousarray(a, dtype=dtype)
    if backend == "torch":
        import torch

        return torch.from_numpy(a.copy())
    return a


def _host(a):
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _dense_leaf(rng, d, dtype, backend, indef=False):
    kappa = 10.0 ** rng.uniform(0, 12)
    ev, shape = _spectrum(rng, d, kappa)
    if not indef and rng.random() < 0.15:  # singular PSD: exact zero eigenvalues
        ev[rng.random(d) < 0.3] = 0.0
        shape += "+zeros"
    if indef:
        ev = ev * np.where(rng.random(d) < 0.3, -1.0, 1.0)
    Q = _orth(rng, d, d)
    e = _exp10(rng, 0.6, -30, 30)
    A = (Q * ev) @ Q.T
    A = 0.5 * (A + A.T) * 10.0**e
    Ad = _cast(A, dtype, backend)
    op = ih.Dense(Ad, psd=not indef)
    A_ld = _host(Ad).astype(LD)
    desc = dict(leaf="dense", d=d, kappa=kappa, spectrum=shape, exp10=e, indef=indef)
    return Leaf(op, A_ld, float(np.mean(np.abs(ev))) * 10.0**e, desc)


def _lowrank_leaf(rng, d, dtype, backend, variant):
    if variant == "wide":
        n = int(rng.integers(1, d)) if d > 1 else 1
    elif variant == "tall":
        n = int(rng.integers(d + 1, max(d + 2, 200)))
    elif variant == "rankdef":
        n = int(rng.integers(2, 120))
    else:
        n = int(rng.integers(2, 200))
    kappa = 10.0 ** rng.uniform(0, 12)
    scale = None if rng.random() < 0.6 else float(10.0 ** rng.uniform(-3, 3) / n)
    s = 1.0 / n if scale is None else scale
    if variant == "gauss":  # realistic per-sample gradients: column scales and heavy-tailed rows
        col = 10.0 ** rng.uniform(-np.log10(kappa) / 2, 0, d)
        row = np.exp(rng.standard_normal(n) * rng.uniform(0, 1.5))
        U = rng.standard_normal((n, d)) * col * row[:, None]
        shape = "gauss"
    else:
        m = min(n, d)
        if variant == "rankdef":
            m = int(rng.integers(1, max(m, 2)))
        ev, shape = _spectrum(rng, m, kappa)
        U = (_orth(rng, n, m) * np.sqrt(ev / s)) @ _orth(rng, d, m).T
        if rng.random() < 0.3:  # uneven rows (large sampling variance)
            U = U * np.exp(rng.standard_normal(n))[:, None]
    G_mean = s * float(np.sum(U * U)) / d
    shift = 0.0 if rng.random() < 0.6 else float(G_mean * 10.0 ** rng.uniform(-6, 0))
    e = _exp10(rng, 0.6, -30, 30)
    ue = e / 2 if rng.random() < 0.9 else float(e)  # 10 %: factor entries themselves at 1e±30
    U = U * 10.0**ue
    shift *= 10.0 ** (2 * ue)
    Ud = _cast(U, dtype, backend)
    op = ih.LowRankPlusIdentity(Ud, shift=shift, scale=scale)
    U_ld = _host(Ud).astype(LD)
    A_ld = LD(s) * (U_ld.T @ U_ld) + LD(shift) * np.eye(d, dtype=LD)
    desc = dict(leaf=f"lowrank_{variant}", n=n, d=d, kappa=kappa, spectrum=shape, exp10=ue * 2,
                shift=shift, scale=scale)
    return Leaf(op, A_ld, G_mean * 10.0 ** (2 * ue), desc)


def _matrixfree_leaf(rng, d, dtype, backend, with_matmat):
    inner = _dense_leaf(rng, d, dtype, backend) if rng.random() < 0.5 else _lowrank_leaf(
        rng, d, dtype, backend, str(rng.choice(["wide", "tall", "gauss"])))
    io = inner.op
    tdt = None
    if backend == "torch":
        import torch

        tdt = torch.float32 if dtype == "float32" else torch.float64
    kw = {}
    if rng.random() < 0.5:
        kw["diagonal"] = io.diagonal()
    if isinstance(io, ih.LowRankPlusIdentity) and rng.random() < 0.5:
        kw["sampler"] = lambda b, g: io.minibatch(b, g)
        if rng.random() < 0.8:
            kw["n_samples"] = io.n_rows
    mm = (lambda V: io._matmat(V)) if with_matmat else None
    op = ih.MatrixFree(lambda v: io._matmat(v[:, None])[:, 0], d, tdt or np.dtype(dtype), psd=io.psd,
                       matmat=mm, **kw)
    desc = dict(leaf="matrixfree", matmat=with_matmat, inner=inner.desc, **{k: True for k in kw})
    return Leaf(op, inner.A, inner.g_mean, desc)


def _any_leaf(rng, d, dtype, backend, depth=0):
    c = rng.choice(["dense", "lr", "mf", "block"], p=[0.35, 0.45, 0.1, 0.1] if depth == 0 else [0.4, 0.5, 0.1, 0.0])
    if c == "dense":
        return _dense_leaf(rng, d, dtype, backend)
    if c == "lr":
        return _lowrank_leaf(rng, d, dtype, backend, str(rng.choice(["wide", "tall", "rankdef", "gauss"])))
    if c == "mf" or d < 2:
        return _matrixfree_leaf(rng, d, dtype, backend, bool(rng.random() < 0.5))
    return _block_leaf(rng, d, dtype, backend, depth + 1)


def _block_leaf(rng, d, dtype, backend, depth=0):
    L = int(rng.integers(2, 5)) if d >= 4 else 2
    L = min(L, d)
    cuts = np.sort(rng.choice(np.arange(1, d), L - 1, replace=False)) if L > 1 else []
    sizes = np.diff(np.concatenate([[0], cuts, [d]])).astype(int)
    kids = [_any_leaf(rng, int(s), dtype, backend, depth) for s in sizes]
    op = ih.BlockDiagonal([k.op for k in kids])
    A = np.zeros((d, d), dtype=LD)
    o = 0
    for k in kids:
        A[o:o + k.op.size, o:o + k.op.size] = k.A
        o += k.op.size
    desc = dict(leaf="block", sizes=sizes.tolist(), blocks=[k.desc for k in kids])
    leaf = Leaf(op, A, float(np.mean([k.g_mean for k in kids])), desc)
    leaf.kids = kids
    return leaf


def _draw_damping(rng, mean):
    if rng.random() < 0.03:
        return 0.0
    return float(10.0 ** rng.uniform(-12, 1) * mean)


# ----------------------------------------------------------------------------- reference
def reference(M, B, steps=8):
    """x with (M) x = B: float64 LU + refinement, residuals and x accumulated in long double.

    Returns (x float64 or None, relative error estimate = the last correction's size).
    """
    import scipy.linalg as sl

    M64 = M.astype(np.float64)
    if not np.all(np.isfinite(M64)):
        return None, np.inf
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lu = sl.lu_factor(M64, check_finite=False)
        x = sl.lu_solve(lu, B.astype(np.float64), check_finite=False).astype(LD)
    except (np.linalg.LinAlgError, ValueError):
        return None, np.inf
    if not np.all(np.isfinite(x)):
        return None, np.inf
    xn = np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=0))
    corr = np.full(B.shape[1], np.inf)
    for _ in range(steps):
        R = B.astype(LD) - M @ x
        dx = sl.lu_solve(lu, R.astype(np.float64), check_finite=False)
        if not np.all(np.isfinite(dx)):
            return None, np.inf
        x = x + dx.astype(LD)
        xn = np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=0))
        c = np.sqrt(np.sum(dx**2, axis=0)) / np.where(xn > 0, xn, 1.0)
        corr = c
        if np.all(c <= 1e-18):
            break
    x64 = x.astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kappa = float(np.linalg.cond(M64))
    # long-double residuals limit the refinement to about u_ld·κ (limiting accuracy of refinement)
    err = max(float(np.max(corr)), 2 * float(np.finfo(LD).eps) * kappa, 1.2e-16)
    if not (np.all(np.isfinite(x64)) and err <= 1e-6):
        return None, err
    return x64, err


def min_rayleigh(S, k=4):
    """(smallest Rayleigh quotient in long double over the k lowest float64 eigenvectors of S, max|eig|).

    The quotient is >= λ_min(S) up to long-double rounding: below 0 it certifies an indefinite S.
    """
    S64 = S.astype(np.float64)
    if not np.all(np.isfinite(S64)):
        return np.nan, np.nan
    w, V = np.linalg.eigh(S64)
    V = V[:, :k].astype(LD)
    q = np.sum(V * (S @ V), axis=0) / np.sum(V * V, axis=0)
    return float(np.min(q)), float(np.max(np.abs(w)))


def _psd_as_declared(leaves) -> bool:
    """False when some leaf's Rayleigh quotient is certainly below the eig_lower() it declares."""
    for _, lf in leaves:
        lo = lf.op.eig_lower()
        if lo is None or not lf.op.psd or lf.desc.get("inner", lf.desc)["leaf"].startswith("lowrank"):
            continue  # shift·I + s·UᵀU of the raw data is PSD by construction
        q, scale = min_rayleigh(lf.A)
        if q < lo - 4 * np.sqrt(lf.A.shape[0]) * 1.1e-19 * max(scale, lo):
            return False
    return True


def true_residual(p: Problem, X64) -> np.ndarray:
    """‖b − (A + λI)x‖ per column in long double from the raw data (float64 result)."""
    R = p.B.astype(LD) - p.M @ np.asarray(X64, dtype=LD)
    return np.sqrt(np.sum(R.astype(np.float64) ** 2, axis=0)) if np.all(np.isfinite(R)) else np.full(R.shape[1], np.inf)


# ----------------------------------------------------------------------------- problems
def make_problem(seed: int, index: int) -> Problem:
    rng = np.random.default_rng([seed, index])
    kind = str(rng.choice(OP_KINDS, p=np.asarray(OP_WEIGHTS) / sum(OP_WEIGHTS)))
    dtype = "float32" if rng.random() < 0.5 else "float64"
    backend = "torch" if rng.random() < TORCH_FRACTION else "numpy"
    d = int(np.exp(rng.uniform(np.log(2), np.log(61))))
    if kind in ("dense", "dense_indef"):
        leaf = _dense_leaf(rng, d, dtype, backend, indef=kind == "dense_indef")
    elif kind.startswith("lr_"):
        leaf = _lowrank_leaf(rng, max(d, 2), dtype, backend, kind[3:])
    elif kind == "block":
        leaf = _block_leaf(rng, max(d, 4), dtype, backend)
    else:
        leaf = _matrixfree_leaf(rng, d, dtype, backend, kind == "mf_mm")
    op = leaf.op
    d = op.size
    if kind == "block" and rng.random() < 0.5:
        damping = tuple(_draw_damping(rng, k.g_mean) for k in leaf.kids)
        lam = np.concatenate([np.full(k.op.size, v) for k, v in zip(leaf.kids, damping)])
    else:
        damping = _draw_damping(rng, leaf.g_mean)
        lam = np.full(d, damping)
    M = leaf.A + np.diag(lam.astype(LD))
    A64 = leaf.A.astype(np.float64)
    eig_A = np.linalg.eigvalsh(A64) if np.all(np.isfinite(A64)) else np.full(d, np.nan)
    eig_M = np.linalg.eigvalsh(M.astype(np.float64)) if np.all(np.isfinite(A64)) else np.full(d, np.nan)
    # right-hand side: 1-D or (d, k); sometimes along the smallest eigenvector (worst case)
    k = int(rng.choice([0, 1, 2, 3], p=[0.35, 0.25, 0.25, 0.15]))
    B = rng.standard_normal((d, max(k, 1)))
    if rng.random() < 0.2 and np.all(np.isfinite(eig_M)):
        w, V = np.linalg.eigh(M.astype(np.float64))
        B[:, 0] = V[:, np.argmin(np.abs(w))] + 1e-3 * B[:, 0] / np.sqrt(d)
    if rng.random() < 0.02:
        B[:, -1] = 0.0
    eb = _exp10(rng, 0.8, -30, 30)
    B = B * 10.0**eb
    rhs_np = np.ascontiguousarray(B[:, 0] if k == 0 else B, dtype=dtype)
    rhs = _cast(rhs_np, dtype, backend)
    B64 = rhs_np.reshape(d, -1).astype(np.float64)
    leaves = _flatten(leaf, 0)
    # M is block diagonal by leaves: one reference per leaf (its own κ limits the refinement)
    x_ref, ref_err = np.zeros_like(B64), 0.0
    for sl, _ in leaves:
        xl, el = reference(M[sl, sl], B64[sl])
        x_ref = None if xl is None or x_ref is None else x_ref
        ref_err = max(ref_err, el)
        if x_ref is not None:
            x_ref[sl] = xl
    desc = dict(kind=kind, d=d, k=k, rhs_exp10=eb, op=leaf.desc,
                damping=damping if isinstance(damping, float) else list(damping))
    return Problem(seed, index, kind, dtype, backend, op, rhs, damping, desc, M, lam, B64, x_ref, ref_err,
                   eig_A, eig_M, bool(op.psd), leaves, _psd_as_declared(leaves), min_rayleigh(M)[0])


def _flatten(leaf, off):
    kids = getattr(leaf, "kids", None)
    if not kids:
        return [(slice(off, off + leaf.op.size), leaf)]
    out = []
    for k in kids:
        out += _flatten(k, off)
        off += k.op.size
    return out


def all_lowrank(op) -> bool:
    if isinstance(op, ih.BlockDiagonal):
        return all(all_lowrank(b) for b in op.blocks)
    return isinstance(op, ih.LowRankPlusIdentity)


def has_diagonal(op) -> bool:
    try:
        op.diagonal()
        return True
    except ih.errors.UnsupportedOperatorError:
        return False
