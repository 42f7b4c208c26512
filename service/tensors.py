"""Arrays in and out of the wire.

Inbound, values already validated by pydantic (lists of finite floats, lists of
ints >= 0) become numpy arrays, with the checks pydantic cannot express:
rectangular matrices and int64 range. Outbound, numpy arrays become JSON bytes
with orjson, which writes numpy arrays natively (no Python lists in between).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from .errors import InputError

__all__ = ["matrix", "vector", "tokens", "dumps"]


def matrix(value: list[list[float]], field: str, *, dtype: type = np.float64) -> np.ndarray:
    """A rectangular (rows, cols) array from a list of rows; rows of unequal length are named."""
    if not value:
        raise InputError(f"{field} must be a matrix with at least one row, got an empty list", field=field)
    try:
        return np.array(value, dtype=dtype)
    except ValueError:  # ragged: numpy refuses inhomogeneous rows
        cols = len(value[0])
        i = next(i for i, row in enumerate(value) if len(row) != cols)
        raise InputError(
            f"{field} must be rectangular: row {field}[0] has {cols} numbers, "
            f"but {field}[{i}] has {len(value[i])}",
            field=f"{field}[{i}]",
        ) from None


def vector(value: list[float], field: str, *, dtype: type = np.float64) -> np.ndarray:
    """A (n,) array from a list of numbers."""
    return np.array(value, dtype=dtype)


def tokens(value: list[int], field: str) -> np.ndarray:
    """An int64 (T,) array of token ids; ids beyond int64 are out of range for any vocabulary."""
    try:
        return np.array(value, dtype=np.int64)
    except OverflowError:
        i = next(i for i, v in enumerate(value) if v >= 2**63)
        raise InputError(
            f"{field}[{i}] = {value[i]} is out of range: token ids must be in [0, C), "
            "C the vocabulary size",
            field=f"{field}[{i}]",
        ) from None


def dumps(content: Any) -> bytes:
    """JSON bytes; numpy arrays and scalars are written by orjson directly."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
