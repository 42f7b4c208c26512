"""The Open Inference Protocol (KServe V2, NVIDIA Triton): requests to arrays, results to answers.

Specification: kserve/open-inference-protocol, ``specification/protocol/inference_rest.md``,
and Triton's ``extension_binary_data.md``. A request is a JSON header, optionally
followed by raw little-endian tensor bytes (``Inference-Header-Content-Length``
gives the header's length; each binary input says its ``binary_data_size``).
Answers are JSON, or a JSON header and raw bytes when outputs are asked for
in binary.

Only the protocol's decoding and encoding live here. Tensors become the same
numpy arrays that ``POST /bptt`` builds (``codec``), and the same ``engine``
functions check the shapes and compute; an input ``/bptt`` refuses is refused
here too.

Inputs: U, V, W (FP64 or FP32), x, y (INT64 or INT32) of shape [T] for one
sequence or [B, T] for a batch, optional s0 ([H], or [B, H] for a batch),
optional lengths ([B], for batches padded at the end). Request parameter
``bptt_truncate``. Outputs: loss, mean_loss, tokens, dLdU, dLdV, dLdW, dLds0,
final_state, and losses for a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydantic
from pydantic import TypeAdapter

from .. import __version__, engine
from ..codec import Array, convert, describe, dumps, element_count, from_bytes
from ..errors import InputError, NotFound
from ..handlers import parse
from ..schemas import Number
from .wire import INPUT_NAMES, OUTPUT_NAMES, InferRequest

__all__ = [
    "HEADER_LENGTH",
    "MODEL_NAME",
    "MODEL_VERSION",
    "Call",
    "check_model",
    "encode_response",
    "infer",
    "json_header",
    "model_metadata",
    "parse_request",
    "server_metadata",
    "work_size",
]

MODEL_NAME = "bptt"
MODEL_VERSION = "1"
HEADER_LENGTH = "Inference-Header-Content-Length"

FLOATS = {"FP64": "float64", "FP32": "float32"}
INTS = {"INT64": "int64", "INT32": "int32"}
_NUMPY_TO_V2 = {np.dtype(v): k for k, v in (FLOATS | INTS).items()}

# name: (datatypes accepted, the default first; shape in the metadata; required).
# The metadata allows one datatype and shape per tensor: the default datatype and
# the one-sequence shape are published, and DESCRIPTION says what else is accepted.
INPUTS: dict[str, tuple[dict[str, str], list[int], bool]] = {
    "U": (FLOATS, [-1, -1], True),
    "V": (FLOATS, [-1, -1], True),
    "W": (FLOATS, [-1, -1], True),
    "x": (INTS, [-1], True),
    "y": (INTS, [-1], True),
    "s0": (FLOATS, [-1], False),
    "lengths": (INTS, [-1], False),
}
OUTPUTS: dict[str, tuple[str, list[int]]] = {
    "loss": ("FP64", [1]),
    "mean_loss": ("FP64", [1]),
    "tokens": ("INT64", [1]),
    "dLdU": ("FP64", [-1, -1]),
    "dLdV": ("FP64", [-1, -1]),
    "dLdW": ("FP64", [-1, -1]),
    "dLds0": ("FP64", [-1]),
    "final_state": ("FP64", [-1]),
    "losses": ("FP64", [-1]),
}
assert tuple(INPUTS) == INPUT_NAMES and tuple(OUTPUTS) == OUTPUT_NAMES

DESCRIPTION = (
    "Loss and BPTT gradients of a vanilla RNN language model. U [H, C], V [C, H], W [H, H] are FP64, "
    "or FP32 (all three) to compute in float32, when the gradients and states are FP32 too (loss, mean_loss and "
    "losses are FP64 always). x and y are [T] "
    "(INT64 or INT32), or [B, T] for a batch, with s0 [B, H] and lengths [B] (row b uses its first "
    "lengths[b] tokens); then dLds0 and final_state are [B, H]. Parameter bptt_truncate: K >= 0, or "
    "absent for full BPTT."
)

_FLOAT_DATA = TypeAdapter(list[Number] | list[list[Number]] | list[list[list[Number]]])
_INT_DATA = TypeAdapter(
    list[pydantic.StrictInt] | list[list[pydantic.StrictInt]] | list[list[list[pydantic.StrictInt]]]
)


def server_metadata() -> dict[str, Any]:
    """``GET /v2``."""
    return {"name": "bptt-service", "version": __version__, "extensions": ["binary_tensor_data"]}


def model_metadata() -> dict[str, Any]:
    """``GET /v2/models/bptt``: every input and output with its default datatype and shape."""
    return {
        "name": MODEL_NAME,
        "versions": [MODEL_VERSION],
        "platform": "numpy",
        "description": DESCRIPTION,
        "inputs": [{"name": n, "datatype": next(iter(t)), "shape": s} for n, (t, s, _) in INPUTS.items()],
        "outputs": [{"name": n, "datatype": t, "shape": s} for n, (t, s) in OUTPUTS.items()],
    }


def check_model(name: str, version: str | None) -> None:
    """Raise ``NotFound`` unless ``name`` (and ``version``) is the model this server serves."""
    if name == MODEL_NAME and version in (None, MODEL_VERSION):
        return
    what = f"model {name!r}" if version is None else f"model {name!r} version {version!r}"
    raise NotFound(f"unknown {what}: this server serves {MODEL_NAME!r}, version {MODEL_VERSION}", field="model_name")


@dataclass
class Call:
    """A parsed inference request: arrays by input name, and what to answer."""

    arrays: dict[str, Array]
    bptt_truncate: int | None
    request_id: str | None
    outputs: list[str]
    binary: dict[str, bool] = field(default_factory=dict)  # output name -> send as raw bytes


def parse_request(body: bytes, header_length: str | None) -> Call:
    """The JSON header and the binary section of an infer request, checked and decoded.

    Raises
    ------
    InputError
        For any malformed part, naming the tensor or the header (``RequestInvalid``
        when the JSON header does not have the protocol's shape).
    """
    header, binary = _split(body, header_length)
    request = parse(InferRequest, header)
    params = request.parameters or {}
    truncate = params.get("bptt_truncate")
    if type(truncate) is float and truncate.is_integer():  # 4.0 is an integer in JSON
        truncate = int(truncate)
    if truncate is not None and (type(truncate) is not int or truncate < 0):
        raise InputError(
            f"parameters.bptt_truncate must be an integer >= 0 or null, got {truncate!r}",
            field="parameters.bptt_truncate",
        )
    arrays = _inputs(request, binary)
    names = [o.name for o in request.outputs] if request.outputs else list(OUTPUTS)
    for name in names:
        if name not in OUTPUTS:
            raise InputError(f"unknown output {name!r}; this model has {', '.join(OUTPUTS)}", field=f"outputs[{name}]")
    if len(set(names)) != len(names):
        raise InputError("outputs names an output more than once", field="outputs")
    all_binary = params.get("binary_data_output") is True
    binary_of = {o.name: bool((o.parameters or {}).get("binary_data", all_binary)) for o in request.outputs or []}
    return Call(
        arrays=arrays,
        bptt_truncate=truncate,
        request_id=request.id,
        outputs=names,
        binary={n: binary_of.get(n, all_binary) for n in names},
    )


def json_header(body: bytes, header_length: str | None) -> bytes:
    """The JSON part of a request body (all of it without the binary extension)."""
    return _split(body, header_length)[0]


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if n < 0 or str(n) != header_length.strip():
        raise InputError(f"{HEADER_LENGTH} must be a byte count, got {header_length!r}", field=HEADER_LENGTH)
    if n > len(body):
        raise InputError(f"{HEADER_LENGTH} is {n}, beyond the body's {len(body)} bytes", field=HEADER_LENGTH)
    view = memoryview(body)
    return body[:n], view[n:]


def _inputs(request: InferRequest, binary: memoryview) -> dict[str, Array]:
    arrays: dict[str, Array] = {}
    offset = 0
    for tensor in request.inputs:
        name = tensor.name
        if name not in INPUTS:
            raise InputError(f"unknown input {name!r}; this model takes {', '.join(INPUTS)}", field=name)
        if name in arrays:
            raise InputError(f"input {name} is given more than once", field=name)
        types, _, _ = INPUTS[name]
        if tensor.datatype not in types:
            raise InputError(
                f"{name} must have datatype {' or '.join(types)}, got {tensor.datatype!r}", field=f"{name}.datatype"
            )
        dtype = types[tensor.datatype]
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise InputError(
                    f"{name}.parameters.binary_data_size must be a byte count, got {size!r}",
                    field=f"{name}.parameters.binary_data_size",
                )
            if tensor.data is not None:
                raise InputError(f"{name} has both data and binary_data_size; send one", field=name)
            if offset + size > len(binary):
                raise InputError(
                    f"{name}.parameters.binary_data_size is {size}, but only {len(binary) - offset} bytes "
                    "of binary data remain after the earlier inputs",
                    field=f"{name}.parameters.binary_data_size",
                )
            a = from_bytes(
                binary[offset : offset + size], dtype, tensor.shape, name, where=f"{name} (binary_data_size)"
            )
            offset += size
        elif tensor.data is not None:
            a = _from_json(tensor.data, name, tensor.datatype, dtype, tensor.shape)
        else:
            raise InputError(f"{name} has neither data nor parameters.binary_data_size", field=name)
        arrays[name] = a
    if offset != len(binary):
        raise InputError(
            f"the body has {len(binary) - offset} bytes after the binary inputs that no binary_data_size accounts for",
            field=HEADER_LENGTH,
        )
    for name, (_, _, required) in INPUTS.items():
        if required and name not in arrays:
            raise InputError(f"input {name} is required but missing", field=name)
    return arrays


def _from_json(data: list[Any], name: str, datatype: str, dtype: str, shape: list[int]) -> Array:
    count = element_count(shape, name)
    adapter = _FLOAT_DATA if datatype in FLOATS else _INT_DATA
    try:
        adapter.validate_python(data, strict=True)
    except pydantic.ValidationError as exc:
        # One error per form (flat, 2 or 3 levels): the deepest is the form the data has.
        e = max(exc.errors(include_url=False), key=lambda e: sum(isinstance(p, int) for p in e["loc"]))
        where = name + "".join(f"[{p}]" for p in e["loc"] if isinstance(p, int))
        kind = "finite numbers" if datatype in FLOATS else "integers"
        raise InputError(
            f"{name}.data must hold {kind} ({datatype}), got {describe(e['input'])} at {where}", field=f"{name}.data"
        ) from None
    try:
        a = np.array(data, dtype=np.float64 if datatype in FLOATS else object)
    except ValueError:
        raise InputError(f"{name}.data is ragged: nested rows of unequal length", field=f"{name}.data") from None
    if a.dtype == object and a.ndim and any(isinstance(v, list) for v in a.ravel()):
        raise InputError(f"{name}.data is ragged: nested rows of unequal length", field=f"{name}.data")
    a = a.ravel()
    if len(a) != count:
        raise InputError(f"{name}.data holds {len(a)} elements, but shape {shape} needs {count}", field=f"{name}.data")
    if datatype in INTS:
        info = np.iinfo(dtype)
        bad = [v for v in a if not info.min <= v <= info.max]
        if bad:
            raise InputError(f"{name}.data holds {bad[0]}, out of {datatype}'s range", field=f"{name}.data")
        return a.astype(dtype).reshape(shape)
    # FP32: a float64 beyond float32's range is refused, not rounded to infinity.
    return convert(a.reshape(shape), np.float32 if dtype == "float32" else np.float64, name)


def work_size(call: Call) -> tuple[int, int, list[int]]:
    """(H, C, the sequences' lengths) of a request, for the service's limits."""
    a = call.arrays
    H, C = a["U"].shape if a["U"].ndim == 2 else (0, 0)
    x = a["x"]
    if "lengths" in a:  # checked against T first: a length past T is the client's mistake, not a big request
        xs, _, _ = _sequences(x, a["y"], None, a["lengths"])
        return H, C, [len(row) for row in xs]
    if x.ndim == 2:
        return H, C, [x.shape[1]] * x.shape[0] or [0]
    return H, C, [x.size]


def infer(call: Call) -> dict[str, Array]:
    """Run the engine for a parsed request; every output by name, as arrays."""
    a = call.arrays
    weights = [a["U"], a["V"], a["W"]]
    dtype = np.float32 if all(w.dtype == np.float32 for w in weights) else np.float64
    U, V, W = (convert(w, dtype, n) for w, n in zip(weights, "UVW", strict=True))
    x, y = a["x"], a["y"]
    s0 = None if "s0" not in a else convert(a["s0"], dtype, "s0")
    g: engine.Gradients | engine.BatchGradients
    if x.ndim == 1 and "lengths" not in a:
        g = engine.bptt(U, V, W, x, y, bptt_truncate=call.bptt_truncate, s0=s0)
        losses = np.array([g.loss])
    # loss, mean_loss and losses are FP64 whatever the weights' datatype (sums over many tokens).
    else:
        xs, ys, s0s = _sequences(x, y, s0, a.get("lengths"))
        g = engine.bptt_batch(U, V, W, xs, ys, bptt_truncate=call.bptt_truncate, s0=s0s)
        losses = g.losses
    return {
        "loss": np.array([g.loss]),
        "mean_loss": np.array([g.mean_loss]),
        "tokens": np.array([g.tokens], dtype=np.int64),
        "dLdU": g.dLdU,
        "dLdV": g.dLdV,
        "dLdW": g.dLdW,
        "dLds0": g.dLds0,
        "final_state": g.final_state,
        "losses": np.asarray(losses, dtype=np.float64),
    }


def _sequences(
    x: Array, y: Array, s0: Array | None, lengths: Array | None
) -> tuple[list[Array], list[Array], list[Array] | None]:
    """Rows of [B, T] x and y, cut to ``lengths`` (padding at the end of each row)."""
    if x.ndim == 1:
        x, y = x[None], y[None]
        s0 = None if s0 is None else s0.reshape(1, -1)
    if x.ndim != 2 or y.shape != x.shape:
        raise InputError(f"x and y must both be [T] or both [B, T], got {list(x.shape)} and {list(y.shape)}", field="y")
    B, T = x.shape
    if lengths is None:
        lengths = np.full(B, T)
    if lengths.shape != (B,):
        raise InputError(f"lengths must have B = {B} entries, got shape {list(lengths.shape)}", field="lengths")
    bad = np.flatnonzero((lengths < 1) | (lengths > T))
    if len(bad):
        i = int(bad[0])
        raise InputError(f"lengths[{i}] = {int(lengths[i])} is out of range [1, T] = [1, {T}]", field=f"lengths[{i}]")
    if s0 is not None and (s0.ndim != 2 or len(s0) != B):
        raise InputError(f"s0 of a batch must be [B, H] with B = {B}, got {list(s0.shape)}", field="s0")
    xs = [x[b, : lengths[b]] for b in range(B)]
    ys = [y[b, : lengths[b]] for b in range(B)]
    return xs, ys, None if s0 is None else list(s0)


def encode_response(call: Call, results: dict[str, Array]) -> tuple[bytes | memoryview, dict[str, str]]:
    """The response body and its headers: JSON, or a JSON header and raw bytes."""
    outputs = []
    binary: list[Array] = []
    for name in call.outputs:
        a = np.ascontiguousarray(results[name])
        out: dict[str, Any] = {"name": name, "datatype": _NUMPY_TO_V2[a.dtype], "shape": list(a.shape)}
        if call.binary[name]:
            out["parameters"] = {"binary_data_size": a.nbytes}
            binary.append(a)
        else:
            out["data"] = a.ravel()
        outputs.append(out)
    response: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": MODEL_VERSION, "outputs": outputs}
    if call.request_id is not None:
        response["id"] = call.request_id
    header = dumps(response)
    if not binary:
        return header, {"content-type": "application/json"}
    # One buffer, each array's bytes copied into it once (little-endian).
    body = bytearray(len(header) + sum(a.nbytes for a in binary))
    body[: len(header)] = header
    offset = len(header)
    for a in binary:
        view = np.frombuffer(body, dtype=a.dtype.newbyteorder("<"), count=a.size, offset=offset)
        view[:] = a.ravel()
        offset += a.nbytes
    return memoryview(body), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
