"""service.codec and service.inputs: base64 tensor objects, nested lists and token ids, both ways."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from service import codec, inputs
from service.errors import InputError
from service.schemas import Tensor


def tensor(a: np.ndarray, **override) -> Tensor:
    t = {
        "dtype": a.dtype.name,
        "shape": list(a.shape),
        "data": base64.b64encode(a.astype(a.dtype.newbyteorder("<")).tobytes()).decode(),
    }
    return Tensor(**(t | override))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_to_wire_base64_round_trips_exactly(rng, dtype):
    a = rng.normal(size=(7, 5)).astype(dtype)
    a[0, 0] = -0.0
    wire = codec.to_wire(a, "base64")
    assert wire["dtype"] == np.dtype(dtype).name and wire["shape"] == [7, 5]
    back = codec.from_base64(wire["dtype"], wire["shape"], wire["data"], "U")
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, a)
    assert np.signbit(back[0, 0])


def test_to_wire_base64_is_little_endian_row_major():
    a = np.array([[1.0, 2.0]], dtype=np.float64)
    data = base64.b64decode(codec.to_wire(a, "base64")["data"])
    assert data == np.array([1.0, 2.0], dtype="<f8").tobytes()
    big = np.array([[1.0, 2.0]], dtype=">f8")
    assert base64.b64decode(codec.to_wire(big, "base64")["data"]) == data


def test_to_wire_json_writes_nested_lists(rng):
    a = rng.normal(size=(3, 2))
    assert codec.dumps({"a": codec.to_wire(a.T, "json")}) == codec.dumps({"a": a.T.tolist()})


def test_array_from_tensor_converts_dtype(rng):
    a = rng.normal(size=(4, 3)).astype(np.float32)
    got = inputs.array(tensor(a), "U", ndim=2, dtype=np.float64)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, a.astype(np.float64))


@pytest.mark.parametrize(
    ("make", "field", "message"),
    [
        (lambda a: tensor(a, data="not base64!"), "U.data", "U.data must be standard base64 with padding"),
        (
            lambda a: tensor(a, data=tensor(a).data[:-4]),
            "U.data",
            "U.data holds 93 bytes, but shape [4, 3] of float64 needs 12 x 8 = 96",
        ),
        (
            lambda a: tensor(a, shape=[4, 4]),
            "U.data",
            "U.data holds 96 bytes, but shape [4, 4] of float64 needs 16 x 8 = 128",
        ),
        (lambda a: tensor(a, dtype="float32"), "U.data", "needs 12 x 4 = 48"),
        (lambda a: tensor(a.ravel()), "U", "U must be a tensor of 2 dimension(s), got shape [12]"),
        (
            lambda a: tensor(np.where(np.arange(12).reshape(4, 3) == 5, np.nan, a)),
            "U[1][2]",
            "U[1][2] must be a finite number, got NaN",
        ),
        (
            lambda a: tensor(np.where(np.arange(12).reshape(4, 3) == 0, -np.inf, a)),
            "U[0][0]",
            "U[0][0] must be a finite number, got -Infinity",
        ),
    ],
)
def test_array_bad_tensor_is_named(rng, make, field, message):
    a = rng.normal(size=(4, 3))
    with pytest.raises(InputError) as info:
        inputs.array(make(a), "U", ndim=2)
    assert info.value.field == field
    assert message in info.value.message


def test_array_beyond_float32_range_is_refused():
    with pytest.raises(
        InputError,
        match=r"W\[0\]\[1\] must be a finite number when converted to float32 \(largest 3.403e\+38\), got Infinity",
    ):
        inputs.array([[1.0, 1e39]], "W", ndim=2, dtype=np.float32)
    big = tensor(np.array([[1e300]]))
    with pytest.raises(InputError, match=r"W\[0\]\[0\] must be a finite number when converted to float32"):
        inputs.array(big, "W", ndim=2, dtype=np.float32)


def test_array_ragged_lists_are_named():
    with pytest.raises(InputError, match=r"V must be rectangular: row V\[0\] has 2 numbers, but V\[1\] has 1"):
        inputs.array([[1.0, 2.0], [3.0]], "V", ndim=2)


def test_tokens_beyond_int64_are_named():
    with pytest.raises(InputError, match=r"x\[1\] = 18446744073709551616 is out of range"):
        codec.token_ids([1, 2**64], "x")


@pytest.mark.parametrize(
    ("ids", "field", "message"),
    [
        ([1, "a"], "x[1]", 'x[1] must be an integer, got a string "a"'),
        ([0, 1, True], "x[2]", "x[2] must be an integer, got true"),
        (["0", 1], "x[0]", 'x[0] must be an integer, got a string "0"'),
        ([1, [2]], "x[1]", "x[1] must be an integer, got a list of 1 item(s)"),
        ([[1, 2], [3, 4]], "x[0]", "x[0] must be an integer, got a list of 2 item(s)"),
        ([1, None], "x[1]", "x[1] must be an integer, got null"),
        ([1, {}], "x[1]", "x[1] must be an integer, got an object"),
    ],
)
def test_tokens_refuse_the_entry_the_server_refuses(client, ids, field, message):
    """Bugs caught: [1, "a"] became the strings ["1", "a"] in numpy, and the client blamed x[0], "1";
    [1, [2]] was numpy's ValueError, and [[1, 2], [3, 4]] "2 dimensions", not the server's message."""
    with pytest.raises(InputError) as info:
        codec.token_ids(ids, "x")
    assert (info.value.field, info.value.message) == (field, message)
    w = [[0.1, 0.2], [0.3, 0.4]]
    r = client.post("/bptt", json={"U": w, "V": w, "W": w, "x": ids, "y": [0] * len(ids)})
    first = r.json()["errors"][0]
    assert (first["field"], first["message"]) == (field, message)


def test_describe_writes_numpy_integers_as_numbers():
    """Bug caught: numpy 2's repr, "np.int64(7)", in a message about the value 7."""
    assert (codec.describe(np.int64(7)), codec.describe(np.uint8(3)), codec.describe(np.float32(0.5))) == (
        "7",
        "3",
        "0.5",
    )
