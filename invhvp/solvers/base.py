"""Solver protocol, matvec counting and per-block damping helpers."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from ..operators.base import Operator
from ..operators.block_diagonal import BlockDiagonal
from ..result import Status

__all__ = ["Solver", "Counted", "Outcome", "damping_for_blocks", "damping_array"]


class _Counter:
    __slots__ = ("n",)

    def __init__(self):
        self.n = 0


class Counted:
    """Wraps an operator and counts the vectors it is applied to.

    ``counted.op`` is the underlying operator (for structure-aware solvers);
    ``counted.matmat(V)`` applies it to ``V`` (``d×k``) and adds ``k`` to the count.
    ``counted.wrap(block)`` shares the counter with a sub-operator.
    """

    __slots__ = ("op", "counter")

    def __init__(self, op: Operator, counter: _Counter | None = None):
        self.op = op
        self.counter = _Counter() if counter is None else counter

    def matmat(self, V):
        self.counter.n += int(V.shape[1])
        return self.op._matmat(V)

    def wrap(self, op: Operator) -> Counted:
        return Counted(op, self.counter)

    @property
    def n(self) -> int:
        return self.counter.n


@dataclass
class Outcome:
    """What a solver's ``_run`` returns to :func:`invhvp.solve`."""

    x: Any
    status: Status = Status.SUCCESS
    n_iter: int = 0
    info: dict = field(default_factory=dict)


class Solver(abc.ABC):
    """Base class of invhvp solvers.

    A solver is a frozen configuration object; :func:`invhvp.solve` validates the
    inputs and calls ``_run(counted, B, damping)`` with ``B`` a ``(d, k)`` array and
    ``damping`` a float or, for :class:`~invhvp.BlockDiagonal`, a tuple of floats
    (one per block).
    """

    name: str = "solver"

    @abc.abstractmethod
    def _run(self, counted: Counted, B, damping) -> Outcome: ...

    def _check_supported(self, op: Operator) -> None:
        """Raise UnsupportedOperatorError before any work if ``op`` cannot be handled."""
        return None


def damping_for_blocks(op: BlockDiagonal, damping) -> tuple[float, ...]:
    """One damping value per block of ``op`` from a scalar or a per-block tuple."""
    if isinstance(damping, tuple):
        return damping
    return (float(damping),) * op.n_blocks


def damping_array(op: Operator, damping):
    """``damping`` as a float, or as a ``(d, 1)`` array when it differs per block."""
    if not isinstance(damping, tuple):
        return float(damping)
    if len(set(damping)) == 1:
        return float(damping[0])
    from ..operators.block_diagonal import expand_block_values

    return expand_block_values(op, damping)[:, None]
