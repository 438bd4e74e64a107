"""One exception hierarchy for invhvp.

Every class subclasses :class:`InvhvpError` *and* the matching builtin
(``ValueError``, ``TypeError`` or ``RuntimeError``) so that callers can catch
either the package-specific or the generic type.

Input errors are raised at once, before any arithmetic, and name the argument,
what was received and what was expected.  Numerical failures that happen
during an iterative solve are reported through :class:`invhvp.Status`;
:func:`invhvp.solve` turns them into :class:`ConvergenceError` unless the
caller opts out with ``on_failure="warn"`` or ``"ignore"``.
"""

from __future__ import annotations

__all__ = [
    "InvhvpError",
    "InputError",
    "ShapeError",
    "NonFiniteError",
    "DampingError",
    "NotSymmetricError",
    "DTypeError",
    "DeviceError",
    "UnsupportedOperatorError",
    "OperatorTooLargeError",
    "NotPositiveDefiniteError",
    "ConvergenceError",
    "OperatorContractError",
]


class InvhvpError(Exception):
    """Base class of every error raised by invhvp."""


class InputError(InvhvpError, ValueError):
    """An argument has an invalid value."""


class ShapeError(InputError):
    """An array has the wrong number of dimensions or an incompatible size."""


class NonFiniteError(InputError):
    """An input array contains NaN or infinity."""


class DampingError(InputError):
    """``damping`` is negative, non-finite, or a sequence of the wrong length."""


class NotSymmetricError(InputError):
    """A matrix that must be symmetric is not (beyond the stated tolerance)."""


class DTypeError(InvhvpError, TypeError):
    """Unsupported dtype, or arrays/operators of different dtypes or array libraries."""


class DeviceError(InvhvpError, ValueError):
    """Arrays or operators live on different devices."""


class UnsupportedOperatorError(InvhvpError, TypeError):
    """A solver cannot handle this operator type; the message says what to use instead."""


class OperatorTooLargeError(UnsupportedOperatorError):
    """The solver would have to materialize a matrix larger than it was allowed to."""


class NotPositiveDefiniteError(InvhvpError, ValueError):
    """A factorization that needs a positive definite matrix failed.

    invhvp never adds jitter silently: increase ``damping`` explicitly instead.
    """


class ConvergenceError(InvhvpError, RuntimeError):
    """A solve did not succeed; the full :class:`invhvp.SolveResult` is in ``.result``."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


class OperatorContractError(InvhvpError, AssertionError):
    """Raised by :func:`invhvp.testing.check_operator` when an operator breaks the contract."""
