"""invhvp with the tools users already run: scipy in and out, torch.func losses, pyDVL.

- :func:`from_scipy` (also used by :func:`invhvp.solve` / :func:`invhvp.inverse` on any input that
  is not an invhvp operator): a scipy ``LinearOperator``, a scipy sparse matrix or array, or a
  2-D numpy array / torch tensor becomes an invhvp operator.
- :func:`to_scipy`: ``A + λI`` of an operator, or an :class:`~invhvp.Inverse`, as a scipy
  ``LinearOperator`` (numpy operators).
- :func:`hvp_from_loss`, :func:`ggn_from_loss`: a :class:`~invhvp.MatrixFree` Hessian or
  Gauss-Newton operator from a ``torch.func``-style loss of a parameter vector.
- :class:`InvhvpInfluence` (module :mod:`invhvp.interop.pydvl`, needs pyDVL): a pyDVL
  influence model backed by invhvp solvers, in pyDVL's sign convention.

Recipes for scipy, torch.func, pyDVL and captum users: ``docs/interop.md``.
"""

from ._scipy import from_scipy, to_scipy

__all__ = ["from_scipy", "to_scipy", "hvp_from_loss", "ggn_from_loss", "InvhvpInfluence"]


def __getattr__(name):
    # the torch helpers import torch on first use: `import invhvp` never imports torch;
    # the pyDVL plug-in imports pyDVL on first use (ImportError with the install line without it)
    if name in ("hvp_from_loss", "ggn_from_loss"):
        from . import _torchfunc

        return getattr(_torchfunc, name)
    if name == "InvhvpInfluence":
        from . import pydvl

        return pydvl.InvhvpInfluence
    raise AttributeError(f"module 'invhvp.interop' has no attribute {name!r}")
