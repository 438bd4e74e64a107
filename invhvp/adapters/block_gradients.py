"""The result of :func:`per_sample_gradients`: per-block gradient matrices, savable without pickle."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch

from ..errors import InputError

__all__ = ["BlockGradients", "MemorySink"]

_FORMAT = "invhvp.BlockGradients"
_VERSION = "1"


class BlockGradients(Sequence):
    """Per-sample gradients split into blocks: a sequence of ``(n, d_l)`` tensors.

    Block ``l`` holds the flattened gradients of the parameters ``param_names[l]``,
    concatenated in that order.  Indexing and iteration give the block tensors, so a
    ``BlockGradients`` can be passed wherever a list of per-block gradient arrays is expected.

    Saving: :meth:`save` / :meth:`load` write and read a ``.safetensors`` file (no pickle,
    portable, the recommended way).  ``torch.save(g, f)`` also works, and
    ``torch.load(f, weights_only=True)`` (torch's default) loads it back in any process that
    has imported :mod:`invhvp.adapters`' ``BlockGradients`` (importing it registers the class
    with ``torch.serialization.add_safe_globals``); in a process that has not, torch refuses
    with an "Unsupported global" error.

    Attributes
    ----------
    blocks : list of torch.Tensor
        ``(n, d_l)`` tensors on the model's device.
    names : list of str
        One name per block (the parameter name, or the module name for ``blocks="module"``).
    param_names : list of list of str
        Parameters in each block.
    shapes : dict
        ``parameter name -> shape``.
    losses : torch.Tensor
        The per-sample losses, shape ``(n,)``.
    info : dict
        How they were computed: ``engine`` ("hooks" or "vmap"), ``chunk_sizes``, ...
        (JSON-compatible values).

    Examples
    --------
    >>> import torch, tempfile, os
    >>> from invhvp.adapters import BlockGradients
    >>> g = BlockGradients([torch.ones(3, 2)], ["w"], [["w"]], {"w": (2,)}, torch.zeros(3))
    >>> path = os.path.join(tempfile.mkdtemp(), "g.safetensors")
    >>> g.save(path)
    >>> BlockGradients.load(path).names
    ['w']
    """

    def __init__(self, blocks, names, param_names, shapes, losses, info=None):
        self.blocks = list(blocks)
        self.names = list(names)
        self.param_names = [list(p) for p in param_names]
        self.shapes = {k: tuple(v) for k, v in dict(shapes).items()}
        self.losses = losses
        self.info = dict(info or {})

    def __getitem__(self, i):
        return self.blocks[i]

    def __len__(self):
        return len(self.blocks)

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.blocks[0].shape[0])

    @property
    def sizes(self) -> list[int]:
        """Block sizes ``d_l``."""
        return [int(b.shape[1]) for b in self.blocks]

    @property
    def dtype(self):
        return self.blocks[0].dtype

    @property
    def device(self):
        return self.blocks[0].device

    def flat(self) -> torch.Tensor:
        """All blocks side by side: the ``(n, d)`` matrix of full per-sample gradients."""
        return torch.cat(self.blocks, dim=1)

    def __repr__(self) -> str:
        return f"BlockGradients(n={self.n}, blocks={len(self)}, sizes={self.sizes}, dtype={self.dtype}, device={self.device})"

    # ------------------------------------------------------------------ persistence

    def __reduce__(self):
        # plain containers only, so torch.load(weights_only=True) can rebuild it once the class
        # is allow-listed (done at import, below)
        return (
            BlockGradients,
            (self.blocks, self.names, self.param_names, self.shapes, self.losses, self.info),
        )

    def save(self, path) -> None:
        """Write the gradients to ``path`` in the safetensors format (no pickle).

        Tensors ``block.<l>`` and ``losses`` are stored as they are (dtype kept, moved to the
        CPU); names, parameter names, shapes and ``info`` go in the file's metadata as JSON.

        Parameters
        ----------
        path : str or os.PathLike
            Conventionally ``*.safetensors``.
        """
        from safetensors.torch import save_file

        tensors = {f"block.{i}": b.detach().to("cpu").contiguous() for i, b in enumerate(self.blocks)}
        tensors["losses"] = self.losses.detach().to("cpu").contiguous()
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "names": json.dumps(self.names),
            "param_names": json.dumps(self.param_names),
            "shapes": json.dumps({k: list(v) for k, v in self.shapes.items()}),
            "info": json.dumps(self.info, default=str),
        }
        save_file(tensors, os.fspath(path), metadata=meta)

    @classmethod
    def load(cls, path, *, device="cpu") -> BlockGradients:
        """Read gradients written by :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike
        device : str or torch.device, default "cpu"
            Where the tensors are placed.

        Returns
        -------
        BlockGradients

        Raises
        ------
        InputError
            The file is not a safetensors file written by :meth:`save`.
        """
        from safetensors import safe_open

        try:
            with safe_open(os.fspath(path), framework="pt", device=str(device)) as f:
                meta = f.metadata() or {}
                if meta.get("format") != _FORMAT:
                    raise InputError(
                        f"path: {os.fspath(path)!r} is a safetensors file but not one written by "
                        "BlockGradients.save (no invhvp metadata)"
                    )
                names = json.loads(meta["names"])
                blocks = [f.get_tensor(f"block.{i}") for i in range(len(names))]
                losses = f.get_tensor("losses")
        except InputError:
            raise
        except Exception as exc:  # safetensors raises its own SafetensorError / OSError
            raise InputError(f"path: cannot read {os.fspath(path)!r} as BlockGradients: {exc}") from exc
        return cls(
            blocks,
            names,
            json.loads(meta["param_names"]),
            {k: tuple(v) for k, v in json.loads(meta["shapes"]).items()},
            losses,
            json.loads(meta.get("info", "{}")),
        )


# let torch.load(weights_only=True) rebuild it (torch >= 2.4; older versions load with weights_only=False)
if hasattr(torch.serialization, "add_safe_globals"):
    torch.serialization.add_safe_globals([BlockGradients])


class MemorySink:
    """Where :func:`per_sample_gradients` puts each finished chunk: kept in memory.

    The sink protocol is ``append(chunks)`` with ``chunks`` a list of ``(k, d_l)`` tensors
    (one per block, ``k`` samples of the current chunk), then ``blocks()`` at the end.  An
    on-disk store with the same ``append`` can replace it.
    """

    def __init__(self):
        self._parts: list[list[torch.Tensor]] | None = None

    def append(self, chunks: list[torch.Tensor]) -> None:
        if self._parts is None:
            self._parts = [[] for _ in chunks]
        for parts, c in zip(self._parts, chunks):
            parts.append(c)

    def blocks(self) -> list[torch.Tensor]:
        """The ``(n, d_l)`` blocks (one ``torch.cat`` per block; no copy for a single chunk)."""
        if self._parts is None:
            return []
        return [p[0] if len(p) == 1 else torch.cat(p, dim=0) for p in self._parts]
