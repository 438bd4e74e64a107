"""invhvp: apply inverse damped Hessian / Gauss-Newton matrices to vectors, (H + λI)⁻¹ v.

Flat public API::

    import invhvp as ih
    res = ih.solve(ih.LowRankPlusIdentity(U), b, ih.Exact(), damping=1e-3)
    res.x, res.status, res.residual_norm, res.info
"""

from . import bounds, errors
from .errors import ConvergenceError
from .operators import BlockDiagonal, Dense, LowRankPlusIdentity, MatrixFree, Operator
from .result import SolveResult, Status
from .solvers import CG, Exact, Solver, choose_solver, solve

__version__ = "0.1.0"

__all__ = [
    "bounds",
    "errors",
    "ConvergenceError",
    "Operator",
    "Dense",
    "BlockDiagonal",
    "LowRankPlusIdentity",
    "MatrixFree",
    "SolveResult",
    "Status",
    "Solver",
    "Exact",
    "CG",
    "solve",
    "choose_solver",
]
