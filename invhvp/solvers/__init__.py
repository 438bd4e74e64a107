"""Inverse solvers: one inverse per solver, behind :func:`inverse` and :func:`solve`."""

from .api import choose_solver, inverse, solve
from .base import Solver
from .block import BlockInverse
from .cg import CG
from .datainf import DataInf
from .exact import Exact
from .identity import Identity
from .inverse import Inverse
from .lissa import LiSSA
from .lowrank import Nystrom
from .nystrom import NystromPreconditioner
from .precond import Jacobi, Preconditioner

__all__ = [
    "LiSSA",
    "DataInf",
    "Identity",
    "solve",
    "inverse",
    "choose_solver",
    "Solver",
    "Inverse",
    "BlockInverse",
    "Exact",
    "CG",
    "Preconditioner",
    "Jacobi",
    "Nystrom",
    "NystromPreconditioner",
]
