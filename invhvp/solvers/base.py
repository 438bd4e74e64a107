"""Solver protocol and matvec counting.

A :class:`Solver` is a frozen configuration.  Its one job is :meth:`Solver._factor`: do the
one-time work for one operator and one damping value (a factorization, row weights, a
sketch, a plan) and return an :class:`~invhvp.solvers.inverse.Inverse` that applies the
result to any number of right-hand sides.  :func:`invhvp.inverse` calls it once per block
of a :class:`~invhvp.BlockDiagonal` (unless the solver works on the joint operator).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from ..operators.base import Operator
from ..result import Status

__all__ = ["Solver", "Counted", "Outcome"]


class _Counter:
    __slots__ = ("n",)

    def __init__(self):
        self.n = 0


class Counted:
    """Wraps an operator and counts the vectors it is applied to.

    ``counted.op`` is the underlying operator (for structure-aware solvers);
    ``counted.matmat(V)`` applies it to ``V`` (``d×k``) and adds ``k`` to the count;
    ``counted.add(k)`` counts work done outside ``matmat`` (e.g. forming a Gram matrix).
    """

    __slots__ = ("op", "counter")

    def __init__(self, op: Operator, counter: _Counter | None = None):
        self.op = op
        self.counter = _Counter() if counter is None else counter

    def matmat(self, V):
        self.counter.n += int(V.shape[1])
        return self.op._matmat(V)

    def add(self, k) -> None:
        self.counter.n += int(k)

    @property
    def n(self) -> int:
        return self.counter.n


@dataclass
class Outcome:
    """What an inverse's ``_apply`` returns for a ``(d, k)`` right-hand side.

    ``residual``, when the solver computed the true residual ``B − (A + λI)X`` itself
    (CG does, to restart), saves the front end a product; ``residual_u`` is the unit roundoff
    it was computed in when that is finer than the operator's dtype (a float64 residual of a
    float32 solve), and sets the check's rounding allowance.
    """

    x: Any
    status: Status = Status.SUCCESS
    n_iter: int = 0
    info: dict = field(default_factory=dict)
    residual: Any = None
    check_matvec: int = 0
    residual_u: float | None = None


class Solver(abc.ABC):
    """Base class of invhvp solvers (frozen configuration objects).

    Subclasses implement :meth:`_factor` and may override :meth:`check_supported`
    (refuse an operator up front, with a message that says what to use instead) and
    :meth:`splits_blocks` (``False`` to solve a block-diagonal operator jointly).
    """

    name: str = "solver"

    def splits_blocks(self) -> bool:
        """Whether :func:`invhvp.inverse` factors each block of a BlockDiagonal on its own."""
        return True

    def check_supported(self, op: Operator) -> None:
        """Raise UnsupportedOperatorError before any work if ``op`` (one block) cannot be handled."""
        return None

    def _per_block(self, op, rng=None) -> list:
        """``(solver, rng)`` for each block of a BlockDiagonal ``op``.

        The default uses this configuration unchanged and no randomness; CG splits ``atol``
        and ``x0`` over the blocks, LiSSA draws independent generators.
        """
        return [(self, None)] * op.n_blocks

    @abc.abstractmethod
    def _factor(self, counted: Counted, damping, rng=None):
        """The one-time work for ``counted.op`` and ``damping``; returns an Inverse."""
