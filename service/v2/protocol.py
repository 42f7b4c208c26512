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

Three models (``MODELS``): ``bptt``, the vanilla cell, and ``bptt-gru`` and
``bptt-lstm``, the gated cells of ``service.gated``. Inputs: U, V, W (FP64 or
FP32; [G, H, C] and [G, H, H] for the gated cells), x, y (INT64 or INT32) of
shape [T] for one sequence or [B, T] for a batch, optional s0 ([H], or [B, H]
for a batch), optional lengths ([B], for batches padded at the end); the gated
models also take the biases b, b_hh [G, H] and c [C], and the LSTM c0 like s0.
Request parameters ``bptt_truncate`` and (``bptt-gru``) ``reset_after``.
Outputs: loss, mean_loss, tokens, dLdU, dLdV, dLdW, dLds0, final_state, and
losses for a batch; the gated models' bias gradients, and the LSTM's dLdc0 and
final_cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydantic
from pydantic import TypeAdapter

from .. import __version__, engine, gated
from ..codec import Array, convert, describe, dumps, element_count, from_bytes
from ..errors import InputError, NotFound
from ..handlers import parse
from ..schemas import Number
from .wire import INPUT_NAMES, OUTPUT_NAMES, InferRequest

__all__ = [
    "HEADER_LENGTH",
    "MODELS",
    "MODEL_NAME",
    "MODEL_VERSION",
    "Call",
    "Model",
    "check_model",
    "check_required",
    "datatype_of",
    "encode_response",
    "infer",
    "input_dtype",
    "json_header",
    "model_metadata",
    "output_names",
    "parse_request",
    "server_metadata",
    "truncation",
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

DESCRIPTION = (
    "Loss and BPTT gradients of a vanilla RNN language model. U [H, C], V [C, H], W [H, H] are FP64, "
    "or FP32 (all three) to compute in float32, when the gradients and states are FP32 too (loss, mean_loss and "
    "losses are FP64 always). x and y are [T] "
    "(INT64 or INT32), or [B, T] for a batch, with s0 [B, H] and lengths [B] (row b uses its first "
    "lengths[b] tokens); then dLds0 and final_state are [B, H]. Parameter bptt_truncate: K >= 0, or "
    "absent for full BPTT."
)


@dataclass(frozen=True)
class Model:
    """One model this server serves: its cell, and its inputs and outputs as ``INPUTS``, ``OUTPUTS`` are."""

    name: str
    cell: str  # "rnn", "gru" or "lstm"
    inputs: dict[str, tuple[dict[str, str], list[int], bool]]
    outputs: dict[str, tuple[str, list[int]]]
    description: str


def _gated(cell: str) -> Model:
    G, gates = (3, "r, z, n") if cell == "gru" else (4, "i, f, g, o")
    stacked: dict[str, tuple[dict[str, str], list[int], bool]] = {
        "U": (FLOATS, [G, -1, -1], True),
        "W": (FLOATS, [G, -1, -1], True),
        "b": (FLOATS, [G, -1], False),
        "b_hh": (FLOATS, [G, -1], False),
        "c": (FLOATS, [-1], False),
    }
    inputs = INPUTS | stacked | ({"c0": (FLOATS, [-1], False)} if cell == "lstm" else {})
    outputs = OUTPUTS | {"dLdU": ("FP64", [G, -1, -1]), "dLdW": ("FP64", [G, -1, -1]), "dLdb": ("FP64", [G, -1])}
    outputs |= {"dLdb_hh": ("FP64", [G, -1]), "dLdc": ("FP64", [-1])}
    if cell == "lstm":
        outputs |= {"dLdc0": ("FP64", [-1]), "final_cell": ("FP64", [-1])}
    description = (
        f"Loss and BPTT gradients of {'an' if cell == 'lstm' else 'a'} {cell.upper()} language model "
        f'(POST /bptt with "cell": "{cell}"): '
        f"U [{G}, H, C] and W [{G}, H, H], the gates stacked in PyTorch's order ({gates}), V [C, H]; optional "
        f"biases b and b_hh [{G}, H] (PyTorch's bias_ih, bias_hh) and c [C]"
        + (", and the initial cell state c0 ([H], or [B, H] for a batch)" if cell == "lstm" else "")
        + ". FP64, or FP32 (U, V, W all three) to compute in float32. x, y, s0, lengths and bptt_truncate as for "
        "the model bptt"
        + (
            "; parameter reset_after (true: torch.nn.GRU's form, the reset applied after the product; "
            "false or absent: the tutorial's)."
            if cell == "gru"
            else "."
        )
        + " The bias gradients are answered for the biases given."
    )
    return Model(f"bptt-{cell}", cell, inputs, outputs, description)


MODELS: dict[str, Model] = {
    m.name: m for m in (Model(MODEL_NAME, "rnn", INPUTS, OUTPUTS, DESCRIPTION), _gated("gru"), _gated("lstm"))
}
"""Every model, by name: ``bptt`` (the vanilla cell), ``bptt-gru``, ``bptt-lstm``."""
assert {n for m in MODELS.values() for n in m.inputs} == set(INPUT_NAMES)
assert {n for m in MODELS.values() for n in m.outputs} == set(OUTPUT_NAMES)

_FLOAT_DATA = TypeAdapter(list[Number] | list[list[Number]] | list[list[list[Number]]])
_INT_DATA = TypeAdapter(
    list[pydantic.StrictInt] | list[list[pydantic.StrictInt]] | list[list[list[pydantic.StrictInt]]]
)


def server_metadata() -> dict[str, Any]:
    """``GET /v2``."""
    return {"name": "bptt-service", "version": __version__, "extensions": ["binary_tensor_data"]}


def model_metadata(name: str = MODEL_NAME) -> dict[str, Any]:
    """``GET /v2/models/{name}``: every input and output with its default datatype and shape."""
    model = MODELS[name]
    return {
        "name": model.name,
        "versions": [MODEL_VERSION],
        "platform": "numpy",
        "description": model.description,
        "inputs": [{"name": n, "datatype": next(iter(t)), "shape": s} for n, (t, s, _) in model.inputs.items()],
        "outputs": [{"name": n, "datatype": t, "shape": s} for n, (t, s) in model.outputs.items()],
    }


def check_model(name: str, version: str | None) -> Model:
    """The model ``name`` (and ``version``); ``NotFound`` unless this server serves it."""
    if name in MODELS and version in (None, MODEL_VERSION):
        return MODELS[name]
    what = f"model {name!r}" if version is None else f"model {name!r} version {version!r}"
    served = ", ".join(map(repr, MODELS))
    raise NotFound(f"unknown {what}: this server serves {served}, version {MODEL_VERSION}", field="model_name")


@dataclass
class Call:
    """A parsed inference request: arrays by input name, and what to answer."""

    arrays: dict[str, Array]
    bptt_truncate: int | None
    request_id: str | None
    outputs: list[str]
    binary: dict[str, bool] = field(default_factory=dict)  # output name -> send as raw bytes
    model: str = MODEL_NAME
    reset_after: bool = False  # bptt-gru's parameter


def parse_request(body: bytes, header_length: str | None, model: str = MODEL_NAME) -> Call:
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
    truncate = truncation(params.get("bptt_truncate"))
    reset = reset_after(MODELS[model], params.get("reset_after"))
    arrays = _inputs(MODELS[model], request, binary)
    names = output_names(MODELS[model], [o.name for o in request.outputs or []], arrays)
    all_binary = params.get("binary_data_output") is True
    binary_of = {o.name: bool((o.parameters or {}).get("binary_data", all_binary)) for o in request.outputs or []}
    return Call(
        arrays=arrays,
        bptt_truncate=truncate,
        request_id=request.id,
        outputs=names,
        binary={n: binary_of.get(n, all_binary) for n in names},
        model=model,
        reset_after=reset,
    )


def reset_after(model: Model, value: Any) -> bool:
    """The request parameter ``reset_after``: a boolean, for the model ``bptt-gru`` only."""
    if value is None:
        return False
    if model.cell != "gru":
        raise InputError(
            f"parameters.reset_after is a parameter of the model bptt-gru; this is {model.name}",
            field="parameters.reset_after",
        )
    if type(value) is not bool:
        raise InputError(f"parameters.reset_after must be true or false, got {value!r}", field="parameters.reset_after")
    return value


def truncation(value: Any) -> int | None:
    """The request parameter ``bptt_truncate``: an integer >= 0, or None (absent or null) for full BPTT."""
    if type(value) is float and value.is_integer():  # 4.0 is an integer in JSON
        value = int(value)
    if value is not None and (type(value) is not int or value < 0):
        raise InputError(
            f"parameters.bptt_truncate must be an integer >= 0 or null, got {value!r}",
            field="parameters.bptt_truncate",
        )
    return value


# A bias's gradient is an output only when the bias is an input.
_NEEDS = {"dLdb": "b", "dLdb_hh": "b_hh", "dLdc": "c"}


def output_names(model: Model, names: list[str], arrays: dict[str, Array]) -> list[str]:
    """The outputs asked for (every output the inputs give when ``names`` is empty), each known and named once."""
    if not names:
        return [n for n in model.outputs if _NEEDS.get(n, "x") in arrays]
    for name in names:
        if name not in model.outputs:
            raise InputError(
                f"unknown output {name!r}; the model {model.name} has {', '.join(model.outputs)}",
                field=f"outputs[{name}]",
            )
        if _NEEDS.get(name, "x") not in arrays:
            raise InputError(
                f"output {name} is the gradient of the input {_NEEDS[name]}, which the request does not give",
                field=f"outputs[{name}]",
            )
    if len(set(names)) != len(names):
        raise InputError("outputs names an output more than once", field="outputs")
    return names


def input_dtype(model: Model, name: str, datatype: str, seen: dict[str, Array]) -> str:
    """The numpy dtype of input ``name`` sent as ``datatype``; refused when the model has no such input,
    it is already in ``seen``, or the datatype is not one it takes."""
    if name not in model.inputs:
        raise InputError(f"unknown input {name!r}; the model {model.name} takes {', '.join(model.inputs)}", field=name)
    if name in seen:
        raise InputError(f"input {name} is given more than once", field=name)
    types, _, _ = model.inputs[name]
    if datatype not in types:
        raise InputError(f"{name} must have datatype {' or '.join(types)}, got {datatype!r}", field=f"{name}.datatype")
    return types[datatype]


def check_required(model: Model, arrays: dict[str, Array]) -> None:
    """Refuse a request that lacks a required input."""
    for name, (_, _, required) in model.inputs.items():
        if required and name not in arrays:
            raise InputError(f"input {name} is required but missing", field=name)


def datatype_of(a: Array) -> str:
    """The protocol's datatype of an output array (FP64, FP32, INT64, INT32)."""
    return _NUMPY_TO_V2[a.dtype]


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


def _inputs(model: Model, request: InferRequest, binary: memoryview) -> dict[str, Array]:
    arrays: dict[str, Array] = {}
    offset = 0
    for tensor in request.inputs:
        name = tensor.name
        dtype = input_dtype(model, name, tensor.datatype, arrays)
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
    check_required(model, arrays)
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
    rank = 2 if MODELS[call.model].cell == "rnn" else 3
    H, C = a["U"].shape[-2:] if a["U"].ndim == rank else (0, 0)
    x = a["x"]
    if "lengths" in a:  # checked against T first: a length past T is the client's mistake, not a big request
        xs, _, _ = _sequences(x, a["y"], {}, a["lengths"])
        return H, C, [len(row) for row in xs]
    if x.ndim == 2:
        return H, C, [x.shape[1]] * x.shape[0] or [0]
    return H, C, [x.size]


def infer(call: Call) -> dict[str, Array]:
    """Run the engine for a parsed request; every output by name, as arrays."""
    a = call.arrays
    cell = MODELS[call.model].cell
    weights = [a["U"], a["V"], a["W"]]
    dtype = np.float32 if all(w.dtype == np.float32 for w in weights) else np.float64
    U, V, W = (convert(w, dtype, n) for w, n in zip(weights, "UVW", strict=True))
    x, y = a["x"], a["y"]
    states: dict[str, Any] = {n: convert(a[n], dtype, n) for n in ("s0", "c0") if n in a}
    options: dict[str, Any] = {"bptt_truncate": call.bptt_truncate}
    if cell != "rnn":
        options |= {n: convert(a[n], dtype, n) for n in ("b", "b_hh", "c") if n in a}
        options |= {"reset_after": call.reset_after}
    g: engine.Gradients | engine.BatchGradients | gated.GatedGradients | gated.GatedBatchGradients
    if x.ndim == 1 and "lengths" not in a:
        if cell == "rnn":
            g = engine.bptt(U, V, W, x, y, **states, **options)
        else:
            g = gated.bptt("gru" if cell == "gru" else "lstm", U, V, W, x, y, **states, **options)
        losses = np.array([g.loss])
    # loss, mean_loss and losses are FP64 whatever the weights' datatype (sums over many tokens).
    else:
        xs, ys, per_row = _sequences(x, y, states, a.get("lengths"))
        rows: dict[str, Any] = per_row
        if cell == "rnn":
            g = engine.bptt_batch(U, V, W, xs, ys, **rows, **options)
        else:
            g = gated.bptt_batch("gru" if cell == "gru" else "lstm", U, V, W, xs, ys, **rows, **options)
        losses = g.losses
    results = {
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
    if isinstance(g, gated.GatedGradients | gated.GatedBatchGradients):
        extra = {n: getattr(g, n) for n in ("dLdb", "dLdb_hh", "dLdc", "dLdc0", "final_cell")}
        results |= {n: v for n, v in extra.items() if v is not None}
    return results


def _sequences(
    x: Array, y: Array, states: dict[str, Array], lengths: Array | None
) -> tuple[list[Array], list[Array], dict[str, list[Array]]]:
    """Rows of [B, T] x and y, cut to ``lengths`` (padding at the end of each row), and the rows of the
    initial states (s0, c0: [B, H])."""
    if x.ndim == 1:
        x, y = x[None], y[None]
        states = {n: s.reshape(1, -1) for n, s in states.items()}
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
    for name, s in states.items():
        if s.ndim != 2 or len(s) != B:
            raise InputError(f"{name} of a batch must be [B, H] with B = {B}, got {list(s.shape)}", field=name)
    xs = [x[b, : lengths[b]] for b in range(B)]
    ys = [y[b, : lengths[b]] for b in range(B)]
    return xs, ys, {n: list(s) for n, s in states.items()}


def encode_response(call: Call, results: dict[str, Array]) -> tuple[bytes | memoryview, dict[str, str]]:
    """The response body and its headers: JSON, or a JSON header and raw bytes."""
    outputs = []
    binary: list[Array] = []
    for name in call.outputs:
        a = np.ascontiguousarray(results[name])
        out: dict[str, Any] = {"name": name, "datatype": datatype_of(a), "shape": list(a.shape)}
        if call.binary[name]:
            out["parameters"] = {"binary_data_size": a.nbytes}
            binary.append(a)
        else:
            out["data"] = a.ravel()
        outputs.append(out)
    response: dict[str, Any] = {"model_name": call.model, "model_version": MODEL_VERSION, "outputs": outputs}
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
