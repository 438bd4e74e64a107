"""Hypothesis properties of the exact and CG solvers.

Strategies draw a seed and a *spectrum* (log-uniform eigenvalues with a known condition
number), so a failing example shrinks towards a small, well-conditioned problem and the
tolerance ``c·κ·eps`` is meaningful.  The "ci" profile (tests/conftest.py) is deterministic.
"""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import invhvp as ih

EPS64 = float(np.finfo(np.float64).eps)


@st.composite
def spectra(draw, max_d=24, max_log10_kappa=8.0):
    """(seed, eigenvalues): d eigenvalues log-uniform in [1, κ] with both ends present."""
    seed = draw(st.integers(0, 2**32 - 1))
    d = draw(st.integers(2, max_d))
    log10_kappa = draw(st.floats(0.0, max_log10_kappa))
    t = np.random.default_rng(seed).uniform(0.0, 1.0, d)
    t[0], t[-1] = 0.0, 1.0
    return seed, np.sort(10.0 ** (log10_kappa * t))


def _orthogonal(rng, d):
    Q, R = np.linalg.qr(rng.standard_normal((d, d)))
    return Q * np.sign(np.diag(R))


def _spd(seed, ev):
    Q = _orthogonal(np.random.default_rng(seed + 1), ev.size)
    M = (Q * ev) @ Q.T
    return (M + M.T) / 2


def _rel(x, y):
    return np.linalg.norm(x - y) / np.linalg.norm(y)


@given(spectra(), st.floats(0.0, 1.0))
def test_exact_dense_within_kappa_eps(spec, damping):
    seed, ev = spec
    M = _spd(seed, ev)
    b = np.random.default_rng(seed + 2).standard_normal(ev.size)
    x = ih.solve(ih.Dense(M), b, ih.Exact(), damping=damping).x
    kappa = (ev[-1] + damping) / (ev[0] + damping)
    # reference: the same system solved by LU in extended steps (np.linalg.solve), both O(κ·eps)
    xref = np.linalg.solve(M + damping * np.eye(ev.size), b)
    assert _rel(x, xref) <= 50 * ev.size * kappa * EPS64


@given(spectra(max_d=12, max_log10_kappa=4.0), st.integers(13, 60), st.floats(1e-2, 10.0))
def test_woodbury_equals_dense_cholesky(spec, d, damping):
    """U (n×d, n < d) with singular values sqrt(n·ev): the low-rank part has κ = ev[-1]/ev[0]."""
    seed, ev = spec
    n = ev.size
    rng = np.random.default_rng(seed + 3)
    Vt = _orthogonal(rng, d)[:n]
    U = (_orthogonal(rng, n) * np.sqrt(n * ev)) @ Vt
    op = ih.LowRankPlusIdentity(U)
    B = rng.standard_normal((d, 2))
    xw = ih.solve(op, B, ih.Exact(woodbury=True), damping=damping)
    xc = ih.solve(op, B, ih.Exact(woodbury=False), damping=damping)
    assert xw.info["method"] == "woodbury" and xc.info["method"] == "cholesky"
    kappa = (ev[-1] + damping) / damping
    assert _rel(xw.x, xc.x) <= 100 * d * kappa * EPS64
    # and both solve the system
    xref = np.linalg.solve(U.T @ U / n + damping * np.eye(d), B)
    assert _rel(xw.x, xref) <= 100 * d * kappa * EPS64


@given(spectra(max_d=30, max_log10_kappa=6.0), st.floats(1e-3, 1.0), st.sampled_from([1e-2, 1e-5, 1e-9]))
def test_cg_a_posteriori_bound(spec, damping, rtol):
    seed, ev = spec
    ev = ev - ev[0]  # PSD, singular: damping makes it definite
    M = _spd(seed, ev)
    d = ev.size
    B = np.random.default_rng(seed + 4).standard_normal((d, 2))
    res = ih.solve(ih.Dense(M), B, ih.CG(rtol=rtol, maxiter=50 * d), damping=damping, on_failure="ignore")
    Ad = M + damping * np.eye(d)
    xstar = np.linalg.solve(Ad, B)
    r = np.linalg.norm(B - Ad @ res.x, axis=0)
    err = np.linalg.norm(res.x - xstar, axis=0)
    kappa = (ev[-1] + damping) / damping
    # the reported bound is (‖r‖ + δ)/λ with the rounding allowance δ > 0, and it holds
    bound = res.info["error_bound"]
    assert np.all(bound > res.residual_norm / damping) and np.all(bound >= err - 10 * d * kappa * EPS64)
    # SUCCESS is a claim about the true residual (not the recursive one)
    if res.ok:
        assert np.all(r <= rtol * np.linalg.norm(B, axis=0) * (1 + 1e-10) + 10 * d * EPS64 * kappa)
    else:
        assert res.status is ih.Status.MAX_ITER


@given(
    st.lists(spectra(max_d=8, max_log10_kappa=3.0), min_size=1, max_size=4),
    st.lists(st.floats(1e-3, 2.0), min_size=4, max_size=4),
)
def test_block_diagonal_equals_separate_solves(specs, dampings):
    mats = [_spd(seed, ev) for seed, ev in specs]
    lam = dampings[: len(mats)]
    op = ih.BlockDiagonal([ih.Dense(M) for M in mats])
    d = sum(M.shape[0] for M in mats)
    b = np.random.default_rng(len(mats)).standard_normal(d)
    x = ih.solve(op, b, ih.Exact(), damping=lam).x
    offsets = np.cumsum([0] + [M.shape[0] for M in mats])
    for M, lo, hi, lm in zip(mats, offsets[:-1], offsets[1:], lam):
        alone = ih.solve(ih.Dense(M), b[lo:hi], ih.Exact(), damping=lm).x
        np.testing.assert_allclose(x[lo:hi], alone, rtol=1e-13, atol=0)
        np.testing.assert_allclose(x[lo:hi], np.linalg.solve(M + lm * np.eye(hi - lo), b[lo:hi]), rtol=1e-9)
