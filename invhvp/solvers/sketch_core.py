"""The growing Nyström sketch: test vectors, products, float64 Grams and the small factorizations.

Internal to :mod:`invhvp.solvers.sketch` (which documents the algorithm and its numerics).
"""

from __future__ import annotations

import math

from .. import _backend as Bk
from .._arrays import random_matrix, row_chunks, rows_per_chunk
from ..errors import NonFiniteError, NotPositiveDefiniteError

__all__ = ["Sketch"]


def _sym(M):
    return (M + M.T) / 2


def _cholqr(xp, Z, what):
    """``Z C⁻ᵀ`` with ``ZᵀZ = CCᵀ`` (Gram in the working dtype, factor in float64): orthonormalizes ``Z``."""
    G = _sym(xp.astype(Z.T @ Z, xp.float64))
    C = Bk.cholesky(xp, G, what)
    eye = xp.eye(int(Z.shape[1]), dtype=xp.float64, device=Bk.device_of(Z))
    return Z @ xp.astype(Bk.solve_triangular(xp, C, eye).T, Z.dtype)


class Sketch:
    """A growing sketch: ``Ω`` (orthonormal), ``Y = HΩ`` and the float64 Grams ``YᵀY``, ``ΩᵀY``."""

    def __init__(self, counted, shift: float, gen):
        self.counted, self.shift, self.gen = counted, float(shift), gen
        op = counted.op
        self.xp, self.op = op.xp, op
        self.Om = self.Y = self.G_yy = self.G_oy = None

    @property
    def ell(self) -> int:
        return 0 if self.Om is None else int(self.Om.shape[1])

    def add(self, k: int) -> None:
        """``k`` new Gaussian columns orthonormal to the old ones (Cholesky-QR twice); ``k`` products."""
        xp, op = self.xp, self.op
        Z = random_matrix(xp, (op.size, k), op.dtype, op.device, self.gen, kind="normal")
        for _ in range(2):
            if self.Om is not None:
                Z = Z - self.Om @ (self.Om.T @ Z)
            Z = _cholqr(xp, Z, "Gram matrix of the sketch's test vectors")
        HZ = self.counted.matmat(Z)
        if self.shift != 0.0:
            HZ = HZ - self.shift * Z
        # the new blocks of the float64 Grams in one pass over row chunks (each chunk cast once)
        old = 0 if self.Om is None else self.ell
        acc = None
        for sl in row_chunks(op.size, rows_per_chunk(2 * (old + k))):
            z, hz = xp.astype(Z[sl, :], xp.float64), xp.astype(HZ[sl, :], xp.float64)
            parts = [z.T @ hz, hz.T @ hz]
            if old:
                oy = xp.concat([self.Om[sl, :], self.Y[sl, :]], axis=1)
                parts.append(xp.astype(oy, xp.float64).T @ hz)
            acc = parts if acc is None else [a + b for a, b in zip(acc, parts)]
        f, b = acc[0], _sym(acc[1])
        if not old:
            self.Om, self.Y, self.G_oy, self.G_yy = Z, HZ, f, b
            return
        # ZᵀY_old = ZᵀHΩ_old = (Ω_oldᵀHZ)ᵀ: H is symmetric, and ΩᵀY is symmetrized before use
        c, a = acc[2][:old, :], acc[2][old:, :]
        e = c.T
        self.G_yy = xp.concat([xp.concat([self.G_yy, a], axis=1), xp.concat([a.T, b], axis=1)], axis=0)
        self.G_oy = xp.concat([xp.concat([self.G_oy, c], axis=1), xp.concat([e, f], axis=1)], axis=0)
        self.Om, self.Y = xp.concat([self.Om, Z], axis=1), xp.concat([self.Y, HZ], axis=1)

    def core(self) -> dict:
        """``ΩᵀY_ν = CCᵀ`` and the eigenvalues ``σ²`` of ``Ĥ_ν`` (descending, float64 on the device).

        float32 working precision: ``K = C⁻¹ Y_νᵀY_ν C⁻ᵀ`` from the float64 Grams (``ν² ≈ eps₃₂²‖Y‖²``
        is far above float64 rounding, so nothing is lost).  float64: the Gram would square the
        condition number below the working precision, so ``B = Y_ν C⁻ᵀ = QR_B`` and
        ``σ = svd(R_B)`` (the published algorithm, Householder QR).
        """
        xp, ell = self.xp, self.ell
        fro = math.sqrt(max(float(xp.sum(xp.linalg.diagonal(self.G_yy))), 0.0))
        if not math.isfinite(fro):
            raise NonFiniteError("operator: its products with the sketch matrix are not finite")
        eye = xp.eye(ell, dtype=xp.float64, device=self.op.device)
        nu = max(Bk.eps(self.op.dtype) * fro, 1e-300)
        S = _sym(self.G_oy)
        for attempt in range(4):
            try:
                C = Bk.cholesky(xp, S + nu * eye, "sketch core ΩᵀY_ν")
                break
            except NotPositiveDefiniteError:
                if attempt == 3:
                    raise NotPositiveDefiniteError(
                        f"Nyström sketch: ΩᵀHΩ + νI is not positive definite even with ν = {nu:.3g}: the "
                        "operator (minus its lower bound) is not positive semidefinite, or not symmetric"
                    ) from None
                nu *= 10.0
        if Bk.eps(self.op.dtype) > 1e-10:
            G = self.G_yy + nu * (self.G_oy + self.G_oy.T) + (nu * nu) * eye
            X = Bk.solve_triangular(xp, C, G)
            K = _sym(Bk.solve_triangular(xp, C, X.T).T)
            return {"C": C, "nu": nu, "K": K, "sig2": xp.flip(xp.linalg.eigvalsh(K), axis=0)}
        B = Bk.solve_triangular(xp, C, (self.Y + nu * self.Om).T).T
        Q, Rb = xp.linalg.qr(B)
        Ur, sv, _ = xp.linalg.svd(Rb, full_matrices=False)
        return {"C": C, "nu": nu, "Q": Q, "Ur": Ur, "sig2": sv * sv}

    def implicit_residual(self, C, nu):
        """``x ↦ (H + ν)x − Y_ν(ΩᵀY_ν)⁻¹Y_νᵀx`` (``E_ν``, with ``‖E‖ <= ‖E_ν‖ + ν``) without forming ``V``."""
        xp, Y, Om = self.xp, self.Y, self.Om

        def mm(X):
            out = self.counted.matmat(X)
            if self.shift != 0.0:
                out = out - self.shift * X
            w = xp.astype(Bk.cho_solve(xp, C, xp.astype(Y.T @ X + nu * (Om.T @ X), xp.float64)), X.dtype)
            return out + nu * X - (Y @ w + nu * (Om @ w))

        return mm

    def finish(self, core: dict):
        """``(V, σ² descending)`` with ``V`` orthonormal to working precision.

        float32: ``V = Y_ν C⁻ᵀ W Σ⁻¹`` formed in float64 row chunks (in float32 this product
        would lose orthogonality in proportion to ``λ̂_1/λ̂_i``); float64: ``V = Q_B U_R``.
        """
        xp = self.xp
        if "Q" in core:
            return core["Q"] @ core["Ur"], core["sig2"]
        w, W = xp.linalg.eigh(core["K"])
        w, W = xp.flip(w, axis=0), xp.flip(W, axis=1)
        Zc = Bk.solve_triangular(xp, core["C"], W, trans=True)
        R = Zc / xp.sqrt(xp.where(w > 0, w, xp.ones_like(w)))[None, :]
        Y, Om, nu = self.Y, self.Om, core["nu"]
        parts = []
        for sl in row_chunks(self.op.size, rows_per_chunk(3 * self.ell)):
            yn = xp.astype(Y[sl, :], xp.float64) + nu * xp.astype(Om[sl, :], xp.float64)
            parts.append(xp.astype(yn @ R, self.op.dtype))
        V = parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
        return V, w
