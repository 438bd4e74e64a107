"""scipy out (``to_scipy``); scipy in lives in the operator layer (``invhvp/operators/convert.py``)."""

from __future__ import annotations

import numpy as np

from .. import _backend as Bk
from .. import _checks as C
from ..errors import DTypeError
from ..operators import Operator
from ..operators.convert import from_scipy

__all__ = ["from_scipy", "to_scipy"]


def to_scipy(obj, *, damping=0.0):
    """A scipy ``LinearOperator``: ``A + λI`` of an invhvp operator, or the action of an Inverse.

    - ``to_scipy(operator, damping=λ)``: ``v ↦ (A + λI)v`` (per-block ``damping`` for a
      :class:`~invhvp.BlockDiagonal`), e.g. to hand the damped operator to
      ``scipy.sparse.linalg.cg`` or ``eigsh``.
    - ``to_scipy(inverse)``: ``v ↦ inverse.solve(v).x`` with the inverse's failure policy
      (symmetric for every invhvp solver but LiSSA, whose iterates are random).

    Only numpy-backed operators (scipy works on numpy arrays).

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> inv = ih.inverse(ih.Dense(np.diag([1.0, 3.0])), damping=1.0)
    >>> ih.interop.to_scipy(inv) @ np.ones(2)
    array([0.5 , 0.25])
    """
    from scipy.sparse.linalg import LinearOperator

    from ..solvers.inverse import Inverse

    if isinstance(obj, Inverse):
        op = obj.operator
        _numpy_only(op)
        return LinearOperator(
            op.shape, matvec=lambda v: obj.solve(np.asarray(v, dtype=op.dtype).reshape(-1)).x,
            matmat=lambda V: obj.solve(np.asarray(V, dtype=op.dtype)).x, dtype=op.dtype,
        )
    if not isinstance(obj, Operator):
        raise DTypeError(f"obj: expected an invhvp operator or Inverse, got {type(obj).__name__}")
    _numpy_only(obj)
    from ..operators import BlockDiagonal

    lam = C.damping_values(damping, obj.n_blocks if isinstance(obj, BlockDiagonal) else None)
    shift = obj.per_coordinate(lam)[:, None] if isinstance(lam, tuple) else lam

    def mm(V):
        V = np.asarray(V, dtype=obj.dtype)
        return obj._matmat(V) + shift * V

    return LinearOperator(obj.shape, matvec=lambda v: mm(np.reshape(v, (-1, 1)))[:, 0], matmat=mm, dtype=obj.dtype)


def _numpy_only(op):
    if Bk.is_torch(op.xp):
        raise DTypeError(
            "obj: scipy works on numpy arrays; this operator holds torch tensors (use invhvp directly, "
            "or build the operator from numpy arrays)"
        )
