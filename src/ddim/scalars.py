"""Numbers from callers: Python, NumPy and PyTorch scalars read as plain Python int, float or bool.

The API takes a NumPy or PyTorch scalar wherever it takes a Python number (`np.float32(0.5)` as
η, `np.int64(1000)` as T, a 0-d tensor as a config value); each is turned into the Python type
once, at the boundary, so nothing downstream (JSON records, `math`, comparisons) meets it. A bool
is not a number here, and a float is not an int, whatever library made it.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import numpy as np

from ddim.errors import DdimError


def _item(value: Any) -> Any:
    """The Python value of a 0-d (or one-element) tensor or array; other values unchanged."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _is_bool(value: Any) -> bool:
    """True for Python, NumPy and PyTorch booleans."""
    return isinstance(value, (bool, np.bool_))


def as_int(value: Any, name: str) -> int:
    """`value` as a Python int: ints of any library; a bool, a float or anything else is an
    error."""
    value = _item(value)
    if _is_bool(value):
        raise DdimError(f"{name}={value!r} must be an integer, not a boolean", argument=name)
    try:
        return operator.index(value)
    except TypeError:
        raise DdimError(f"{name}={value!r} must be an integer", argument=name) from None


def as_float(value: Any, name: str, *, finite: bool = True) -> float:
    """`value` as a Python float: ints and floats of any library; NaN or ±inf is an error unless
    `finite` is False; a bool or anything else is an error."""
    value = _item(value)
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise DdimError(f"{name}={value!r} must be a number", argument=name)
    result = float(value)
    if finite and not math.isfinite(result):
        raise DdimError(f"{name}={value!r} must be finite", argument=name)
    return result


def as_bool(value: Any, name: str) -> bool:
    """`value` as a Python bool: booleans of any library; 0, 1 or anything else is an error."""
    value = _item(value)
    if not _is_bool(value):
        raise DdimError(f"{name}={value!r} must be true or false", argument=name)
    return bool(value)
