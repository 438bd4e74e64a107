"""Inverse solvers behind one ``solve`` front end."""

from .api import choose_solver, solve
from .base import Solver
from .cg import CG
from .datainf import DataInf
from .exact import Exact
from .identity import Identity
from .lissa import LiSSA

__all__ = ["LiSSA", "DataInf", "Identity", "solve", "choose_solver", "Solver", "Exact", "CG"]
