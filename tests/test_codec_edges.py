"""service.codec at its edges: every branch of decoding and its exact message and field.

Values described in messages, float conversion, base64 (strictness, padding), shapes (the
dimension limit, negative or non-integer sizes, the element-count limit at its value and one
past it), byte counts, non-finite entries, token ids of every kind, the answer's finiteness
check, and the wire forms both ways.
"""

from __future__ import annotations

import base64
import warnings

import numpy as np
import pytest

from service import codec
from service.errors import ComputeError, InputError


def error(call, *args, **kwargs) -> tuple[str | None, str]:
    """(field, message) of the InputError or ComputeError ``call`` raises."""
    with pytest.raises((InputError, ComputeError)) as info:
        call(*args, **kwargs)
    return info.value.field, info.value.message


def b64(a: np.ndarray) -> str:
    return base64.b64encode(a.astype(a.dtype.newbyteorder("<")).tobytes()).decode()


# -- describe -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "null"),
        (True, "true"),
        (False, "false"),
        (np.bool_(True), "true"),
        (np.bool_(False), "false"),
        (0, "0"),
        (-3, "-3"),
        (2.5, "2.5"),
        (float("nan"), "NaN"),
        (float("inf"), "Infinity"),
        (float("-inf"), "-Infinity"),
        (np.float32(1.5), "1.5"),
        (np.float64("nan"), "NaN"),
        (np.float32("-inf"), "-Infinity"),
        (np.int64(7), "7"),  # was "np.int64(7)", numpy's repr
        (10**39, "1" + "0" * 39),  # 40 characters: whole
        (10**40, "1" + "0" * 36 + "..."),  # 41: cut to 37 and "..."
        ("", 'a string ""'),
        ("a" * 40, f'a string "{"a" * 40}"'),
        ("b" * 41, f'a string "{"b" * 37}..."'),
        ([], "an empty list"),
        ((), "an empty list"),
        ([1], "a list of 1 item(s)"),
        ((1, 2), "a list of 2 item(s)"),
        ({}, "an object"),
        ({"a": 1}, "an object"),
        (b"xy", "bytes"),
    ],
)
def test_describe_says_what_arrived_in_json_words(value, text):
    assert codec.describe(value) == text


# -- convert ------------------------------------------------------------------------


def test_convert_to_the_same_dtype_returns_the_array_itself():
    a = np.array([1.0, 2.0])
    assert codec.convert(a, np.float64, "U") is a


def test_convert_float32_to_float64_is_exact():
    a = np.array([1.5, 3.25e38], dtype=np.float32)
    got = codec.convert(a, np.float64, "U")
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, a.astype(np.float64))


def test_convert_at_float32s_largest_value_and_past_it():
    largest = float(np.finfo(np.float32).max)
    got = codec.convert(np.array([[0.0, largest]]), np.float32, "W")
    assert got.dtype == np.float32 and got[0, 1] == np.float32(largest)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning on the way to the refusal
        field, message = error(codec.convert, np.array([[0.0, 1.0], [-1e39, 1e39]]), np.float32, "W")
    assert field == "W[1][0]"
    assert message == "W[1][0] must be a finite number when converted to float32 (largest 3.403e+38), got -Infinity"


# -- base64 and bytes -----------------------------------------------------------------


def test_from_base64_accepts_str_and_bytes():
    a = np.array([[1.0, -2.0], [3.0, 4.5]])
    for data in (b64(a), b64(a).encode()):
        got = codec.from_base64("float64", [2, 2], data, "U")
        np.testing.assert_array_equal(got, a)
        assert got.dtype == np.float64 and got.shape == (2, 2)


@pytest.mark.parametrize("data", ["AAAAAAAAAA", "AAAA AAAAAAA=", "AAAAAAAAAAA=\n", "AAAAAAAA-_A=", "AAAAAAAAAAA=AAAA"])
def test_from_base64_refuses_anything_but_standard_padded_base64(data):
    field, message = error(codec.from_base64, "float64", [1], data, "s0")
    assert field == "s0.data"
    assert message.startswith("s0.data must be standard base64 with padding: ")
    assert len(message) > len("s0.data must be standard base64 with padding: ")  # the decoder's reason


def test_from_base64_names_the_data_when_the_byte_count_is_wrong():
    field, message = error(codec.from_base64, "float32", [2, 3], b64(np.zeros(5, dtype=np.float32)), "V")
    assert (field, message) == ("V.data", "V.data holds 20 bytes, but shape [2, 3] of float32 needs 6 x 4 = 24")


def test_from_bytes_reads_little_endian_row_major_into_native_order():
    a = np.arange(6, dtype=np.float64).reshape(2, 3) / 4
    raw = a.astype("<f8").tobytes()
    got = codec.from_bytes(raw, "float64", [2, 3], "U", where="U (bytes)")
    np.testing.assert_array_equal(got, a)
    assert got.dtype == np.dtype("=f8") and got.dtype.isnative
    got32 = codec.from_bytes(a.astype("<f4").tobytes(), "float32", [3, 2], "U", where="U (bytes)")
    np.testing.assert_array_equal(got32, a.astype(np.float32).reshape(3, 2))


def test_from_bytes_shares_the_buffer_without_copying():
    raw = bytearray(np.array([1.0, 2.0]).tobytes())
    got = codec.from_bytes(raw, "float64", [2], "s0", where="s0.data")
    raw[:8] = np.array([5.0]).tobytes()
    assert got[0] == 5.0  # a view of the request's bytes, as the docstring says
    frozen = codec.from_bytes(bytes(raw), "float64", [2], "s0", where="s0.data")
    assert not frozen.flags.writeable


@pytest.mark.parametrize(
    ("dtype", "shape", "size", "message"),
    [
        ("float64", [3], 16, "x (bin) holds 16 bytes, but shape [3] of float64 needs 3 x 8 = 24"),
        ("float64", [3], 32, "x (bin) holds 32 bytes, but shape [3] of float64 needs 3 x 8 = 24"),
        ("int32", [2, 2], 12, "x (bin) holds 12 bytes, but shape [2, 2] of int32 needs 4 x 4 = 16"),
        ("int64", [0], 8, "x (bin) holds 8 bytes, but shape [0] of int64 needs 0 x 8 = 0"),
    ],
)
def test_from_bytes_byte_count_one_short_or_long_names_where(dtype, shape, size, message):
    field, got = error(codec.from_bytes, bytes(size), dtype, shape, "x", where="x (bin)")
    assert (field, got) == ("x (bin)", message)


def test_from_bytes_integers_are_not_checked_for_finiteness_and_keep_their_values():
    raw = np.array([-1, 2**31 - 1], dtype="<i4").tobytes()
    got = codec.from_bytes(raw, "int32", [2], "x", where="x.data")
    assert got.dtype == np.int32 and got.tolist() == [-1, 2**31 - 1]


def test_from_bytes_refuses_the_first_non_finite_float_by_index():
    a = np.array([[1.0, 2.0, np.inf], [np.nan, 0.0, 0.0]])
    field, message = error(codec.from_bytes, a.tobytes(), "float64", [2, 3], "U", where="U.data")
    assert (field, message) == ("U[0][2]", "U[0][2] must be a finite number, got Infinity")


# -- shapes ----------------------------------------------------------------------------


def test_element_count_multiplies_the_shape():
    assert codec.element_count([3, 4, 5], "U") == 60
    assert codec.element_count([], "U") == 1
    assert codec.element_count([7, 0], "U") == 0


def test_element_count_at_32_dimensions_and_one_past():
    assert codec.element_count([1] * 32, "U") == 1
    field, message = error(codec.element_count, [1] * 33, "U")
    assert (field, message) == ("U.shape", "U.shape has 33 dimensions, more than 32")


@pytest.mark.parametrize(
    ("shape", "shown"),
    [
        ([2, -1], "[2, -1]"),
        ([2, 1.0], "[2, 1.0]"),
        ([True, 2], "[True, 2]"),
        (["2"], "['2']"),
        ([1, 1, 1, 1, 1, 1, 1, 1, -1, 5], "[1, 1, 1, 1, 1, 1, 1, 1]"),  # the first eight only
    ],
)
def test_element_count_refuses_sizes_that_are_not_integers_at_least_0(shape, shown):
    field, message = error(codec.element_count, shape, "W")
    assert (field, message) == ("W.shape", f"W.shape must hold integers >= 0, got {shown}")


def test_element_count_limit_at_its_value_and_one_past():
    """The nonzero sizes may multiply to 2**59 - 1 (times 8 bytes, under 2**62): numpy builds that
    shape when another size is 0; at 2**59 the shape is refused, naming the field."""
    assert codec.element_count([0, 2**59 - 1], "U") == 0
    assert codec.element_count([0, 2**29, 2**30 - 1], "U") == 0
    field, message = error(codec.element_count, [0, 2**59], "U")
    assert (field, message) == ("U.shape", f"U.shape [0, {2**59}] holds more elements than any request can")
    field, message = error(codec.element_count, [1, 2, 3, 4, 5, 6, 7, 2**50, 9, 0], "U")
    assert message == f"U.shape [1, 2, 3, 4, 5, 6, 7, {2**50}] holds more elements than any request can"


# -- finiteness ----------------------------------------------------------------------------


def test_check_finite_names_the_first_entry_in_row_major_order():
    a = np.zeros((2, 2, 3))
    a[1, 0, 2] = -np.inf
    a[1, 1, 0] = np.nan
    want = ("dLdU[1][0][2]", "dLdU[1][0][2] must be a finite number, got -Infinity")
    assert error(codec.check_finite, a, "dLdU") == want
    assert error(codec.check_finite, np.array(np.nan), "loss") == ("loss", "loss must be a finite number, got NaN")
    codec.check_finite(np.array([0.0, -1e308]), "U")  # finite: nothing


def test_check_finite_appends_the_note():
    field, message = error(codec.check_finite, np.array([np.float32("inf")]), "s0", note=" (a note)")
    assert (field, message) == ("s0[0]", "s0[0] must be a finite number (a note), got Infinity")


def test_require_finite_names_the_quantity_in_a_nested_answer():
    answer = {"loss": 1.0, "grads": {"dLdU": np.array([[0.0, np.inf]]), "n": np.array([1, 2])}}
    field, message = error(codec.require_finite, answer)
    assert field == "grads.dLdU"
    assert message == (
        "the computation overflowed: grads.dLdU is not finite; scale the weights down "
        '(or compute in float64, "dtype": "float64", if the request asked for float32)'
    )
    assert error(codec.require_finite, {"losses": [1.0, 2.0, float("nan")]}) == (
        "losses[2]",
        "the computation overflowed: losses[2] is not finite; scale the weights down",
    )
    assert error(codec.require_finite, {"t": (0.0, np.float32("-inf"))})[0] == "t[1]"
    assert error(codec.require_finite, {3: {"x": np.nan}})[0] == "3.x"
    assert error(codec.require_finite, np.array([np.nan]), "dLdW")[0] == "dLdW"
    assert error(codec.require_finite, [np.array([1.0]), np.array([np.nan])], "g")[0] == "g[1]"


def test_require_finite_passes_a_finite_answer_and_ignores_other_values():
    codec.require_finite(
        {"loss": 1.0, "tokens": 3, "name": "inf", "none": None, "a": [np.zeros(2), (1.0, -1e308)], "i": np.array([7])}
    )


# -- token ids -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids",
    [
        [0, 3, 2],
        (0, 3, 2),
        np.array([0, 3, 2]),
        np.array([0, 3, 2], dtype=np.int32),
        np.array([0, 3, 2], dtype=np.uint8),
    ],
)
def test_token_ids_of_integers_are_int64(ids):
    got = codec.token_ids(ids, "x")
    assert got.dtype == np.int64 and got.shape == (3,) and got.tolist() == [0, 3, 2]


def test_token_ids_whole_floats_are_the_ids_they_are():
    for ids in ([0.0, 3.0, 2.0], np.array([0.0, 3.0, 2.0]), np.array([0.0, 3.0, 2.0], dtype=np.float32), [0, 3.0, 2]):
        got = codec.token_ids(ids, "x")
        assert got.dtype == np.int64 and got.tolist() == [0, 3, 2]
    assert codec.token_ids([], "x").tolist() == []
    assert codec.token_ids([], "x").dtype == np.int64


@pytest.mark.parametrize(
    ("ids", "field", "message"),
    [
        ([0, 2.5, 1], "y[1]", "y[1] must be an integer, got 2.5"),
        (np.array([0.0, 1.0, np.nan]), "y[2]", "y[2] must be an integer, got NaN"),
        (np.array([np.inf, 1.0]), "y[0]", "y[0] must be an integer, got Infinity"),
        (np.array([1.0, 0.5, np.nan]), "y[1]", "y[1] must be an integer, got 0.5"),
        ([0, False], "y[1]", "y[1] must be an integer, got false"),
        (np.array([True, False]), "y[0]", "y[0] must be an integer, got true"),
        (np.array(["a", "b"]), "y[0]", 'y[0] must be an integer, got a string "a"'),
        (np.array([], dtype=str), "y[0]", "y[0] must be an integer, got null"),
        ([1, None], "y[1]", "y[1] must be an integer, got null"),
        ([1, [2]], "y[1]", "y[1] must be an integer, got a list of 1 item(s)"),
        ([1.5, 2**64], "y[0]", "y[0] must be an integer, got 1.5"),
        (np.array([[1, 2], [3, 4]]), "y", "y must be a list of token ids, got 2 dimensions"),
        (np.array([1, "a"], dtype=object), "y[1]", 'y[1] must be an integer, got a string "a"'),
        (np.array([1, 2.5], dtype=object), "y[1]", "y[1] must be an integer, got 2.5"),
        (np.array([1, True], dtype=object), "y[1]", "y[1] must be an integer, got true"),
        (np.array(3), "y", "y must be a list of token ids, got 0 dimensions"),
    ],
)
def test_token_ids_refuse_what_is_not_an_integer_naming_the_entry(ids, field, message):
    assert error(codec.token_ids, ids, "y") == (field, message)


def test_token_ids_at_int64s_range_and_one_past():
    got = codec.token_ids([2**63 - 1, -(2**63), 2**62], "x")
    assert got.dtype == np.int64 and got.tolist() == [2**63 - 1, -(2**63), 2**62]
    assert error(codec.token_ids, [0, 2**63], "x") == (
        "x[1]",
        f"x[1] = {2**63} is out of range: token ids must be in [0, C), C the vocabulary size",
    )
    assert error(codec.token_ids, [-(2**63) - 1], "x")[0] == "x[0]"
    assert error(codec.token_ids, np.array([1, 2**63], dtype=np.uint64), "x") == (
        "x[1]",
        f"x[1] = {2**63} is out of range: token ids must be in [0, C), C the vocabulary size",
    )
    assert codec.token_ids(np.array([2**63 - 1], dtype=np.uint64), "x").tolist() == [2**63 - 1]
    assert error(codec.token_ids, [0.0, 1e19], "x")[1].startswith("x[1] = 10000000000000000000 is out of range")


# -- the wire, both ways ---------------------------------------------------------------------------


def test_to_wire_json_is_a_contiguous_array_of_the_same_values():
    a = np.arange(6.0).reshape(2, 3).T
    got = codec.to_wire(a, "json")
    assert isinstance(got, np.ndarray) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, a)
    assert codec.dumps(got) == b"[[0.0,3.0],[1.0,4.0],[2.0,5.0]]"


def test_to_wire_base64_of_a_transposed_big_endian_array():
    a = np.arange(6.0).reshape(2, 3).T.astype(">f4")
    wire = codec.to_wire(a, "base64")
    assert wire == {"dtype": "float32", "shape": [3, 2], "data": b64(np.ascontiguousarray(a).astype("<f4"))}
    np.testing.assert_array_equal(codec.from_wire(wire, "dLdU"), a)


def test_from_wire_of_lists_is_float64_and_of_a_tensor_object_is_decoded_and_checked():
    got = codec.from_wire([[1, 2], [3, 4]], "dLdU")
    assert got.dtype == np.float64 and got.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    tensor = {"dtype": "float64", "shape": [3], "data": b64(np.zeros(2))}
    assert error(codec.from_wire, tensor, "dLdW") == (
        "dLdW.data",
        "dLdW.data holds 16 bytes, but shape [3] of float64 needs 3 x 8 = 24",
    )


def test_dumps_and_loads():
    assert codec.dumps({"a": np.array([1.5, -2.0]), "n": np.int64(3), "f": np.float32(0.5)}) == (
        b'{"a":[1.5,-2.0],"n":3,"f":0.5}'
    )
    assert codec.loads(b'{"a":[1,2.5]}') == {"a": [1, 2.5]}
    assert codec.loads('{"a":null}') == {"a": None}
    assert codec.dumps({"x": float("nan")}) == b'{"x":null}'  # orjson writes NaN as null: require_finite comes first


def test_token_ids_of_a_tuple_or_an_iterator_are_checked_like_a_list():
    assert codec.token_ids(iter([2, 0, 1]), "x").tolist() == [2, 0, 1]
    assert error(codec.token_ids, (0, True), "x") == ("x[1]", "x[1] must be an integer, got true")
    assert error(codec.token_ids, (0, "1"), "x") == ("x[1]", 'x[1] must be an integer, got a string "1"')


def test_token_ids_past_int64_are_checked_entry_by_entry_from_int64s_lowest():
    """Integers beyond 64 bits make numpy's array of objects: each entry is checked against int64's range."""
    lowest, highest = -(2**63), 2**63 - 1
    got = codec.token_ids(np.array([lowest, highest], dtype=object), "x")
    assert got.dtype == np.int64 and got.tolist() == [lowest, highest]
    assert error(codec.token_ids, [lowest, 2**64], "x")[0] == "x[1]"
    assert error(codec.token_ids, [lowest - 1, 0], "x") == (
        "x[0]",
        f"x[0] = {lowest - 1} is out of range: token ids must be in [0, C), C the vocabulary size",
    )
