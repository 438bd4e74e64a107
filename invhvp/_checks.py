"""Validation of scalar options and of ``damping``: the one place for both (base layer).

Every function raises a typed error from :mod:`invhvp.errors` that names the argument,
what was received and what was expected.  Numpy integer and floating scalars are accepted
wherever Python ones are; ``bool`` is never a number here and strings are never sequences.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from .errors import DampingError, InputError

__all__ = [
    "integer",
    "real",
    "flag",
    "choice",
    "damping_values",
]


def _is_int(x) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, Real):
        return True
    # 0-d numpy arrays / torch tensors holding a real (integer or floating) number
    if getattr(x, "shape", None) != () or not hasattr(x, "dtype"):
        return False
    dt = x.dtype
    if hasattr(dt, "kind"):  # numpy
        return dt.kind in "iuf"
    return bool(getattr(dt, "is_floating_point", False)) or str(dt).startswith(("torch.int", "torch.uint"))


def integer(x, name: str, *, minimum: int | None = None, optional: bool = False):
    """An ``int`` (Python or numpy) ``>= minimum``; ``None`` allowed when ``optional``."""
    if x is None and optional:
        return None
    if not _is_int(x) or (minimum is not None and int(x) < minimum):
        what = "an int" + (f" >= {minimum}" if minimum is not None else "")
        raise InputError(f"{name}: expected {what}{' or None' if optional else ''}, got {x!r}")
    return int(x)


def real(
    x,
    name: str,
    *,
    minimum: float | None = None,
    strict: bool = False,
    maximum: float | None = None,
    strict_max: bool = False,
    optional: bool = False,
    allow_inf: bool = False,
) -> float | None:
    """A finite real number (Python, numpy, 0-d array) within the given limits, as ``float``."""
    if x is None and optional:
        return None
    if not _is_real(x):
        raise InputError(f"{name}: expected a real number, got {type(x).__name__} {x!r}")
    v = float(x)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise InputError(f"{name}: expected a finite number, got {v}")
    if minimum is not None and (v < minimum or (strict and v == minimum)):
        raise InputError(f"{name}: expected a number {'>' if strict else '>='} {minimum}, got {v}")
    if maximum is not None and (v > maximum or (strict_max and v == maximum)):
        raise InputError(f"{name}: expected a number {'<' if strict_max else '<='} {maximum}, got {v}")
    return v


def flag(x, name: str) -> bool:
    """``True`` or ``False`` (numpy bools too); strings such as ``"False"`` are refused."""
    if isinstance(x, bool) or type(x).__name__ == "bool_":
        return bool(x)
    raise InputError(f"{name}: expected True or False, got {x!r}")


def choice(x, name: str, options) -> str:
    """One of the strings ``options``."""
    if not isinstance(x, str) or x not in options:
        opts = ", ".join(repr(o) for o in options)
        raise InputError(f"{name}: expected one of {opts}, got {x!r}")
    return x


def damping_values(damping, n_blocks: int | None, *, name: str = "damping", allow_none: bool = False):
    """Validate ``damping`` once for every entry point.

    Returns a float (a scalar ``damping``), a tuple of ``n_blocks`` floats (a sequence:
    list, tuple or 1-D array, one value per block), or ``None`` when ``allow_none``.  Every
    value must be finite and ``>= 0``.  Strings, dicts, sets and other iterables are refused
    (``"37"`` is not two numbers); a sequence needs ``n_blocks`` (a block-diagonal operator or
    per-block gradients) and exactly that many values.
    """
    if damping is None:
        if allow_none:
            return None
        raise DampingError(f"{name}: expected a number >= 0 or one number per block, got None")
    if _is_real(damping):
        v = float(damping)
        if not (v >= 0.0 and v < math.inf):
            raise DampingError(f"{name}: expected a finite number >= 0, got {v}")
        return v
    seq = None
    if isinstance(damping, (list, tuple)):
        seq = list(damping)
    elif getattr(damping, "ndim", None) == 1 and hasattr(damping, "tolist"):
        seq = list(damping.tolist())
    if seq is None:
        raise DampingError(
            f"{name}: expected a number >= 0 or a list/tuple/1-D array with one number per block, "
            f"got {type(damping).__name__} {damping!r}"
        )
    if n_blocks is None:
        raise DampingError(
            f"{name}: a sequence of {len(seq)} values needs a block-diagonal operator (one value per "
            "block); this operator takes a single number"
        )
    if len(seq) != n_blocks:
        raise DampingError(f"{name}: expected one value per block ({n_blocks}), got {len(seq)} values")
    out = []
    for i, v in enumerate(seq):
        if not _is_real(v):
            raise DampingError(f"{name}: block {i} has {type(v).__name__} {v!r}; expected a number >= 0")
        f = float(v)
        if not (f >= 0.0 and f < math.inf):
            raise DampingError(f"{name}: block {i} has {f}; expected a finite number >= 0")
        out.append(f)
    return tuple(out)
