"""Validated request models -> the engine's arguments, as numpy arrays.

pydantic (``schemas``) has checked the types: lists of finite numbers, or
``Tensor`` objects, and integer token ids. What it cannot express is checked
here: rectangular rows, byte counts that fit the shape, finite values in the
bytes, values within float32's range. The engine then checks that the shapes
agree with each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import numpy as np

from .codec import DTYPES, Array, convert, element_count, from_base64, token_ids
from .errors import InputError, LimitError
from .schemas import BpttBatchRequest, BpttRequest, CompareRequest, FlowRequest, GradientCheckRequest, Tensor

__all__ = ["array", "batch_arrays", "bptt_arrays", "check_arrays", "compare_arrays", "dense", "flow_arrays", "pricing"]

Floating = type[np.floating[Any]]


# Set while a /cost route prices a request: a tensor object may then give its shape without its data.
# The value is the largest tensor (in bytes) a real body could carry: BPTT_MAX_BODY_BYTES of base64.
_PRICING: ContextVar[int | None] = ContextVar("pricing", default=None)


@contextlib.contextmanager
def pricing(max_body_bytes: int) -> Iterator[None]:
    """Within: tensors without ``data`` are read as zeros of their shape that take no memory (a dry run
    prices shapes; a client need not send tens of megabytes to learn whether a request is admitted),
    up to the size a body of ``max_body_bytes`` could hold as base64."""
    token = _PRICING.set(max_body_bytes // 4 * 3)
    try:
        yield
    finally:
        _PRICING.reset(token)


def _tensor(value: Tensor, field: str, dtype: type[np.floating[Any]]) -> Array:
    """The tensor's array; in a dry run, a data-less one as zeros of ``dtype`` that take no memory."""
    if value.data is not None:
        return from_base64(value.dtype, value.shape, value.data, field)
    largest = _PRICING.get()
    if largest is None:
        raise InputError(
            f"{field}.data is required but missing (a tensor may omit its data only in a /cost dry run)",
            field=f"{field}.data",
        )
    size = element_count(value.shape, field) * np.dtype(value.dtype).itemsize
    if size > largest:  # no real request could carry it: refused before anything is built from its shape
        raise LimitError(
            f"{field}: a tensor of shape {list(value.shape)[:8]} in {value.dtype} holds {size:,} bytes, more than "
            f"a request body can carry as base64 ({largest:,}; setting BPTT_MAX_BODY_BYTES)",
            field=field,
        )
    # In the dtype it will be converted to: a conversion of a broadcast array would allocate all of it.
    return np.broadcast_to(np.zeros((), dtype=dtype), value.shape)  # (shape), strides of 0


def array(value: list[Any] | Tensor, field: str, *, ndim: int | None, dtype: Floating = np.float64) -> Array:
    """A numpy array of ``dtype`` with ``ndim`` dimensions (None: the caller checks) from a validated field."""
    if isinstance(value, Tensor):
        a = _tensor(value, field, dtype)
        if ndim is not None and a.ndim != ndim:
            raise InputError(f"{field} must be a tensor of {ndim} dimension(s), got shape {list(a.shape)}", field=field)
    else:
        a = _from_lists(value, field)
        if ndim is not None and a.ndim != ndim:
            raise InputError(f"{field} must have {ndim} dimension(s), got shape {list(a.shape)}", field=field)
    return convert(a, dtype, field)


def _from_lists(value: list[Any], field: str) -> Array:
    if not value:
        raise InputError(f"{field} must be a matrix with at least one row, got an empty list", field=field)
    try:
        # float64 first: pydantic checked the numbers are finite doubles; a cast to
        # float32 then checks the range in array().
        return np.array(value, dtype=np.float64)
    except ValueError:  # ragged: numpy refuses inhomogeneous rows
        where, first, (other, n), rows = _ragged(value, field)
        items = "rows" if rows else "numbers"
        raise InputError(
            f"{field} must be rectangular: row {where}[0] has {first} {items}, but {other} has {n}", field=other
        ) from None


def _ragged(value: list[Any], field: str) -> tuple[str, int, tuple[str, int], bool]:
    """The first list whose items differ in length: (its path, the first item's length, (the other's path,
    its length), whether the items hold lists)."""
    lengths = [len(item) for item in value]
    for i, n in enumerate(lengths):
        if n != lengths[0]:
            rows = bool(value[0]) and isinstance(value[0][0], list)
            return field, lengths[0], (f"{field}[{i}]", n), rows
    for i, item in enumerate(value):  # the same lengths here: the difference is deeper
        if item and isinstance(item[0], list):
            try:
                np.array(item, dtype=np.float64)
            except ValueError:
                return _ragged(item, f"{field}[{i}]")
    raise AssertionError("numpy refused rows of equal lengths")  # pragma: no cover


def bptt_arrays(request: BpttRequest) -> dict[str, Any]:
    """``engine.bptt``'s keyword arguments from a request, or ``gated.bptt``'s with ``cell``
    (the engine checks the shapes)."""
    dtype = DTYPES[request.dtype]
    return {
        **_weights(request, dtype),
        "x": token_ids(request.x, "x"),
        "y": token_ids(request.y, "y"),
        **_states(request, request.s0, request.c0, "", dtype),
        "bptt_truncate": request.bptt_truncate,
        "clip": request.clip,
    }


def flow_arrays(request: FlowRequest) -> dict[str, Any]:
    """``flow.flow``'s arguments (float64) from a request."""
    return {
        **_weights(request, np.float64),
        "x": token_ids(request.x, "x"),
        "y": token_ids(request.y, "y"),
        "s0": _optional(request.s0, "s0", np.float64),
    }


def batch_arrays(request: BpttBatchRequest) -> dict[str, Any]:
    """``engine.bptt_batch``'s (or ``gated.bptt_batch``'s) keyword arguments from a request."""
    dtype = DTYPES[request.dtype]
    seqs = request.sequences
    states = [_states(request, s.s0, s.c0, f"sequences[{b}].", dtype) for b, s in enumerate(seqs)]
    return {
        **_weights(request, dtype),
        "xs": [token_ids(s.x, f"sequences[{b}].x") for b, s in enumerate(seqs)],
        "ys": [token_ids(s.y, f"sequences[{b}].y") for b, s in enumerate(seqs)],
        **{name: _per_sequence([s[name] for s in states]) for name in states[0]},
        "bptt_truncate": request.bptt_truncate,
        "clip": request.clip,
    }


def _per_sequence(states: list[Array | None]) -> list[Array | None] | None:
    """A batch's initial states, or None when no sequence has one (the GRU takes no c0 at all)."""
    return None if all(s is None for s in states) else states


def check_arrays(request: GradientCheckRequest) -> dict[str, Any]:
    """``engine.bptt``'s (or ``gated.bptt``'s) keyword arguments, float64, for a gradient check."""
    return {
        **_weights(request, np.float64),
        "x": token_ids(request.x, "x"),
        "y": token_ids(request.y, "y"),
        **_states(request, request.s0, request.c0, "", np.float64),
        "bptt_truncate": request.bptt_truncate,
    }


def compare_arrays(request: CompareRequest) -> tuple[dict[str, Any], dict[str, Array]]:
    """(``engine.bptt``'s or ``gated.bptt``'s keyword arguments, the submitted gradients), the
    submitted shapes checked against U, V, W."""
    if request.cell == "rnn":
        for name in ("b", "c"):
            if getattr(request, name) is not None:
                raise InputError(
                    f"{name}: POST /bptt/compare diagnoses the tutorial's model, which has no biases, for cell "
                    f"'rnn' (the gated cells take b, b_hh and c); got {name}",
                    field=name,
                )
    arrays = {
        **_weights(request, np.float64),
        "x": token_ids(request.x, "x"),
        "y": token_ids(request.y, "y"),
        **_states(request, request.s0, request.c0, "", np.float64),
        "bptt_truncate": request.bptt_truncate,
    }
    if request.cell == "rnn":
        del arrays["b"], arrays["c"]
    submitted = {}
    for name in "UVW":
        want = arrays[name].shape
        grad = array(getattr(request, f"dLd{name}"), f"dLd{name}", ndim=len(want))
        if grad.shape != want:
            raise InputError(
                f"dLd{name} must have the shape of {name}, {' x '.join(map(str, want))}, "
                f"got {' x '.join(map(str, grad.shape))}",
                field=f"dLd{name}",
            )
        submitted[f"dLd{name}"] = grad
    return arrays, submitted


# The shapes of the arrays whose rank depends on the cell: (vanilla, gated), for messages.
_SHAPES = {"U": ("H x C", "G x H x C"), "W": ("H x H", "G x H x H"), "b": ("H", "G x H"), "b_hh": ("H", "G x H")}


def _weights(
    request: BpttRequest | BpttBatchRequest | GradientCheckRequest | CompareRequest | FlowRequest, dtype: Floating
) -> dict[str, Any]:
    """U, V, W, and the biases b, c when given; with a gated ``cell``, also ``cell``, ``b_hh`` and
    ``reset_after`` (U, W, b and b_hh then have one dimension more: the gates)."""
    cell = getattr(request, "cell", "rnn")
    weights: dict[str, Any] = {
        "U": _shaped(request.U, "U", cell, dtype),
        "V": array(request.V, "V", ndim=2, dtype=dtype),
        "W": _shaped(request.W, "W", cell, dtype),
        "b": None if request.b is None else _shaped(request.b, "b", cell, dtype),
        "c": _optional(request.c, "c", dtype),
    }
    b_hh, reset_after = getattr(request, "b_hh", None), getattr(request, "reset_after", False)
    if cell == "rnn":
        for name, given in (("b_hh", b_hh is not None), ("reset_after", reset_after)):
            if given:
                raise InputError(f"{name} is an option of the gated cells ('gru', 'lstm'); cell is 'rnn'", field=name)
        return weights
    return weights | {
        "cell": cell,
        "b_hh": None if b_hh is None else _shaped(b_hh, "b_hh", cell, dtype),
        "reset_after": reset_after,
    }


def _states(
    request: BpttRequest | BpttBatchRequest | GradientCheckRequest | CompareRequest,
    s0: list[Any] | Tensor | None,
    c0: list[Any] | Tensor | None,
    where: str,
    dtype: Floating,
) -> dict[str, Array | None]:
    """s0, and c0 for a gated cell (the engine says that the GRU has none); c0 is refused for 'rnn'."""
    states = {"s0": _optional(s0, f"{where}s0", dtype)}
    if request.cell == "rnn":
        if c0 is not None:
            raise InputError(
                f"{where}c0 is the LSTM's initial cell state: cell 'rnn' has none, got one", field=f"{where}c0"
            )
        return states
    return states | {"c0": _optional(c0, f"{where}c0", dtype)}


def _shaped(value: list[Any] | Tensor, field: str, cell: str, dtype: Floating) -> Array:
    """U, W, b or b_hh, whose rank depends on the cell; a rank that does not fit is refused by name."""
    expected = _SHAPES[field][0 if cell == "rnn" else 1]
    ndim = expected.count(" x ") + 1
    a = array(value, field, ndim=None, dtype=dtype)
    if a.ndim != ndim:
        raise InputError(
            f"{field} must be {expected} for cell {cell!r} ({ndim} dimension{'s' if ndim > 1 else ''}), "
            f"got shape {list(a.shape)}",
            field=field,
        )
    return a


def _optional(value: list[Any] | Tensor | None, field: str, dtype: Floating) -> Array | None:
    """A vector, or None."""
    return None if value is None else array(value, field, ndim=1, dtype=dtype)


def dense(value: list[Any] | Tensor, field: str) -> Array:
    """A float64 array of any rank from validated lists or a tensor object (the /vjp routes' arrays)."""
    if isinstance(value, Tensor):
        return convert(_tensor(value, field, np.float64), np.float64, field)
    try:
        return np.array(value, dtype=np.float64)
    except ValueError:  # ragged
        raise InputError(
            f"{field} must be rectangular: nested lists of equal lengths at each level", field=field
        ) from None
