"""service.v2.protocol without HTTP: every branch of decoding with its exact message and field.

The header length, parameters, requested outputs and their binary flags, inputs as JSON
data (flat or nested, FP32/FP64, INT32/INT64 ranges at their value and one past) or as
binary sections (offsets, sizes at the bytes left and one past), batches and lengths,
the work size the limits see, the engine's arrays, and the answer's JSON and binary forms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from helpers import make_problem

import service
from service import engine
from service.errors import InputError, NotFound
from service.v2 import protocol

HL = "Inference-Header-Content-Length"
V2 = {"float64": "FP64", "float32": "FP32", "int64": "INT64", "int32": "INT32"}


def js(name: str, a: np.ndarray, datatype: str | None = None) -> dict[str, Any]:
    """An input as JSON data."""
    return {"name": name, "shape": list(a.shape), "datatype": datatype or V2[a.dtype.name], "data": a.ravel().tolist()}


def bn(name: str, a: np.ndarray) -> dict[str, Any]:
    """An input as a binary section (its bytes go after the header)."""
    return {
        "name": name,
        "shape": list(a.shape),
        "datatype": V2[a.dtype.name],
        "parameters": {"binary_data_size": a.nbytes},
    }


@pytest.fixture
def p(rng):
    return make_problem(rng, H=2, C=3, T=4)


def inputs(p, **replace: dict[str, Any] | None) -> list[dict[str, Any]]:
    """U, V, W, x, y as JSON; ``replace`` swaps (or with None drops) some."""
    out = []
    for n in ("U", "V", "W", "x", "y"):
        t = replace.get(n, js(n, getattr(p, n)))
        if t is not None:
            out.append(t)
    return out + [t for n, t in replace.items() if n not in "UVWxy" and t is not None]


def parse(header: dict[str, Any], binary: bytes = b"", length: str | None = None) -> protocol.Call:
    h = orjson.dumps(header)
    if binary and length is None:
        length = str(len(h))
    return protocol.parse_request(h + binary, length)


def refused(header: dict[str, Any], binary: bytes = b"", length: str | None = None) -> tuple[str | None, str]:
    with pytest.raises(InputError) as info:
        parse(header, binary, length)
    return info.value.field, info.value.message


# -- metadata and the model's name ------------------------------------------------------


def test_v2_server_and_model_metadata():
    assert protocol.server_metadata() == {
        "name": "bptt-service",
        "version": service.__version__,
        "extensions": ["binary_tensor_data"],
    }
    meta = protocol.model_metadata()
    assert (meta["name"], meta["versions"], meta["platform"]) == ("bptt", ["1"], "numpy")
    assert meta["description"] == protocol.DESCRIPTION
    assert meta["inputs"] == [
        {"name": "U", "datatype": "FP64", "shape": [-1, -1]},
        {"name": "V", "datatype": "FP64", "shape": [-1, -1]},
        {"name": "W", "datatype": "FP64", "shape": [-1, -1]},
        {"name": "x", "datatype": "INT64", "shape": [-1]},
        {"name": "y", "datatype": "INT64", "shape": [-1]},
        {"name": "s0", "datatype": "FP64", "shape": [-1]},
        {"name": "lengths", "datatype": "INT64", "shape": [-1]},
    ]
    assert meta["outputs"][0] == {"name": "loss", "datatype": "FP64", "shape": [1]}
    assert meta["outputs"][2] == {"name": "tokens", "datatype": "INT64", "shape": [1]}
    assert [o["name"] for o in meta["outputs"]] == list(protocol.OUTPUTS)


def test_v2_check_model_takes_the_name_with_or_without_version_1():
    protocol.check_model("bptt", None)
    protocol.check_model("bptt", "1")
    served = "this server serves 'bptt', 'bptt-gru', 'bptt-lstm', version 1"
    for name, version, message in [
        ("bptt", "2", f"unknown model 'bptt' version '2': {served}"),
        ("bptt", "", f"unknown model 'bptt' version '': {served}"),
        ("BPTT", None, f"unknown model 'BPTT': {served}"),
    ]:
        with pytest.raises(NotFound) as info:
            protocol.check_model(name, version)
        assert (info.value.field, info.value.message) == ("model_name", message)


# -- the header length -------------------------------------------------------------------


@pytest.mark.parametrize("length", ["abc", "-1", "+5", "05", "5.0", "", "1e2"])
def test_v2_header_length_must_be_a_byte_count(length):
    with pytest.raises(InputError) as info:
        protocol.json_header(b"{}" * 10, length)
    assert (info.value.field, info.value.message) == (HL, f"{HL} must be a byte count, got {length!r}")


def test_v2_header_length_at_the_body_and_one_past():
    body = b'{"a": 1}xyz'
    assert protocol.json_header(body, str(len(body))) == body
    assert protocol.json_header(body, "8") == b'{"a": 1}'
    assert protocol.json_header(body, " 8 ") == b'{"a": 1}'  # surrounding spaces are the header's, not the number's
    assert protocol.json_header(body, "0") == b""
    assert protocol.json_header(body, None) == body
    with pytest.raises(InputError) as info:
        protocol.json_header(body, str(len(body) + 1))
    assert (info.value.field, info.value.message) == (HL, f"{HL} is 12, beyond the body's 11 bytes")


# -- parameters and outputs ----------------------------------------------------------------


@pytest.mark.parametrize(("given", "K"), [(None, None), (0, 0), (4, 4), (4.0, 4), (0.0, 0)])
def test_v2_bptt_truncate_integer_or_null(p, given, K):
    call = parse({"inputs": inputs(p), "parameters": {"bptt_truncate": given}})
    assert call.bptt_truncate == K and type(call.bptt_truncate) is type(K)
    assert parse({"inputs": inputs(p)}).bptt_truncate is None


@pytest.mark.parametrize(("given", "shown"), [(-1, "-1"), (4.5, "4.5"), (True, "True"), ("3", "'3'"), ([3], "[3]")])
def test_v2_bptt_truncate_refused_naming_the_parameter(p, given, shown):
    assert refused({"inputs": inputs(p), "parameters": {"bptt_truncate": given}}) == (
        "parameters.bptt_truncate",
        f"parameters.bptt_truncate must be an integer >= 0 or null, got {shown}",
    )


def test_v2_outputs_default_to_all_as_json_and_the_request_id_is_kept(p):
    call = parse({"id": "r-1", "inputs": inputs(p)})
    assert call.outputs == list(protocol.OUTPUTS)
    assert call.binary == dict.fromkeys(protocol.OUTPUTS, False)
    assert call.request_id == "r-1"
    assert parse({"inputs": inputs(p)}).request_id is None


def test_v2_outputs_asked_for_in_order_with_their_binary_flags(p):
    outputs = [{"name": "dLdW", "parameters": {"binary_data": True}}, {"name": "loss"}, {"name": "dLdU"}]
    call = parse({"inputs": inputs(p), "outputs": outputs})
    assert call.outputs == ["dLdW", "loss", "dLdU"]
    assert call.binary == {"dLdW": True, "loss": False, "dLdU": False}
    every = parse({"inputs": inputs(p), "outputs": outputs, "parameters": {"binary_data_output": True}})
    assert every.binary == {"dLdW": True, "loss": True, "dLdU": True}
    not_loss = [{"name": "loss", "parameters": {"binary_data": False}}, {"name": "tokens"}]
    call = parse({"inputs": inputs(p), "outputs": not_loss, "parameters": {"binary_data_output": True}})
    assert call.binary == {"loss": False, "tokens": True}
    all_binary = parse({"inputs": inputs(p), "parameters": {"binary_data_output": True}})
    assert all_binary.binary == dict.fromkeys(protocol.OUTPUTS, True)
    truthy = parse({"inputs": inputs(p), "parameters": {"binary_data_output": 1}})  # only true is true
    assert not any(truthy.binary.values())


def test_v2_unknown_or_repeated_output_is_refused(p):
    assert refused({"inputs": inputs(p), "outputs": [{"name": "loss"}, {"name": "dLdX"}]}) == (
        "outputs[dLdX]",
        "unknown output 'dLdX'; the model bptt has loss, mean_loss, tokens, dLdU, dLdV, dLdW, dLds0, final_state, "
        "losses",
    )
    assert refused({"inputs": inputs(p), "outputs": [{"name": "loss"}, {"name": "dLdU"}, {"name": "loss"}]}) == (
        "outputs",
        "outputs names an output more than once",
    )


# -- inputs ------------------------------------------------------------------------------------


def test_v2_inputs_by_name_datatype_and_presence(p):
    assert refused({"inputs": [*inputs(p), js("z", p.x)]}) == (
        "z",
        "unknown input 'z'; the model bptt takes U, V, W, x, y, s0, lengths",
    )
    assert refused({"inputs": [*inputs(p), js("U", p.U)]}) == ("U", "input U is given more than once")
    assert refused({"inputs": inputs(p, U=js("U", p.U, "INT64"))}) == (
        "U.datatype",
        "U must have datatype FP64 or FP32, got 'INT64'",
    )
    assert refused({"inputs": inputs(p, x=js("x", p.x, "FP64"))}) == (
        "x.datatype",
        "x must have datatype INT64 or INT32, got 'FP64'",
    )
    assert refused({"inputs": inputs(p, s0=js("s0", np.zeros(2), "INT32"))})[0] == "s0.datatype"
    assert refused({"inputs": inputs(p, lengths=js("lengths", np.array([4]), "FP32"))})[0] == "lengths.datatype"
    for name in "UVWxy":
        assert refused({"inputs": inputs(p, **{name: None})}) == (name, f"input {name} is required but missing")
    assert refused({"inputs": inputs(p, U={"name": "U", "shape": [2, 3], "datatype": "FP64"})}) == (
        "U",
        "U has neither data nor parameters.binary_data_size",
    )


def test_v2_inputs_of_every_datatype_decode_to_their_dtype(p):
    call = parse(
        {
            "inputs": inputs(
                p,
                U=js("U", p.U.astype(np.float32)),
                x=js("x", p.x.astype(np.int32)),
                s0=js("s0", np.array([0.5, -0.25])),
            )
        }
    )
    a = call.arrays
    assert a["U"].dtype == np.float32 and a["U"].shape == (2, 3)
    np.testing.assert_array_equal(a["U"], p.U.astype(np.float32))
    assert a["V"].dtype == np.float64
    np.testing.assert_array_equal(a["V"], p.V)
    assert a["x"].dtype == np.int32 and a["x"].tolist() == p.x.tolist()
    assert a["y"].dtype == np.int64 and a["y"].tolist() == p.y.tolist()
    assert a["s0"].tolist() == [0.5, -0.25]
    assert sorted(a) == ["U", "V", "W", "s0", "x", "y"]


def test_v2_json_data_flat_or_nested_fills_the_shape(p):
    nested = {"name": "U", "shape": [2, 3], "datatype": "FP64", "data": p.U.tolist()}
    np.testing.assert_array_equal(parse({"inputs": inputs(p, U=nested)}).arrays["U"], p.U)
    wrong = {"name": "U", "shape": [3, 2], "datatype": "FP64", "data": p.U.ravel().tolist()}
    assert parse({"inputs": inputs(p, U=wrong)}).arrays["U"].shape == (3, 2)  # the shape, not the nesting, decides


@pytest.mark.parametrize(
    ("tensor", "field", "message"),
    [
        (
            {"name": "U", "shape": [2, 3], "datatype": "FP64", "data": [1.0] * 5},
            "U.data",
            "U.data holds 5 elements, but shape [2, 3] needs 6",
        ),
        (
            {"name": "U", "shape": [2, 3], "datatype": "FP64", "data": [1.0] * 7},
            "U.data",
            "U.data holds 7 elements, but shape [2, 3] needs 6",
        ),
        (
            {"name": "U", "shape": [2, 3], "datatype": "FP64", "data": [[1.0, 2.0, 3.0], [4.0, 5.0]]},
            "U.data",
            "U.data is ragged: nested rows of unequal length",
        ),
        (
            {"name": "x", "shape": [4], "datatype": "INT64", "data": [[1, 2, 3], [4]]},
            "x.data",
            "x.data is ragged: nested rows of unequal length",
        ),
        (
            {"name": "x", "shape": [4], "datatype": "INT64", "data": [[[1, 2]], [[3], [4]]]},
            "x.data",
            "x.data is ragged: nested rows of unequal length",
        ),
        (
            {"name": "U", "shape": [2, 3], "datatype": "FP64", "data": [1.0, "a", 0, 0, 0, 0]},
            "U.data",
            'U.data must hold finite numbers (FP64), got a string "a" at U[1]',
        ),
        (
            {"name": "x", "shape": [4], "datatype": "INT64", "data": [0, 1, 2.0, 1]},
            "x.data",
            "x.data must hold integers (INT64), got 2.0 at x[2]",
        ),
        (
            {"name": "U", "shape": [2, 3], "datatype": "FP32", "data": [0.0, 1e39, 0, 0, 0, 0]},
            "U[0][1]",
            "U[0][1] must be a finite number when converted to float32 (largest 3.403e+38), got Infinity",
        ),
    ],
)
def test_v2_json_data_refused_naming_the_tensor(p, tensor, field, message):
    assert refused({"inputs": inputs(p, **{tensor["name"]: tensor})}) == (field, message)


@pytest.mark.parametrize(("datatype", "low", "high"), [("INT32", -(2**31), 2**31 - 1), ("INT64", -(2**63), 2**63 - 1)])
def test_v2_integers_at_their_datatypes_range_and_one_past(p, datatype, low, high):
    at = {"name": "lengths", "shape": [2], "datatype": datatype, "data": [low, high]}
    got = parse({"inputs": inputs(p, lengths=at)}).arrays["lengths"]
    assert got.tolist() == [low, high] and got.dtype == np.dtype(datatype.lower())
    for past in (low - 1, high + 1):  # (beyond 64 bits orjson cannot write them: decoded directly)
        with pytest.raises(InputError) as info:
            protocol._from_json([1, past], "lengths", datatype, datatype.lower(), [2])
        assert (info.value.field, info.value.message) == (
            "lengths.data",
            f"lengths.data holds {past}, out of {datatype}'s range",
        )


def test_v2_fp32_at_float32s_largest_value():
    largest = float(np.finfo(np.float32).max)
    a = protocol._from_json([largest, -largest], "s0", "FP32", "float32", [2])
    assert a.dtype == np.float32 and a.tolist() == [np.float32(largest), -np.float32(largest)]
    b = protocol._from_json([1e300], "s0", "FP64", "float64", [1])
    assert b.dtype == np.float64 and b.tolist() == [1e300]


# -- binary sections -------------------------------------------------------------------------------


def test_v2_binary_inputs_are_read_in_order_from_their_offsets(p):
    U32 = p.U.astype(np.float32)
    header = {"inputs": inputs(p, U=bn("U", U32), W=bn("W", p.W), y=bn("y", p.y))}
    binary = U32.tobytes() + p.W.tobytes() + p.y.tobytes()
    a = parse(header, binary).arrays
    np.testing.assert_array_equal(a["U"], U32)
    np.testing.assert_array_equal(a["W"], p.W)
    np.testing.assert_array_equal(a["V"], p.V)  # JSON between binary ones
    assert a["y"].tolist() == p.y.tolist()
    assert a["U"].dtype == np.float32 and a["y"].dtype == np.int64


def test_v2_binary_size_at_the_bytes_left_and_one_past(p):
    header = {"inputs": inputs(p, U=bn("U", p.U), W=bn("W", p.W))}
    binary = p.U.tobytes() + p.W.tobytes()
    assert refused(header, binary[:-1]) == (
        "W.parameters.binary_data_size",
        "W.parameters.binary_data_size is 32, but only 31 bytes of binary data remain after the earlier inputs",
    )
    assert refused(header, binary + b"\0" * 3) == (
        HL,
        "the body has 3 bytes after the binary inputs that no binary_data_size accounts for",
    )
    assert refused({"inputs": inputs(p)}, b"\0" * 8) == (
        HL,
        "the body has 8 bytes after the binary inputs that no binary_data_size accounts for",
    )


def test_v2_binary_size_that_disagrees_with_the_shape_names_the_section(p):
    t = bn("U", p.U) | {"parameters": {"binary_data_size": 40}}
    assert refused({"inputs": inputs(p, U=t)}, p.U.tobytes()[:40]) == (
        "U (binary_data_size)",
        "U (binary_data_size) holds 40 bytes, but shape [2, 3] of float64 needs 6 x 8 = 48",
    )
    nan = p.U.copy()
    nan[1, 2] = np.nan
    assert refused({"inputs": inputs(p, U=bn("U", nan))}, nan.tobytes()) == (
        "U[1][2]",
        "U[1][2] must be a finite number, got NaN",
    )


@pytest.mark.parametrize(("size", "shown"), [(-1, "-1"), (48.0, "48.0"), (True, "True"), ("48", "'48'")])
def test_v2_binary_size_must_be_a_byte_count(p, size, shown):
    t = bn("U", p.U) | {"parameters": {"binary_data_size": size}}
    assert refused({"inputs": inputs(p, U=t)}, p.U.tobytes()) == (
        "U.parameters.binary_data_size",
        f"U.parameters.binary_data_size must be a byte count, got {shown}",
    )


def test_v2_binary_size_and_data_together_are_refused(p):
    t = js("U", p.U) | {"parameters": {"binary_data_size": 48}}
    assert refused({"inputs": inputs(p, U=t)}, p.U.tobytes()) == ("U", "U has both data and binary_data_size; send one")
    empty = {"name": "s0", "shape": [0], "datatype": "FP64", "parameters": {"binary_data_size": 0}}
    assert parse({"inputs": inputs(p, s0=empty)}).arrays["s0"].shape == (0,)  # 0 bytes is a size


# -- batches and the work size -------------------------------------------------------------------------


def call_of(**arrays: np.ndarray) -> protocol.Call:
    return protocol.Call(arrays=arrays, bptt_truncate=None, request_id=None, outputs=list(protocol.OUTPUTS))


def test_v2_work_size_of_one_sequence_a_batch_and_lengths(p):
    X = np.zeros((3, 5), dtype=np.int64)
    assert protocol.work_size(call_of(U=p.U, x=p.x, y=p.y)) == (2, 3, [4])
    assert protocol.work_size(call_of(U=p.U, x=X, y=X)) == (2, 3, [5, 5, 5])
    assert protocol.work_size(call_of(U=p.U, x=X, y=X, lengths=np.array([1, 5, 2]))) == (2, 3, [1, 5, 2])
    assert protocol.work_size(call_of(U=p.U, x=p.x, y=p.y, lengths=np.array([3]))) == (2, 3, [3])
    empty = np.zeros((0, 5), dtype=np.int64)
    assert protocol.work_size(call_of(U=p.U, x=empty, y=empty)) == (2, 3, [0])
    assert protocol.work_size(call_of(U=p.U.ravel(), x=p.x, y=p.y)) == (0, 0, [4])  # the engine names U's shape


def test_v2_sequences_cut_rows_to_their_lengths_at_1_and_T():
    X = np.arange(10).reshape(2, 5)
    xs, ys, rows = protocol._sequences(X, X + 1, {}, np.array([1, 5]))
    assert [r.tolist() for r in xs] == [[0], [5, 6, 7, 8, 9]]
    assert [r.tolist() for r in ys] == [[1], [6, 7, 8, 9, 10]]
    assert rows == {}
    xs, _, rows = protocol._sequences(X[0], X[0], {"s0": np.array([0.5, 1.0])}, None)  # [T] is one row
    assert [r.tolist() for r in xs] == [[0, 1, 2, 3, 4]]
    assert [s.tolist() for s in rows["s0"]] == [[0.5, 1.0]]
    _, _, rows = protocol._sequences(X, X, {"s0": np.ones((2, 3)), "c0": np.zeros((2, 3))}, None)
    assert len(rows["s0"]) == 2 and rows["s0"][1].shape == (3,) and len(rows["c0"]) == 2


@pytest.mark.parametrize(
    ("x", "y", "s0", "lengths", "field", "message"),
    [
        (
            np.zeros((2, 3)),
            np.zeros((2, 4)),
            None,
            None,
            "y",
            "x and y must both be [T] or both [B, T], got [2, 3] and [2, 4]",
        ),
        (np.zeros(3), np.zeros(4), None, None, "y", "x and y must both be [T] or both [B, T], got [1, 3] and [1, 4]"),
        (
            np.zeros((1, 2, 3)),
            np.zeros((1, 2, 3)),
            None,
            None,
            "y",
            "x and y must both be [T] or both [B, T], got [1, 2, 3] and [1, 2, 3]",
        ),
        (
            np.zeros((2, 3)),
            np.zeros((2, 3)),
            None,
            np.array([3, 4]),
            "lengths[1]",
            "lengths[1] = 4 is out of range [1, T] = [1, 3]",
        ),
        (
            np.zeros((2, 3)),
            np.zeros((2, 3)),
            None,
            np.array([0, 1]),
            "lengths[0]",
            "lengths[0] = 0 is out of range [1, T] = [1, 3]",
        ),
        (
            np.zeros((2, 3)),
            np.zeros((2, 3)),
            None,
            np.array([3]),
            "lengths",
            "lengths must have B = 2 entries, got shape [1]",
        ),
        (
            np.zeros((2, 3)),
            np.zeros((2, 3)),
            np.zeros(4),
            None,
            "s0",
            "s0 of a batch must be [B, H] with B = 2, got [4]",
        ),
        (
            np.zeros((2, 3)),
            np.zeros((2, 3)),
            np.zeros((3, 4)),
            None,
            "s0",
            "s0 of a batch must be [B, H] with B = 2, got [3, 4]",
        ),
    ],
)
def test_v2_sequences_refused_naming_the_input(x, y, s0, lengths, field, message):
    with pytest.raises(InputError) as info:
        protocol._sequences(x, y, {} if s0 is None else {"s0": s0}, lengths)
    assert (info.value.field, info.value.message) == (field, message)


# -- the engine's arrays ------------------------------------------------------------------------------------


def test_v2_infer_one_sequence_with_lengths_is_a_batch_of_one(p):
    s0 = np.array([0.3, -0.2])
    lengths = js("lengths", np.array([3]))
    call = parse({"inputs": inputs(p, s0=js("s0", s0), lengths=lengths), "parameters": {"bptt_truncate": 1}})
    out = protocol.infer(call)
    g = engine.bptt_batch(p.U, p.V, p.W, [p.x[:3]], [p.y[:3]], bptt_truncate=1, s0=[s0])
    full = engine.bptt_batch(p.U, p.V, p.W, [p.x[:3]], [p.y[:3]], s0=[s0])
    assert not np.array_equal(g.dLdW, full.dLdW)  # K = 1 matters here
    assert out["final_state"].shape == (1, 2)
    np.testing.assert_array_equal(out["dLdW"], g.dLdW)
    np.testing.assert_array_equal(out["losses"], g.losses)
    assert out["tokens"].tolist() == [3] and out["tokens"].dtype == np.int64


def test_v2_infer_fp32_weights_and_s0_compute_in_float32_with_fp64_losses(p):
    U, V, W = (getattr(p, n).astype(np.float32) for n in "UVW")
    s0 = np.array([0.3, -0.2])
    call = parse(
        {
            "inputs": inputs(p, U=js("U", U), V=js("V", V), W=js("W", W), s0=js("s0", s0)),
            "parameters": {"bptt_truncate": 1},
        }
    )
    out = protocol.infer(call)
    g = engine.bptt(U, V, W, p.x, p.y, bptt_truncate=1, s0=s0.astype(np.float32))
    assert out["dLds0"].dtype == np.float32
    np.testing.assert_array_equal(out["dLds0"], g.dLds0)
    np.testing.assert_array_equal(out["dLdU"], g.dLdU)
    for name in ("loss", "mean_loss", "losses"):
        assert out[name].dtype == np.float64 and out[name].shape == (1,), name
    assert out["losses"][0] == out["loss"][0] == np.float64(g.loss)
    assert out["mean_loss"][0] == np.float64(g.mean_loss)


def test_v2_infer_fp32_s0_with_fp64_weights_computes_in_float64(p):
    s0 = np.array([0.3, -0.2], dtype=np.float32)
    out = protocol.infer(parse({"inputs": inputs(p, s0=js("s0", s0))}))
    g = engine.bptt(p.U, p.V, p.W, p.x, p.y, s0=s0.astype(np.float64))
    assert out["dLds0"].dtype == np.float64
    np.testing.assert_array_equal(out["dLds0"], g.dLds0)


# -- the answer ----------------------------------------------------------------------------------------------


def test_v2_encode_response_as_json(p):
    call = parse({"id": "abc", "inputs": inputs(p), "outputs": [{"name": "tokens"}, {"name": "dLdW"}]})
    body, headers = protocol.encode_response(call, protocol.infer(call))
    assert headers == {"content-type": "application/json"}
    answer = orjson.loads(bytes(body))
    g = engine.bptt(p.U, p.V, p.W, p.x, p.y)
    assert answer == {
        "model_name": "bptt",
        "model_version": "1",
        "outputs": [
            {"name": "tokens", "datatype": "INT64", "shape": [1], "data": [4]},
            {"name": "dLdW", "datatype": "FP64", "shape": [2, 2], "data": g.dLdW.ravel().tolist()},
        ],
        "id": "abc",
    }
    plain = parse({"inputs": inputs(p), "outputs": [{"name": "loss"}]})
    body, _ = protocol.encode_response(plain, protocol.infer(plain))
    assert "id" not in orjson.loads(bytes(body))


def test_v2_encode_response_with_binary_outputs_after_the_header(p):
    U, V, W = (getattr(p, n).astype(np.float32) for n in "UVW")
    outputs = [
        {"name": "dLdU", "parameters": {"binary_data": True}},
        {"name": "loss"},
        {"name": "tokens", "parameters": {"binary_data": True}},
    ]
    call = parse({"inputs": inputs(p, U=js("U", U), V=js("V", V), W=js("W", W)), "outputs": outputs})
    results = protocol.infer(call)
    body, headers = protocol.encode_response(call, results)
    body = bytes(body)
    n = int(headers[HL])
    assert headers["content-type"] == "application/octet-stream"
    header = orjson.loads(body[:n])
    assert header["outputs"] == [
        {"name": "dLdU", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}},
        {"name": "loss", "datatype": "FP64", "shape": [1], "data": [results["loss"][0]]},
        {"name": "tokens", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}},
    ]
    assert len(body) == n + 24 + 8
    np.testing.assert_array_equal(np.frombuffer(body[n : n + 24], dtype="<f4").reshape(2, 3), results["dLdU"])
    assert np.frombuffer(body[n + 24 :], dtype="<i8").tolist() == [4]


def test_v2_infer_fp64_s0_beyond_float32_with_fp32_weights_is_refused_naming_s0(p):
    U, V, W = (getattr(p, n).astype(np.float32) for n in "UVW")
    s0 = np.array([0.5, -1e39])
    call = parse({"inputs": inputs(p, U=js("U", U), V=js("V", V), W=js("W", W), s0=js("s0", s0))})
    with pytest.raises(InputError) as info:
        protocol.infer(call)
    assert (info.value.field, info.value.message) == (
        "s0[1]",
        "s0[1] must be a finite number when converted to float32 (largest 3.403e+38), got -Infinity",
    )
