"""service.app over HTTP (in-process): answers, and a clear 4xx for every bad request."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
import seed
from fastapi.testclient import TestClient
from helpers import assert_close, make_problem

import service
from service import codec, engine
from service.app import create_app
from service.schemas import BpttBatchResponse, BpttResponse, ErrorResponse
from service.settings import Settings


@pytest.fixture
def problem(rng):
    return make_problem(rng, H=4, C=6, T=5)


def post(client, body, **kw):
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)  # json: ints beyond 64 bits
    headers = kw.pop("headers", {"content-type": "application/json"})
    return client.post("/bptt", content=content, headers=headers, **kw)


@pytest.mark.parametrize("K", [None, 0, 2, 10])
def test_post_bptt_matches_engine_and_seed(client, problem, K):
    p = problem
    p.s0 = np.linspace(-0.5, 0.5, 4)
    r = post(client, p.body(bptt_truncate=K))
    assert r.status_code == 200, r.text
    data = BpttResponse.model_validate(r.json())  # the documented response shape
    g = engine.bptt(p.U, p.V, p.W, p.x, p.y, bptt_truncate=K, s0=p.s0)
    ref = seed.bptt(p.U, p.V, p.W, p.x, p.y, len(p.y) if K is None else K, s0=p.s0)
    for name, want in zip(("dLdU", "dLdV", "dLdW"), ref, strict=False):
        got = np.array(getattr(data, name))
        assert_close(got, want)
        np.testing.assert_array_equal(got, getattr(g, name))  # JSON round trip is exact
    assert data.loss == g.loss
    assert data.tokens == 5
    assert data.mean_loss == pytest.approx(g.loss / 5)
    np.testing.assert_array_equal(data.final_state, g.final_state)
    np.testing.assert_array_equal(data.dLds0, g.dLds0)


def test_post_bptt_accepts_ints_as_floats_and_negative_zero(client):
    body = {"U": [[1, -0.0], [0, 2]], "V": [[0.5, 1], [-1, 0]], "W": [[0, 1], [1.0, 0]], "x": [0, 1], "y": [1, 0]}
    r = post(client, body)
    assert r.status_code == 200, r.text
    g = engine.bptt(*(np.array(body[k], dtype=float) for k in "UVW"), np.array(body["x"]), np.array(body["y"]))
    assert r.json()["loss"] == g.loss


def test_post_bptt_integral_floats_are_integers(client, problem):
    """JSON Schema counts 2.0 an integer: token ids and bptt_truncate accept it."""
    p = problem
    body = p.body(bptt_truncate=2.0)
    body["x"] = [float(v) for v in body["x"]]
    r = post(client, body)
    assert r.status_code == 200, r.text
    assert r.json()["loss"] == engine.bptt(p.U, p.V, p.W, p.x, p.y, bptt_truncate=2).loss


def test_post_bptt_without_content_type_is_read_as_json(client, problem):
    r = client.post("/bptt", content=orjson.dumps(problem.body()))
    assert r.status_code == 200


def _bad(problem, **changes):
    body = problem.body()
    for k, v in changes.items():
        if v is ...:
            del body[k]
        else:
            body[k] = v
    return body


# Each case: how to break a valid body, the status, the field named, and words the message must contain.
BAD_REQUESTS = {
    "missing U": (lambda p: _bad(p, U=...), 422, "U", "U is required but missing"),
    "missing y": (lambda p: _bad(p, y=...), 422, "y", "y is required but missing"),
    "ragged rows": (
        lambda p: _bad(p, U=[r[:-1] if i == 2 else r for i, r in enumerate(p.U.tolist())]),
        422,
        "U[2]",
        "U must be rectangular: row U[0] has 6 numbers, but U[2] has 5",
    ),
    "empty matrix": (lambda p: _bad(p, W=[]), 422, "W", "W must be a matrix with at least one row, got an empty list"),
    "empty rows": (
        lambda p: _bad(p, U=[[]]),
        422,
        "U[0]",
        "U[0] must be a row of at least one number, got an empty list",
    ),
    "flat matrix": (lambda p: _bad(p, W=[1.0, 2.0]), 422, "W[0]", "W[0] must be a list, got 1.0"),
    "too deep": (
        lambda p: _bad(p, W=[[[1.0]]]),
        422,
        "W",
        "W must be H x H for cell 'rnn' (2 dimensions), got shape [1, 1, 1]",
    ),
    "string number": (
        lambda p: _bad(p, U=[["0.5", *r[1:]] for r in p.U.tolist()]),
        422,
        "U[0][0]",
        'U[0][0] must be a number, got a string "0.5"',
    ),
    "boolean number": (
        lambda p: _bad(p, V=[[True, *r[1:]] for r in p.V.tolist()]),
        422,
        "V[0][0]",
        "V[0][0] must be a number, got true",
    ),
    "null number": (
        lambda p: _bad(p, V=[[None, *r[1:]] for r in p.V.tolist()]),
        422,
        "V[0][0]",
        "V[0][0] must be a number, got null",
    ),
    "W shape": (lambda p: _bad(p, W=p.W[:, :-1].tolist()), 422, "W", "W must be H x H = 4 x 4, got 4 x 3"),
    "V shape": (
        lambda p: _bad(p, V=p.V[:-1].tolist()),
        422,
        "V",
        "V must be C x H = 6 x 4 (U is H x C = 4 x 6), got 5 x 4",
    ),
    "x y lengths": (lambda p: _bad(p, y=p.y.tolist()[:-1]), 422, "y", "len(x) = 5, got len(y) = 4"),
    "empty x": (lambda p: _bad(p, x=[]), 422, "x", "x must have at least 1 item(s), got an empty list"),
    "negative token": (lambda p: _bad(p, x=[-1, *p.x.tolist()[1:]]), 422, "x[0]", "x[0] must be >= 0, got -1"),
    "token out of range": (
        lambda p: _bad(p, y=[*p.y.tolist()[:-1], 6]),
        422,
        "y[4]",
        "y[4] = 6 is out of range: token ids must be in [0, C) = [0, 6)",
    ),
    "huge token": (
        lambda p: _bad(p, x=[10**30, *p.x.tolist()[1:]]),
        422,
        "x[0]",
        "x[0] = 1000000000000000000000000000000 is out of range",
    ),
    "float token": (lambda p: _bad(p, x=[1.5, *p.x.tolist()[1:]]), 422, "x[0]", "x[0] must be an integer, got 1.5"),
    "boolean token": (lambda p: _bad(p, x=[True, *p.x.tolist()[1:]]), 422, "x[0]", "x[0] must be an integer, got true"),
    "string token": (
        lambda p: _bad(p, x=["1", *p.x.tolist()[1:]]),
        422,
        "x[0]",
        'x[0] must be an integer, got a string "1"',
    ),
    "negative truncate": (
        lambda p: _bad(p, bptt_truncate=-1),
        422,
        "bptt_truncate",
        "bptt_truncate must be >= 0, got -1",
    ),
    "float truncate": (
        lambda p: _bad(p, bptt_truncate=2.5),
        422,
        "bptt_truncate",
        "bptt_truncate must be an integer, got 2.5",
    ),
    "string truncate": (
        lambda p: _bad(p, bptt_truncate="4"),
        422,
        "bptt_truncate",
        'bptt_truncate must be an integer, got a string "4"',
    ),
    "s0 length": (lambda p: _bad(p, s0=[0.0] * 3), 422, "s0", "s0 must have H = 4 numbers, got 3"),
    "s0 not list": (lambda p: _bad(p, s0=0.0), 422, "s0", "s0 must be a list, got 0.0"),
    "unknown field": (lambda p: _bad(p, bptt_trunc=3), 422, "bptt_trunc", "bptt_trunc is not a known field"),
    "overflowing weight": (
        lambda p: orjson.dumps(p.body()).replace(b'"W":[[', b'"W":[[1e400,', 1),
        422,
        "W[0][0]",
        "W[0][0] must be a finite number",
    ),
    "NaN weight": (
        lambda p: orjson.dumps(p.body()).replace(b'"U":[[', b'"U":[[NaN,', 1),
        422,
        "U[0][0]",
        "U[0][0] must be a finite number (no NaN, Infinity or overflowing values), got NaN",
    ),
    "Infinity weight": (
        lambda p: orjson.dumps(p.body()).replace(b'"V":[[', b'"V":[[-Infinity,', 1),
        422,
        "V[0][0]",
        "V[0][0] must be a finite number (no NaN, Infinity or overflowing values), got -Infinity",
    ),
    "not JSON": (lambda p: b'{"U": [[1, 2]', 400, "body", "the body is not valid JSON"),
    "JSON array": (lambda p: b"[1, 2, 3]", 422, "body", "the body must be a JSON object, got a list of 3 item(s)"),
    "JSON string": (lambda p: b'"hello"', 422, "body", 'the body must be a JSON object, got a string "hello"'),
    "empty body": (lambda p: b"", 400, "body", "the body is not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_post_bptt_bad_request_is_named_4xx(client, problem, case):
    make, status, field, words = BAD_REQUESTS[case]
    r = post(client, make(problem))
    assert r.status_code == status, r.text
    err = ErrorResponse.model_validate(r.json())
    assert words in err.detail
    assert field in [e.field for e in err.errors]
    assert "Traceback" not in r.text
    # The server keeps serving.
    assert post(client, problem.body()).status_code == 200


def test_post_bptt_wrong_media_type_is_415(client, problem):
    r = post(client, orjson.dumps(problem.body()), headers={"content-type": "text/plain"})
    assert r.status_code == 415
    assert r.json()["detail"] == "the body must be sent as Content-Type: application/json, got 'text/plain'"


def test_post_bptt_many_bad_numbers_are_summarised(client, problem):
    body = problem.body(U=[["a"] * 6] * 4)
    r = post(client, body)
    assert r.status_code == 422
    data = r.json()
    assert data["detail"].endswith("and 21 more")
    assert len(data["errors"]) == 20


def test_post_bptt_overflow_is_422_not_nan(client, rng):
    p = make_problem(rng, H=3, C=4, T=3)
    p.V = rng.uniform(-1, 1, p.V.shape) * 1e308
    r = post(client, p.body())
    assert r.status_code == 422
    assert "the computation overflowed" in r.json()["detail"]
    assert "NaN" not in r.text


def test_get_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "version": service.__version__}


def test_unknown_route_is_404_with_error_body(client):
    r = client.get("/nope")
    assert r.status_code == 404
    assert (
        ErrorResponse.model_validate(r.json()).detail
        == "no route GET /nope: the routes are listed at /docs (and /openapi.json)"
    )


def test_wrong_method_is_405_with_error_body(client):
    r = client.get("/bptt")
    assert r.status_code == 405
    assert ErrorResponse.model_validate(r.json()).detail == "GET /bptt is not allowed: this route takes POST"


def b64(a: np.ndarray, dtype: str = "float64") -> dict:
    return codec.to_wire(a.astype(dtype), "base64")


@pytest.mark.parametrize("K", [None, 1])
def test_post_bptt_base64_both_ways_equals_json(client, problem, K):
    p = problem
    p.s0 = np.linspace(-0.3, 0.3, 4)
    as_json = post(client, p.body(bptt_truncate=K)).json()
    body = p.body(bptt_truncate=K, encoding="base64", U=b64(p.U), V=b64(p.V), W=b64(p.W), s0=b64(p.s0))
    r = post(client, body)
    assert r.status_code == 200, r.text
    data = r.json()
    BpttResponse.model_validate(data)
    for name in ("dLdU", "dLdV", "dLdW", "dLds0", "final_state"):
        t = data[name]
        got = codec.from_base64(t["dtype"], t["shape"], t["data"], name)
        np.testing.assert_array_equal(got, np.array(as_json[name]))
    assert data["loss"] == as_json["loss"]


def test_post_bptt_mixed_lists_and_tensors(client, problem):
    p = problem
    r = post(client, p.body(V=b64(p.V, "float32")))
    assert r.status_code == 200, r.text
    g = engine.bptt(p.U, p.V.astype(np.float32).astype(np.float64), p.W, p.x, p.y)
    np.testing.assert_array_equal(np.array(r.json()["dLdW"]), g.dLdW)


def test_post_bptt_float32_close_to_float64(client, rng):
    p = make_problem(rng, H=16, C=30, T=40)
    r64 = post(client, p.body()).json()
    r32 = post(client, p.body(dtype="float32", encoding="base64")).json()
    t = r32["dLdU"]
    assert t["dtype"] == "float32"
    got = codec.from_base64(t["dtype"], t["shape"], t["data"], "dLdU")
    assert_close(got.astype(np.float64), np.array(r64["dLdU"]), rtol=1e-5)
    assert r32["loss"] == pytest.approx(r64["loss"], rel=1e-5)


BAD_TENSORS = {
    "bad base64": (lambda p: {"U": b64(p.U) | {"data": "@@@@"}}, "U.data", "U.data must be standard base64"),
    "short data": (
        lambda p: {"W": b64(p.W) | {"shape": [4, 5]}},
        "W.data",
        "W.data holds 128 bytes, but shape [4, 5] of float64 needs 20 x 8 = 160",
    ),
    "wrong ndim": (
        lambda p: {"W": b64(p.W.ravel())},
        "W",
        "W must be H x H for cell 'rnn' (2 dimensions), got shape [16]",
    ),
    "NaN in bytes": (
        lambda p: {"V": b64(np.where(p.V[2, 1] == p.V, np.nan, p.V))},
        "V[2][1]",
        "V[2][1] must be a finite number, got NaN",
    ),
    "unknown dtype": (
        lambda p: {"U": b64(p.U) | {"dtype": "int8"}},
        "U.dtype",
        "U.dtype: Input should be 'float32' or 'float64'",
    ),
    "missing data": (
        lambda p: {"U": {"dtype": "float64", "shape": [4, 6]}},
        "U.data",
        "U.data is required but missing",
    ),
    "negative shape": (lambda p: {"U": b64(p.U) | {"shape": [-4, 6]}}, "U.shape[0]", "U.shape[0] must be >= 0, got -4"),
    "float32 overflow": (lambda p: {"dtype": "float32", "U": [[1e39] * 6] * 4}, "U[0][0]", "when converted to float32"),
    "unknown encoding": (lambda p: {"encoding": "hex"}, "encoding", "encoding: Input should be 'json' or 'base64'"),
    "shape mismatch": (lambda p: {"W": b64(p.W[:3])}, "W", "W must be H x H = 4 x 4, got 3 x 4"),
}


@pytest.mark.parametrize("case", list(BAD_TENSORS), ids=list(BAD_TENSORS))
def test_post_bptt_bad_tensor_is_named_422(client, problem, case):
    make, field, words = BAD_TENSORS[case]
    r = post(client, problem.body(**make(problem)))
    assert r.status_code == 422, r.text
    err = ErrorResponse.model_validate(r.json())
    assert words in err.detail
    assert field in [e.field for e in err.errors]


def batch_body(p, xs, ys, **extra):
    body = {k: getattr(p, k).tolist() for k in ("U", "V", "W")}
    body["sequences"] = [{"x": x.tolist(), "y": y.tolist()} for x, y in zip(xs, ys, strict=False)]
    return body | extra


@pytest.mark.parametrize("K", [None, 2])
def test_post_bptt_batch_equals_sum_of_singles(client, rng, K):
    p = make_problem(rng, H=5, C=8, T=1)
    lengths = [3, 9, 1, 6]
    xs = [rng.integers(0, 8, T) for T in lengths]
    ys = [rng.integers(0, 8, T) for T in lengths]
    body = batch_body(p, xs, ys, bptt_truncate=K)
    body["sequences"][1]["s0"] = [0.1, -0.2, 0.3, 0.0, 0.5]
    r = client.post("/bptt/batch", content=orjson.dumps(body))
    assert r.status_code == 200, r.text
    data = BpttBatchResponse.model_validate(r.json())
    singles = []
    for seq in body["sequences"]:
        one = {k: body[k] for k in ("U", "V", "W")} | seq | {"bptt_truncate": K}
        singles.append(post(client, one).json())
    for name in ("dLdU", "dLdV", "dLdW"):
        assert_close(np.array(getattr(data, name)), sum(np.array(s[name]) for s in singles))
    np.testing.assert_allclose(data.losses, [s["loss"] for s in singles], rtol=1e-12)
    assert data.tokens == sum(lengths)
    assert data.loss == pytest.approx(sum(s["loss"] for s in singles), rel=1e-12)
    np.testing.assert_allclose(np.array(data.final_state)[1], singles[1]["final_state"], rtol=1e-12)
    np.testing.assert_allclose(np.array(data.dLds0)[1], singles[1]["dLds0"], rtol=1e-12)


def test_post_bptt_batch_bad_sequence_is_named(client, rng):
    p = make_problem(rng, H=3, C=4, T=1)
    body = batch_body(p, [np.array([0, 1]), np.array([2, 3])], [np.array([1, 2]), np.array([3])])
    r = client.post("/bptt/batch", content=orjson.dumps(body))
    assert r.status_code == 422
    assert (
        r.json()["detail"]
        == "sequences[1].y must have one target per input token: len(sequences[1].x) = 2, got len(sequences[1].y) = 1"
    )
    body["sequences"] = []
    r = client.post("/bptt/batch", content=orjson.dumps(body))
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "sequences"
    body["sequences"] = [{"x": [0], "y": [1], "s0": [1.0]}]
    r = client.post("/bptt/batch", content=orjson.dumps(body))
    assert r.json()["detail"] == "sequences[0].s0 must have H = 3 numbers, got 1"


def test_post_bptt_biases_clip_trace_over_http(client, rng):
    p = make_problem(rng, H=4, C=6, T=5)
    b, c = rng.uniform(-1, 1, 4), rng.uniform(-1, 1, 6)
    r = post(client, p.body(b=b.tolist(), c=b64(c), clip=0.1, trace=True, bptt_truncate=1))
    assert r.status_code == 200, r.text
    data = BpttResponse.model_validate(r.json())
    g = engine.bptt(p.U, p.V, p.W, p.x, p.y, b=b, c=c, clip=0.1, bptt_truncate=1)
    np.testing.assert_array_equal(data.dLdb, g.dLdb)
    np.testing.assert_array_equal(data.dLdc, g.dLdc)
    assert data.clipped == g.clipped
    tr = data.trace
    assert len(tr.deltas) == 5 and [len(d) for d in tr.deltas] == [1, 2, 2, 2, 2]
    assert [s.outputs for s in tr.lag_summary] == [5, 4]
    np.testing.assert_array_equal(
        np.array(tr.delta_o), engine.trace(p.U, p.V, p.W, p.x, p.y, b=b, c=c, bptt_truncate=1).delta_o
    )


def test_post_bptt_without_options_answers_nulls(client, problem):
    data = post(client, problem.body()).json()
    assert data["dLdb"] is None and data["dLdc"] is None and data["clipped"] is None
    assert "trace" not in data


def test_post_bptt_trace_limits(rng):
    p = make_problem(rng, H=4, C=50, T=30)
    with TestClient(create_app(Settings(max_trace_values=1000, max_trace_delta_o=100))) as c:
        r = post(c, p.body(trace=True))
        assert r.status_code == 413
        assert r.json()["detail"] == (
            "the trace (T x lags x H = 30 x 30 x 4) is 3,600 numbers, over the limit of 1,000 "
            "(setting BPTT_MAX_TRACE_VALUES); shorten the sequence or set bptt_truncate"
        )
        r = post(c, p.body(trace=True, bptt_truncate=3))  # 30 x 4 x 4 = 480 values
        assert r.status_code == 200
        assert r.json()["trace"]["delta_o"] is None  # 30 x 50 > 100: left out, the rest kept
        assert len(r.json()["trace"]["deltas"]) == 30


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ({"b": [0.0] * 3}, "b", "b must have H = 4 numbers, got 3"),
        ({"c": [0.0] * 5}, "c", "c must have C = 6 numbers, got 5"),
        ({"clip": 0}, "clip", "clip: Input should be greater than 0"),
        ({"clip": "1"}, "clip", 'clip must be a number, got a string "1"'),
        ({"trace": "yes"}, "trace", "trace"),
    ],
)
def test_post_bptt_bad_options_are_named(client, problem, extra, field, words):
    r = post(client, problem.body(**extra))
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"]
    assert field in [e["field"] for e in r.json()["errors"]]
