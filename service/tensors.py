"""Arrays in and out of the wire: nested lists, and base64 tensor objects.

Inbound, a field already validated by pydantic (lists of finite numbers, or a
``Tensor`` {dtype, shape, data}) becomes a numpy array of the computation's
dtype, with the checks pydantic cannot express: rectangular rows, byte counts
that match the shape, finite values in the bytes, values within float32's range.
Outbound, arrays become nested lists written by orjson straight from numpy,
or base64 tensor objects.
"""

from __future__ import annotations

import binascii
import math
from typing import Any, Literal

import numpy as np
import orjson
import pybase64

from .errors import InputError
from .schemas import BpttBatchRequest, BpttRequest, CompareRequest, GradientCheckRequest, Tensor

__all__ = [
    "DTYPES",
    "array",
    "convert",
    "from_base64",
    "from_bytes",
    "tokens",
    "to_wire",
    "dumps",
    "bptt_arrays",
    "batch_arrays",
    "check_arrays",
    "compare_arrays",
]

DTYPES: dict[str, type[np.floating]] = {"float64": np.float64, "float32": np.float32}
Encoding = Literal["json", "base64"]


def array(value: list | Tensor, field: str, *, ndim: int, dtype: type = np.float64) -> np.ndarray:
    """A numpy array of ``dtype`` with ``ndim`` dimensions from a validated field."""
    if isinstance(value, Tensor):
        a = from_base64(value.dtype, value.shape, value.data, field)
        if a.ndim != ndim:
            raise InputError(
                f"{field} must be a tensor of {ndim} dimension(s), got shape {list(a.shape)}", field=field
            )
    else:
        a = _from_lists(value, field, ndim=ndim, dtype=dtype)
    return convert(a, dtype, field)


def convert(a: np.ndarray, dtype: type, field: str) -> np.ndarray:
    """``a`` as ``dtype``; a value that does not fit (float64 beyond float32's range) is refused."""
    if a.dtype == dtype:
        return a
    with np.errstate(over="ignore"):
        a = a.astype(dtype)
    _check_finite(a, field, note=f" when converted to {np.dtype(dtype).name} (largest {np.finfo(dtype).max:.4g})")
    return a


def _from_lists(value: list, field: str, *, ndim: int, dtype: type) -> np.ndarray:
    if ndim == 2 and not value:
        raise InputError(f"{field} must be a matrix with at least one row, got an empty list", field=field)
    try:
        # float64 first: pydantic checked the numbers are finite doubles; a cast to
        # float32 then checks the range in array().
        return np.array(value, dtype=np.float64)
    except ValueError:  # ragged: numpy refuses inhomogeneous rows
        cols = len(value[0])
        i = next(i for i, row in enumerate(value) if len(row) != cols)
        raise InputError(
            f"{field} must be rectangular: row {field}[0] has {cols} numbers, "
            f"but {field}[{i}] has {len(value[i])}",
            field=f"{field}[{i}]",
        ) from None


def from_base64(dtype: str, shape: list[int], data: str | bytes, field: str) -> np.ndarray:
    """Decode a tensor object; every value must be finite. The result may be read-only."""
    try:
        raw = pybase64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"{field}.data must be standard base64 with padding: {exc}", field=f"{field}.data") from None
    return from_bytes(raw, dtype, shape, field, where=f"{field}.data")


def from_bytes(raw: bytes | memoryview, dtype: str, shape: list[int], field: str, *, where: str) -> np.ndarray:
    """An array from little-endian row-major bytes, which must fill ``shape`` exactly.

    Floats must be finite. ``where`` names the bytes in messages ("U.data").
    The result shares memory with ``raw`` and may be read-only.
    """
    item = np.dtype(dtype).newbyteorder("<")
    count = math.prod(shape)
    if len(raw) != count * item.itemsize:
        raise InputError(
            f"{where} holds {len(raw)} bytes, but shape {list(shape)} of {dtype} needs "
            f"{count} x {item.itemsize} = {count * item.itemsize}",
            field=where,
        )
    a = np.frombuffer(raw, dtype=item).reshape(shape)
    if a.dtype.kind == "f":
        _check_finite(a, field)
    return a.astype(item.newbyteorder("="), copy=False)


def _check_finite(a: np.ndarray, field: str, *, note: str = "") -> None:
    if not np.isfinite(a).all():
        index = np.unravel_index(int(np.argmin(np.isfinite(a).ravel())), a.shape)
        where = field + "".join(f"[{i}]" for i in index)
        raise InputError(
            f"{where} must be a finite number{note}, got {a[index]}",
            field=where,
        )


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


def bptt_arrays(request: BpttRequest) -> dict[str, Any]:
    """``engine.bptt``'s keyword arguments from a request (the engine checks the shapes)."""
    dtype = DTYPES[request.dtype]
    return {
        **_weights(request, dtype),
        "x": tokens(request.x, "x"),
        "y": tokens(request.y, "y"),
        "s0": _optional_vector(request.s0, "s0", dtype),
        "bptt_truncate": request.bptt_truncate,
        "clip": request.clip,
    }


def batch_arrays(request: BpttBatchRequest) -> dict[str, Any]:
    """``engine.bptt_batch``'s keyword arguments from a request."""
    dtype = DTYPES[request.dtype]
    seqs = request.sequences
    return {
        **_weights(request, dtype),
        "xs": [tokens(s.x, f"sequences[{b}].x") for b, s in enumerate(seqs)],
        "ys": [tokens(s.y, f"sequences[{b}].y") for b, s in enumerate(seqs)],
        "s0": [_optional_vector(s.s0, f"sequences[{b}].s0", dtype) for b, s in enumerate(seqs)],
        "bptt_truncate": request.bptt_truncate,
        "clip": request.clip,
    }


def check_arrays(request: GradientCheckRequest) -> dict[str, Any]:
    """``engine.bptt``'s keyword arguments (float64) for a gradient check."""
    return {
        **_weights(request, np.float64),
        "x": tokens(request.x, "x"),
        "y": tokens(request.y, "y"),
        "s0": _optional_vector(request.s0, "s0", np.float64),
        "bptt_truncate": request.bptt_truncate,
    }


def compare_arrays(request: CompareRequest) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(``engine.bptt``'s keyword arguments, the submitted gradients), shapes checked against U, V, W."""
    arrays = {name: array(getattr(request, name), name, ndim=2) for name in "UVW"}
    arrays |= {
        "x": tokens(request.x, "x"),
        "y": tokens(request.y, "y"),
        "s0": _optional_vector(request.s0, "s0", np.float64),
        "bptt_truncate": request.bptt_truncate,
    }
    submitted = {}
    for name in "UVW":
        grad = array(getattr(request, f"dLd{name}"), f"dLd{name}", ndim=2)
        want = arrays[name].shape
        if grad.shape != want:
            raise InputError(
                f"dLd{name} must have the shape of {name}, {want[0]} x {want[1]}, got {grad.shape[0]} x {grad.shape[1]}",
                field=f"dLd{name}",
            )
        submitted[f"dLd{name}"] = grad
    return arrays, submitted


def _weights(request: BpttRequest | BpttBatchRequest | GradientCheckRequest, dtype: type) -> dict[str, Any]:
    """U, V, W, and the biases b, c when given."""
    weights: dict[str, Any] = {name: array(getattr(request, name), name, ndim=2, dtype=dtype) for name in "UVW"}
    return weights | {name: _optional_vector(getattr(request, name), name, dtype) for name in "bc"}


def _optional_vector(value: list | Tensor | None, field: str, dtype: type) -> np.ndarray | None:
    return None if value is None else array(value, field, ndim=1, dtype=dtype)


def to_wire(a: np.ndarray, encoding: Encoding) -> np.ndarray | dict[str, Any]:
    """An array as ``dumps`` writes it: itself (nested lists) or a base64 tensor object."""
    if encoding == "json":
        return np.ascontiguousarray(a)
    little = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return {
        "dtype": a.dtype.name,
        "shape": list(a.shape),
        "data": pybase64.b64encode(little.data).decode("ascii"),
    }


def dumps(content: Any) -> bytes:
    """JSON bytes; numpy arrays and scalars are written by orjson directly."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
