"""Column selection helpers of the block CG (active columns drop out of the products)."""

from __future__ import annotations

import numpy as np

from .. import _backend as Bk

__all__ = ["take", "scatter"]


def _sel(xp, keep: np.ndarray, like):
    idx = np.flatnonzero(keep)
    if Bk.is_torch(xp):
        import torch

        return torch.as_tensor(idx, device=like.device)
    return idx


def take(xp, M, keep, vec=False):
    if keep.all():
        return M
    s = _sel(xp, keep, M)
    return M[s] if vec else M[:, s]


def scatter(xp, X, Xa, cols):
    if Bk.is_torch(xp):
        import torch

        X = X.clone()
        X[:, torch.as_tensor(cols, device=X.device)] = Xa
        return X
    X = X.copy()
    X[:, cols] = Xa
    return X
