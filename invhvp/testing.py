"""Public contract checks for invhvp operators.

Use :func:`check_operator` on an operator you wrote yourself (for example a
Hessian-vector product wrapped in :class:`invhvp.MatrixFree`) before handing it
to a solver: it catches the mistakes that make CG silently wrong (an asymmetric
or non-linear product, a lost dtype, a tensor moved to another device).
"""

from __future__ import annotations

import math

import numpy as np

from . import _backend as B
from .errors import DTypeError, InvhvpError, OperatorContractError
from .operators.base import Operator

__all__ = ["check_operator"]

#: Largest size for which :func:`check_operator` materializes ``to_dense()``.
DENSE_CHECK_MAX = 2048


def _host64(x) -> np.ndarray:
    """float64 numpy copy of a numpy array or torch tensor (test helper: copies to host)."""
    return B.to_host(x, np.float64)


def _like_op(op: Operator, a: np.ndarray):
    """``a`` (numpy float64) converted to the operator's array library, dtype and device."""
    if B.is_torch(op.xp):
        import torch

        return torch.as_tensor(a, dtype=op.dtype, device=op.device)
    return np.asarray(a, dtype=op.dtype)


def _fail(op, what: str):
    raise OperatorContractError(f"{type(op).__name__} (size {op.size}): {what}")


def _call(op, what, f, *args):
    """Call ``f(*args)``; an invhvp error raised inside becomes an OperatorContractError."""
    try:
        return f(*args)
    except InvhvpError as exc:
        if isinstance(exc, OperatorContractError):
            raise
        raise OperatorContractError(
            f"{type(op).__name__} (size {op.size}): {what} raised {type(exc).__name__}: {exc}"
        ) from exc


def _check_array(op, out, want_shape, what):
    try:
        B.check_compatible(out, xp=op.xp, dtype=op.dtype, device=op.device, name=what)
    except (DTypeError, ValueError, TypeError) as exc:
        _fail(op, f"{what} does not preserve array type/dtype/device: {exc}")
    if tuple(out.shape) != want_shape:
        _fail(op, f"{what} returned shape {tuple(out.shape)}, expected {want_shape}")
    if not bool(np.all(np.isfinite(_host64(out)))):
        _fail(op, f"{what} returned NaN or infinite values for finite input")


def check_operator(op, *, rtol=None, rng=0) -> None:
    r"""Check that ``op`` honours the invhvp operator contract; raise on the first violation.

    Checks, with random Gaussian probes drawn from ``rng``:

    - ``shape == (size, size)`` with ``size >= 1``; ``dtype`` is float32 or float64;
    - ``matvec`` and ``matmat`` return the operator's array type, dtype, device and the
      right shape, and finite values;
    - ``matvec(v)`` equals the matching column of ``matmat(V)``;
    - linearity: ``A(αu + βv) = αAu + βAv``;
    - symmetry: ``uᵀ(Av) = vᵀ(Au)``;
    - ``to_dense()`` is consistent with ``matmat`` (only when ``size <= 2048``);
    - if ``op.psd``: ``vᵀAv >= −tol`` for every probe.

    Comparisons are relative to ``‖A‖_est·‖v‖`` where ``‖A‖_est`` is the largest
    ``‖Av‖/‖v‖`` over the probes, with tolerance ``rtol`` (default
    ``200·eps(dtype)·√size``).  Costs 8 products plus ``to_dense`` for small sizes.

    Parameters
    ----------
    op : invhvp.Operator
        The operator to check.
    rtol : float, optional
        Relative tolerance of every comparison (see above).
    rng : numpy.random.Generator or int, default 0
        Source of the random probes.

    Raises
    ------
    invhvp.errors.OperatorContractError
        With a message that names the broken property and the measured discrepancy.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> from invhvp.testing import check_operator
    >>> check_operator(ih.Dense(np.array([[2.0, 1.0], [1.0, 2.0]])))  # passes silently
    >>> A = np.array([[1.0, 2.0], [0.0, 1.0]])                       # not symmetric
    >>> check_operator(ih.MatrixFree(lambda v: A @ v, size=2, dtype=np.float64))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    invhvp.errors.OperatorContractError: MatrixFree (size 2): not symmetric: ...
    """
    if not isinstance(op, Operator):
        raise OperatorContractError(f"expected an invhvp Operator, got {type(op).__name__}")
    size = op.size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        _fail(op, f"size must be a positive int, got {size!r}")
    if tuple(op.shape) != (size, size):
        _fail(op, f"shape {op.shape} is not (size, size) = ({size}, {size})")
    try:
        B.normalize_dtype(op.dtype)
    except DTypeError:
        _fail(op, f"dtype must be float32 or float64, got {op.dtype!r}")
    if op.xp is None:
        _fail(op, "no array namespace (op.xp is None)")
    if not isinstance(op.psd, bool):
        _fail(op, f"psd must be a bool, got {op.psd!r}")

    eps = B.eps(op.dtype)
    tol = 200.0 * eps * math.sqrt(size) if rtol is None else float(rtol)
    gen = np.random.default_rng(rng)
    k = 3
    V64 = gen.standard_normal((size, k))
    V = _like_op(op, V64)
    V64 = _host64(V)  # the probes exactly as the operator sees them

    AV = _call(op, "matmat", op.matmat, V)
    _check_array(op, AV, (size, k), "matmat")
    AV64 = _host64(AV)
    vnorm = np.linalg.norm(V64, axis=0)
    a_est = float(np.max(np.linalg.norm(AV64, axis=0) / vnorm))
    if a_est == 0.0:
        a_est = np.finfo(np.float64).tiny

    def close(x, y, scale, what):
        err = float(np.linalg.norm(x - y))
        if not err <= tol * scale:
            _fail(op, f"{what}: discrepancy {err:.3g} exceeds rtol·‖A‖·‖v‖ = {tol * scale:.3g}")

    # matvec agrees with matmat, column by column
    for j in range(k):
        Av = _call(op, "matvec", op.matvec, V[:, j])
        _check_array(op, Av, (size,), "matvec")
        close(_host64(Av), AV64[:, j], a_est * vnorm[j], f"matvec(V[:, {j}]) differs from matmat(V)[:, {j}]")

    # linearity
    alpha, beta = 0.75, -1.25
    W64 = alpha * V64[:, 0] + beta * V64[:, 1]
    AW = _call(op, "matvec", op.matvec, _like_op(op, W64))
    close(
        _host64(AW),
        alpha * AV64[:, 0] + beta * AV64[:, 1],
        a_est * (abs(alpha) * vnorm[0] + abs(beta) * vnorm[1]),
        "not linear: A(αu + βv) differs from αAu + βAv",
    )

    # symmetry: uᵀAv = vᵀAu
    for i, j in ((0, 1), (0, 2), (1, 2)):
        uAv = float(V64[:, i] @ AV64[:, j])
        vAu = float(V64[:, j] @ AV64[:, i])
        scale = a_est * vnorm[i] * vnorm[j]
        if not abs(uAv - vAu) <= tol * scale:
            _fail(
                op,
                f"not symmetric: uᵀAv = {uAv:.6g} but vᵀAu = {vAu:.6g} "
                f"(difference {abs(uAv - vAu):.3g} > rtol·‖A‖·‖u‖·‖v‖ = {tol * scale:.3g})",
            )

    # positive semidefiniteness, if claimed
    if op.psd:
        for j in range(k):
            q = float(V64[:, j] @ AV64[:, j])
            if not q >= -tol * a_est * vnorm[j] ** 2:
                _fail(op, f"claims psd=True but vᵀAv = {q:.6g} < 0 for a random probe v")

    # to_dense, for small operators
    if size <= DENSE_CHECK_MAX:
        D = _call(op, "to_dense", op.to_dense)
        _check_array(op, D, (size, size), "to_dense")
        D64 = _host64(D)
        for j in range(k):
            close(
                D64 @ V64[:, j],
                AV64[:, j],
                a_est * vnorm[j],
                f"to_dense() @ v differs from matmat (column {j})",
            )
