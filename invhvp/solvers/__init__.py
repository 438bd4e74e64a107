"""Inverse solvers behind one ``solve`` front end."""

from .api import choose_solver, solve
from .base import Solver
from .cg import CG
from .exact import Exact

__all__ = ["solve", "choose_solver", "Solver", "Exact", "CG"]
