"""Block-diagonal operators: one block per layer or LoRA tensor."""

from __future__ import annotations

import numpy as np

from ..errors import DeviceError, DTypeError, InputError, UnsupportedOperatorError
from .base import Operator, Spectrum

__all__ = ["BlockDiagonal"]


class BlockDiagonal(Operator):
    """``diag(A_1, …, A_L)`` of square operators (any invhvp operators, nested too).

    The coordinates of a vector are the concatenation of the blocks' coordinates
    in order.  Solvers work block by block (see :func:`invhvp.inverse`) and accept one
    damping value per block.

    Examples
    --------
    >>> import numpy as np, invhvp as ih
    >>> A = ih.BlockDiagonal([ih.Dense(np.eye(2)), ih.Dense(3.0 * np.eye(1))])
    >>> A.matvec(np.ones(3))
    array([1., 1., 3.])
    """

    def __init__(self, blocks):
        if isinstance(blocks, Operator) or isinstance(blocks, (str, bytes)):
            blocks = None
        else:
            try:
                blocks = list(blocks)
            except TypeError:
                blocks = None
        if not blocks:
            raise InputError("blocks: expected a non-empty sequence of invhvp operators")
        for i, b in enumerate(blocks):
            if not isinstance(b, Operator):
                raise DTypeError(
                    f"blocks[{i}]: expected an invhvp operator (Dense, LowRankPlusIdentity, ...), "
                    f"got {type(b).__name__}; wrap arrays with invhvp.Dense"
                )
        first = blocks[0]
        for i, b in enumerate(blocks[1:], start=1):
            if b.xp is not first.xp:
                raise DTypeError(f"blocks[{i}]: array library differs from blocks[0]")
            if b.dtype != first.dtype:
                raise DTypeError(f"blocks[{i}]: dtype {b.dtype} differs from blocks[0] dtype {first.dtype}")
            if b.device != first.device:
                raise DeviceError(f"blocks[{i}]: device {b.device} differs from blocks[0] device {first.device}")
        self.blocks = tuple(blocks)
        sizes = [b.size for b in blocks]
        self.offsets = tuple(int(v) for v in np.concatenate([[0], np.cumsum(sizes)]))
        self._xp = first.xp
        self._size = self.offsets[-1]
        self._dtype = first.dtype
        self._device = first.device
        self._psd = all(b.psd for b in blocks)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def slices(self):
        """One ``slice`` of the full coordinate range per block."""
        o = self.offsets
        return [slice(o[i], o[i + 1]) for i in range(len(self.blocks))]

    def split(self, V):
        """Split rows of ``V`` (``(d,)`` or ``(d, k)``) into one piece per block."""
        return [V[s, ...] for s in self.slices()]

    def per_coordinate(self, values, dtype=None):
        """A length-``d`` array repeating ``values[l]`` over block ``l``'s coordinates (``dtype``: the operator's)."""
        xp = self._xp
        dt = self._dtype if dtype is None else dtype
        parts = [xp.full((b.size,), float(v), dtype=dt, device=self._device) for b, v in zip(self.blocks, values)]
        return xp.concat(parts, axis=0)

    def _matmat(self, V):
        return self._xp.concat([b._matmat(v) for b, v in zip(self.blocks, self.split(V))], axis=0)

    def to_dense(self):
        xp = self._xp
        out = xp.zeros((self._size, self._size), dtype=self._dtype, device=self._device)
        for b, s in zip(self.blocks, self.slices()):
            out[s, s] = b.to_dense()
        return out

    def diagonal(self):
        return self._xp.concat([b.diagonal() for b in self.blocks], axis=0)

    # ------------------------------------------------------------ structure protocol
    def trace(self) -> float:
        return sum(b.trace() for b in self.blocks)

    def spectrum(self, max_dim: int = 8192) -> Spectrum:
        parts = [b.spectrum(max_dim) for b in self.blocks]
        return Spectrum(
            np.concatenate([p.values for p in parts]),
            np.concatenate([p.counts for p in parts]),
            max(p.rounding for p in parts),
        )

    def matmat64(self, V64):
        parts = [b.matmat64(v) for b, v in zip(self.blocks, self.split(V64))]
        return None if any(p is None for p in parts) else self._xp.concat(parts, axis=0)

    def eig_lower(self) -> float | None:
        vals = [b.eig_lower() for b in self.blocks]
        return None if any(v is None for v in vals) else min(vals)

    @property
    def supports_minibatch(self) -> bool:
        return all(b.supports_minibatch for b in self.blocks)

    def minibatch(self, batch_size: int, rng) -> BlockDiagonal:
        """``diag(Ã_1, …, Ã_L)``: an independent mini-batch estimate drawn per block."""
        bad = [i for i, b in enumerate(self.blocks) if not b.supports_minibatch]
        if bad:
            raise UnsupportedOperatorError(
                f"blocks[{bad[0]}] ({type(self.blocks[bad[0]]).__name__}) cannot produce mini-batch "
                "estimates; use full-batch products"
            )
        return BlockDiagonal([b.minibatch(batch_size, rng) for b in self.blocks])

    def __repr__(self) -> str:
        inner = ", ".join(f"{type(b).__name__}({b.size})" for b in self.blocks)
        return f"BlockDiagonal([{inner}], dtype={self._dtype}, device={self._device})"
