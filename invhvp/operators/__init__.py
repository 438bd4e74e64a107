"""Operators: square symmetric linear maps that solvers invert with damping."""

from .base import Operator
from .block_diagonal import BlockDiagonal
from .dense import Dense
from .low_rank import LowRankPlusIdentity
from .matrix_free import MatrixFree

__all__ = ["Operator", "Dense", "BlockDiagonal", "LowRankPlusIdentity", "MatrixFree"]
