"""Bytes <-> arrays: base64 tensor objects, raw little-endian buffers, JSON bytes, token ids.

Shared by the server and the client, so it imports numpy, orjson and pybase64
only (no pydantic, no web framework). Inbound, every float must be finite and
every byte count must match its shape; outbound, arrays become nested lists
(written by orjson straight from numpy) or base64 tensor objects.
"""

from __future__ import annotations

import binascii
import functools
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import orjson
import pybase64

from .errors import ComputeError, InputError

__all__ = [
    "DTYPES",
    "Array",
    "Encoding",
    "Tokens",
    "check_finite",
    "convert",
    "dumps",
    "from_base64",
    "from_bytes",
    "loads",
    "require_finite",
    "to_wire",
    "token_ids",
]

Array = np.ndarray[Any, np.dtype[Any]]
Tokens = np.ndarray[Any, np.dtype[np.int64]]
Encoding = Literal["json", "base64"]
DTYPES: dict[str, type[np.floating[Any]]] = {"float64": np.float64, "float32": np.float32}

# numpy's limit on dimensions; a shape with more is refused before numpy sees it.
MAX_DIMS = 32


def describe(value: Any) -> str:
    """A short JSON-flavoured description of a value, never the whole of a large one."""
    if value is None:
        return "null"
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | float | np.integer | np.floating):
        v = value.item() if isinstance(value, np.generic) else value  # repr(np.int64(7)) is 'np.int64(7)'
        text = "NaN" if v != v else repr(v).replace("inf", "Infinity")
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, str):
        return f'a string "{value[:37]}..."' if len(value) > 40 else f'a string "{value}"'
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item(s)" if value else "an empty list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def convert(a: Array, dtype: type[np.floating[Any]], field: str) -> Array:
    """``a`` as ``dtype``; a value that does not fit (float64 beyond float32's range) is refused."""
    if a.dtype == dtype:
        return a
    with np.errstate(over="ignore"):
        a = a.astype(dtype)
    check_finite(a, field, note=f" when converted to {np.dtype(dtype).name} (largest {np.finfo(dtype).max:.4g})")
    return a


def from_base64(dtype: str, shape: Sequence[int], data: str | bytes, field: str) -> Array:
    """Decode a tensor object; every value must be finite. The result may be read-only."""
    try:
        raw = pybase64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"{field}.data must be standard base64 with padding: {exc}", field=f"{field}.data") from None
    return from_bytes(raw, dtype, shape, field, where=f"{field}.data")


def element_count(shape: Sequence[int], field: str) -> int:
    """The number of elements of ``shape``, refusing what numpy cannot hold."""
    if len(shape) > MAX_DIMS:
        raise InputError(f"{field}.shape has {len(shape)} dimensions, more than {MAX_DIMS}", field=f"{field}.shape")
    if any(type(n) is not int or n < 0 for n in shape):
        raise InputError(f"{field}.shape must hold integers >= 0, got {list(shape)[:8]}", field=f"{field}.shape")
    count = math.prod(shape)
    # numpy refuses a shape whose nonzero dimensions multiply past its range even when another
    # dimension is 0 (the array would be empty): refused here, naming the field.
    if math.prod(n for n in shape if n) * 8 >= 2**62:
        raise InputError(
            f"{field}.shape {list(shape)[:8]} holds more elements than any request can", field=f"{field}.shape"
        )
    return count


def from_bytes(raw: bytes | memoryview, dtype: str, shape: Sequence[int], field: str, *, where: str) -> Array:
    """An array from little-endian row-major bytes, which must fill ``shape`` exactly.

    Floats must be finite. ``where`` names the bytes in messages ("U.data").
    The result shares memory with ``raw`` and may be read-only.
    """
    item, native = _wire_dtypes(dtype)
    count = element_count(shape, field)
    if len(raw) != count * item.itemsize:
        raise InputError(
            f"{where} holds {len(raw)} bytes, but shape {list(shape)} of {dtype} needs "
            f"{count} x {item.itemsize} = {count * item.itemsize}",
            field=where,
        )
    a = np.frombuffer(raw, dtype=item).reshape(shape)
    if a.dtype.kind == "f":
        check_finite(a, field)
    return a.astype(native, copy=False)


@functools.lru_cache(maxsize=32)
def _wire_dtypes(dtype: str) -> tuple[np.dtype[Any], np.dtype[Any]]:
    """``dtype`` little-endian (the wire's) and in this machine's byte order: made once, not per array."""
    item = np.dtype(dtype).newbyteorder("<")
    return item, item.newbyteorder("=")


def check_finite(a: Array, field: str, *, note: str = "") -> None:
    """Refuse NaN and infinity, naming the first offending entry."""
    finite = np.isfinite(a)
    if not finite.all():
        index = np.unravel_index(int(np.argmin(finite.ravel())), a.shape)
        where = field + "".join(f"[{i}]" for i in index)
        raise InputError(f"{where} must be a finite number{note}, got {describe(a[index])}", field=where)


def token_ids(value: Any, field: str) -> Tokens:
    """A (T,) int64 array of token ids from a list or an array, refusing what is not an integer.

    Floats are accepted where they are whole numbers (2.0 is the token id 2, as
    JSON Schema counts it); 2.5, booleans, NaN and strings are refused with the
    message the server gives for the same JSON.
    """
    if type(value) is list and all(type(v) is int for v in value):  # as pydantic hands them over
        try:
            return np.array(value, dtype=np.int64)  # (a negative id is the engine's to name, with C)
        except OverflowError:
            pass  # past int64: named below
    items = value if isinstance(value, np.ndarray | list) else list(value)
    for i, v in enumerate(items if isinstance(items, list) else ()):
        # numpy would read True as 1, turn [1, "a"] into strings (blaming "1") and refuse [1, [2]]
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
            raise InputError(f"{field}[{i}] must be an integer, got {describe(v)}", field=f"{field}[{i}]")
    a = np.asarray(items)
    if a.ndim != 1:
        raise InputError(f"{field} must be a list of token ids, got {a.ndim} dimensions", field=field)
    if a.dtype.kind == "i":
        return a.astype(np.int64, copy=False)
    if a.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~np.isfinite(a) | (a != np.trunc(a)))
        if len(bad):
            i = int(bad[0])
            raise InputError(f"{field}[{i}] must be an integer, got {describe(a[i])}", field=f"{field}[{i}]")
    elif a.dtype.kind not in "uO":
        first = a[0] if a.size else None
        raise InputError(f"{field}[0] must be an integer, got {describe(first)}", field=f"{field}[0]")
    for i, v in enumerate(a.tolist()):
        if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v):
            raise InputError(f"{field}[{i}] must be an integer, got {describe(v)}", field=f"{field}[{i}]")
        if not -(2**63) <= int(v) < 2**63:
            raise InputError(
                f"{field}[{i}] = {int(v)} is out of range: token ids must be in [0, C), C the vocabulary size",
                field=f"{field}[{i}]",
            )
    return np.asarray(a.tolist() if a.dtype.kind == "O" else a, dtype=np.int64)


def require_finite(content: Any, name: str = "") -> None:
    """Raise ``ComputeError`` naming the first quantity of an answer that is NaN or infinite.

    Walks dicts and lists of numpy arrays and floats: the one place every route's
    answer passes before it is written, so no 200 carries a non-finite number. A
    base64 tensor object (``to_wire``'s) is not decoded, here as before: checking its
    array is the computing engine's overflow check, which names the quantity.
    """
    if type(content) in _FINITE_BY_TYPE:  # a base64 string, a count, a dtype or shape: nothing to check
        return
    if isinstance(content, np.ndarray):
        if content.dtype.kind == "f" and not np.isfinite(content).all():
            raise ComputeError(
                f"the computation overflowed: {name} is not finite; scale the weights down "
                '(or compute in float64, "dtype": "float64", if the request asked for float32)',
                field=name,
            )
    elif isinstance(content, float | np.floating):
        if not math.isfinite(content):
            raise ComputeError(f"the computation overflowed: {name} is not finite; scale the weights down", field=name)
    elif isinstance(content, dict):
        if content.keys() == _TENSOR_KEYS:  # a base64 tensor: text, checked by the engine that computed it
            return
        for key, value in content.items():
            require_finite(value, f"{name}.{key}" if name else str(key))
    elif isinstance(content, list | tuple):
        for i, value in enumerate(content):
            require_finite(value, f"{name}[{i}]")


_FINITE_BY_TYPE = frozenset({str, int, bool, type(None)})
_TENSOR_KEYS = {"dtype", "shape", "data"}  # to_wire's base64 tensor object


def to_wire(a: Array, encoding: Encoding) -> Array | dict[str, Any]:
    """An array as ``dumps`` writes it: itself (nested lists) or a base64 tensor object."""
    if encoding == "json":
        return np.ascontiguousarray(a)
    name, little = _answer_dtypes(a.dtype)
    data = np.ascontiguousarray(a, dtype=little)
    return {"dtype": name, "shape": list(a.shape), "data": pybase64.b64encode(data.data).decode("ascii")}


@functools.lru_cache(maxsize=32)
def _answer_dtypes(dtype: np.dtype[Any]) -> tuple[str, np.dtype[Any]]:
    """An answer's dtype name and its little-endian form (numpy's ``dtype.name`` is Python code: 2 us)."""
    return dtype.name, dtype.newbyteorder("<")


def from_wire(value: Any, field: str) -> Array:
    """An answer's array, from nested lists or a base64 tensor object."""
    if isinstance(value, dict):
        return from_base64(value["dtype"], value["shape"], value["data"], field)
    return np.array(value, dtype=np.float64)


def dumps(content: Any) -> bytes:
    """JSON bytes; numpy arrays and scalars are written by orjson directly."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def loads(data: bytes | str) -> Any:
    """Parse JSON bytes (orjson)."""
    return orjson.loads(data)
