"""Typed errors of the torch adapter (subclasses of :mod:`invhvp.errors`)."""

from __future__ import annotations

from ..errors import DTypeError, InputError, InvhvpError

__all__ = ["BatchError", "EngineError", "SampleCouplingError"]


class BatchError(DTypeError, InputError):
    """``data`` (or one of its batches) is not in a form the adapter understands.

    Both an :class:`~invhvp.errors.InputError` (``ValueError``) and a
    :class:`~invhvp.errors.DTypeError` (``TypeError``), so either ``except`` catches it.
    """


class SampleCouplingError(InputError):
    """The model or loss mixes samples (batch normalization in train mode, a loss normalized
    over the batch): per-sample gradients are not defined."""


class EngineError(InvhvpError, RuntimeError):
    """A per-sample gradient engine cannot run this model; the message names the module or
    operation that failed and what to do instead."""
