"""invhvp: apply inverse damped Hessian / Gauss-Newton matrices to vectors, (H + λI)⁻¹ v.

Flat public API::

    import invhvp as ih
    res = ih.solve(ih.LowRankPlusIdentity(U), b, ih.Exact(), damping=1e-3)
    res.x, res.status, res.residual_norm, res.info
    inv = ih.inverse(ih.LowRankPlusIdentity(U), damping=1e-3)   # factor once
    inv @ b, inv.solve(B), inv.quad(T)                        # apply many times
"""

from . import bounds, distributed, errors, estimators, interop, scale
from .damping import default_damping
from .errors import ConvergenceError
from .estimators import EigEstimate, TraceEstimate, lambda_max, trace
from .influence import average_influence, gradient_inverse, influence_matrix, self_influence
from .operators import BlockDiagonal, Dense, LowRankPlusIdentity, MatrixFree, Operator
from .result import SolveResult, Status
from .scale import influence_scores
from .solvers import (
    CG,
    BlockInverse,
    DataInf,
    Exact,
    Identity,
    Inverse,
    Jacobi,
    LiSSA,
    Nystrom,
    NystromPreconditioner,
    Preconditioner,
    Solver,
    choose_solver,
    inverse,
    solve,
)
from .store import GradientStore, StoreFormatError, fingerprint_module

__version__ = "0.1.0"

__all__ = [
    "LiSSA",
    "estimators",
    "lambda_max",
    "trace",
    "EigEstimate",
    "TraceEstimate",
    "DataInf",
    "Identity",
    "default_damping",
    "influence_matrix",
    "self_influence",
    "average_influence",
    "gradient_inverse",
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
    "inverse",
    "Inverse",
    "BlockInverse",
    "Preconditioner",
    "Jacobi",
    "Nystrom",
    "NystromPreconditioner",
    "choose_solver",
    "GradientStore",
    "StoreFormatError",
    "fingerprint_module",
    "distributed",
    "interop",
    "scale",
    "influence_scores",
]


def __getattr__(name):
    # `ih.adapters` (the torch adapter) is imported on first use: `import invhvp` never imports torch.
    if name == "adapters":
        import importlib

        return importlib.import_module(".adapters", __name__)
    raise AttributeError(f"module 'invhvp' has no attribute {name!r}")
