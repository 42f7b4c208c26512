"""Validated request models -> the engine's arguments, as numpy arrays.

pydantic (``schemas``) has checked the types: lists of finite numbers, or
``Tensor`` objects, and integer token ids. What it cannot express is checked
here: rectangular rows, byte counts that fit the shape, finite values in the
bytes, values within float32's range. The engine then checks that the shapes
agree with each other.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .codec import DTYPES, Array, convert, from_base64, token_ids
from .errors import InputError
from .schemas import BpttBatchRequest, BpttRequest, CompareRequest, FlowRequest, GradientCheckRequest, Tensor

__all__ = ["array", "batch_arrays", "bptt_arrays", "check_arrays", "compare_arrays", "dense", "flow_arrays"]

Floating = type[np.floating[Any]]


def array(value: list[Any] | Tensor, field: str, *, ndim: int, dtype: Floating = np.float64) -> Array:
    """A numpy array of ``dtype`` with ``ndim`` dimensions from a validated field."""
    if isinstance(value, Tensor):
        a = from_base64(value.dtype, value.shape, value.data, field)
        if a.ndim != ndim:
            raise InputError(f"{field} must be a tensor of {ndim} dimension(s), got shape {list(a.shape)}", field=field)
    else:
        a = _from_lists(value, field, ndim=ndim)
    return convert(a, dtype, field)


def _from_lists(value: list[Any], field: str, *, ndim: int) -> Array:
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
            f"{field} must be rectangular: row {field}[0] has {cols} numbers, but {field}[{i}] has {len(value[i])}",
            field=f"{field}[{i}]",
        ) from None


def bptt_arrays(request: BpttRequest) -> dict[str, Any]:
    """``engine.bptt``'s keyword arguments from a request (the engine checks the shapes)."""
    dtype = DTYPES[request.dtype]
    return {
        **_weights(request, dtype),
        "x": token_ids(request.x, "x"),
        "y": token_ids(request.y, "y"),
        "s0": _optional_vector(request.s0, "s0", dtype),
        "bptt_truncate": request.bptt_truncate,
        "clip": request.clip,
    }


def flow_arrays(request: FlowRequest) -> dict[str, Any]:
    """``flow.flow``'s arguments (float64) from a request."""
    return {
        **_weights(request, np.float64),
        "x": token_ids(request.x, "x"),
        "y": token_ids(request.y, "y"),
        "s0": _optional_vector(request.s0, "s0", np.float64),
    }


def batch_arrays(request: BpttBatchRequest) -> dict[str, Any]:
    """``engine.bptt_batch``'s keyword arguments from a request."""
    dtype = DTYPES[request.dtype]
    seqs = request.sequences
    return {
        **_weights(request, dtype),
        "xs": [token_ids(s.x, f"sequences[{b}].x") for b, s in enumerate(seqs)],
        "ys": [token_ids(s.y, f"sequences[{b}].y") for b, s in enumerate(seqs)],
        "s0": [_optional_vector(s.s0, f"sequences[{b}].s0", dtype) for b, s in enumerate(seqs)],
        "bptt_truncate": request.bptt_truncate,
        "clip": request.clip,
    }


def check_arrays(request: GradientCheckRequest) -> dict[str, Any]:
    """``engine.bptt``'s keyword arguments (float64) for a gradient check."""
    return {
        **_weights(request, np.float64),
        "x": token_ids(request.x, "x"),
        "y": token_ids(request.y, "y"),
        "s0": _optional_vector(request.s0, "s0", np.float64),
        "bptt_truncate": request.bptt_truncate,
    }


def compare_arrays(request: CompareRequest) -> tuple[dict[str, Any], dict[str, Array]]:
    """(``engine.bptt``'s keyword arguments, the submitted gradients), shapes checked against U, V, W."""
    arrays: dict[str, Any] = {name: array(getattr(request, name), name, ndim=2) for name in "UVW"}
    arrays |= {
        "x": token_ids(request.x, "x"),
        "y": token_ids(request.y, "y"),
        "s0": _optional_vector(request.s0, "s0", np.float64),
        "bptt_truncate": request.bptt_truncate,
    }
    submitted = {}
    for name in "UVW":
        grad = array(getattr(request, f"dLd{name}"), f"dLd{name}", ndim=2)
        want = arrays[name].shape
        if grad.shape != want:
            raise InputError(
                f"dLd{name} must have the shape of {name}, {want[0]} x {want[1]}, "
                f"got {grad.shape[0]} x {grad.shape[1]}",
                field=f"dLd{name}",
            )
        submitted[f"dLd{name}"] = grad
    return arrays, submitted


def _weights(
    request: BpttRequest | BpttBatchRequest | GradientCheckRequest | FlowRequest, dtype: Floating
) -> dict[str, Any]:
    """U, V, W, and the biases b, c when given."""
    weights: dict[str, Any] = {name: array(getattr(request, name), name, ndim=2, dtype=dtype) for name in "UVW"}
    return weights | {name: _optional_vector(getattr(request, name), name, dtype) for name in "bc"}


def _optional_vector(value: list[Any] | Tensor | None, field: str, dtype: Floating) -> Array | None:
    return None if value is None else array(value, field, ndim=1, dtype=dtype)


def dense(value: list[Any] | Tensor, field: str) -> Array:
    """A float64 array of any rank from validated lists or a tensor object (the /vjp routes' arrays)."""
    if isinstance(value, Tensor):
        return convert(from_base64(value.dtype, value.shape, value.data, field), np.float64, field)
    try:
        return np.array(value, dtype=np.float64)
    except ValueError:  # ragged
        raise InputError(
            f"{field} must be rectangular: nested lists of equal lengths at each level", field=field
        ) from None
