"""Preconditioners for CG (and preconditioned LiSSA): factories that know the damping.

A :class:`Preconditioner` is built once per block by :meth:`Preconditioner.build`
``(operator, damping, rng) -> Applied``: an approximation ``P⁻¹ ≈ (A + λI)⁻¹`` that is
symmetric positive definite, applied to ``(d, k)`` arrays.  Strings and user objects are
turned into factories by :func:`as_preconditioner`:

- ``None`` -- no preconditioning;
- ``"jacobi"`` -- ``1/(diag(A) + λ)`` per block (:class:`Jacobi`);
- an invhvp operator or a callable ``V -> P⁻¹V`` -- fixed, used as given (:class:`Fixed`);
- any :class:`Preconditioner` (e.g. the randomized Nyström preconditioner).
"""

from __future__ import annotations

import abc

from .. import _backend as Bk
from ..errors import InputError, NotPositiveDefiniteError, ShapeError
from ..operators.base import Operator

__all__ = ["Preconditioner", "Applied", "Jacobi", "Fixed", "as_preconditioner"]


class Applied:
    """A built preconditioner: ``applied(R)`` returns ``P⁻¹R`` for ``R`` of shape ``(d, k)``.

    ``info`` describes it (name, rank, cost); ``n_matvec`` counts the operator products
    its construction spent.
    """

    def __init__(self, fn, name: str, size: int, info: dict | None = None, n_matvec: int = 0):
        self._fn, self.name, self.size = fn, name, size
        self.info = {"name": name, **(info or {})}
        self.n_matvec = n_matvec

    def __call__(self, R):
        out = self._fn(R)
        if tuple(getattr(out, "shape", ())) != tuple(R.shape):
            raise ShapeError(
                f"preconditioner: returned shape {tuple(getattr(out, 'shape', ()))} for an input of shape "
                f"{tuple(R.shape)}; it must return P⁻¹R of the same shape"
            )
        return out


class Preconditioner(abc.ABC):
    """A factory ``(operator, damping) -> Applied``; built once per block and reused."""

    #: whether a full-size instance can be built per block of a BlockDiagonal
    per_block = True

    @abc.abstractmethod
    def build(self, op: Operator, damping, rng=None) -> Applied: ...

    def build_with_lower(self, op: Operator, damping, rng=None, eig_lower=None) -> Applied:
        """``build`` for an operator with ``psd=False`` whose lower end ``eig_lower`` a solver certified.

        The default ignores ``eig_lower`` (Jacobi and fixed preconditioners do not need it); the
        Nyström preconditioner sketches ``A − eig_lower·I``.
        """
        return self.build(op, damping, rng)


class Jacobi(Preconditioner):
    """``P⁻¹ = diag(1/(A_ii + λ))``: needs the operator's ``diagonal()``; ``O(d)`` per column."""

    def build(self, op, damping, rng=None):
        lam = op.per_coordinate(damping)[:, None] if isinstance(damping, tuple) else float(damping)
        diag = op.diagonal()[:, None] + lam
        if not bool(op.xp.all(diag > 0)):
            raise NotPositiveDefiniteError("preconditioner='jacobi': diag(A) + damping has non-positive entries")
        inv = 1.0 / diag
        return Applied(lambda R: inv * R, "jacobi", op.size)


class Fixed(Preconditioner):
    """A user's ``P⁻¹`` (an invhvp operator, or a callable ``(d, k) -> (d, k)``), used as given."""

    per_block = False  # it is sized for the whole operator

    def __init__(self, p):
        self.p = p

    def build(self, op, damping, rng=None):
        p = self.p
        if isinstance(p, Operator):
            if p.size != op.size or p.xp is not op.xp or p.dtype != op.dtype or p.device != op.device:
                raise InputError(
                    "preconditioner: operator must match the solved operator's size, array library, "
                    f"dtype and device; got {p!r} for {op!r}"
                )
            return Applied(p._matmat, type(p).__name__, op.size)

        def call(R):
            out = p(R)
            Bk.check_compatible(out, xp=op.xp, dtype=op.dtype, device=op.device, name="preconditioner output")
            return out

        return Applied(call, getattr(p, "__name__", "callable"), op.size)


def as_preconditioner(p) -> Preconditioner | None:
    """The factory for a ``preconditioner=`` argument (see the module docstring)."""
    if p is None or isinstance(p, Preconditioner):
        return p
    if isinstance(p, str):
        if p == "jacobi":
            return Jacobi()
        if p == "nystrom":
            from .nystrom import NystromPreconditioner

            return NystromPreconditioner()
        raise InputError(f"preconditioner: unknown name {p!r}; expected 'jacobi', 'nystrom', None or an object")
    if isinstance(p, Operator) or callable(p):
        return Fixed(p)
    raise InputError(
        f"preconditioner: expected None, 'jacobi', 'nystrom', a Preconditioner, an invhvp operator or a "
        f"callable, got {p!r}"
    )
