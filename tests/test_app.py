"""service.app over HTTP (in-process): answers, and a clear 4xx for every bad request."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

import seed
from conftest import make_problem
from service import engine
from service.app import create_app
from service.schemas import BpttResponse, ErrorResponse
from service.settings import Settings
from test_engine import assert_close


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings()), raise_server_exceptions=False) as c:
        yield c


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
    for name, want in zip(("dLdU", "dLdV", "dLdW"), ref):
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
        422, "U[2]", "U must be rectangular: row U[0] has 6 numbers, but U[2] has 5",
    ),
    "empty matrix": (lambda p: _bad(p, W=[]), 422, "W", "W must be a matrix with at least one row, got an empty list"),
    "empty rows": (lambda p: _bad(p, U=[[]]), 422, "U", "U must be H x C with H >= 1 and C >= 1, got 1 x 0"),
    "flat matrix": (lambda p: _bad(p, W=[1.0, 2.0]), 422, "W[0]", "W[0] must be a list, got 1.0"),
    "too deep": (lambda p: _bad(p, W=[[[1.0]]]), 422, "W[0][0]", "W[0][0] must be a number, got a list of 1 item(s)"),
    "string number": (
        lambda p: _bad(p, U=[["0.5"] + r[1:] for r in p.U.tolist()]),
        422, "U[0][0]", 'U[0][0] must be a number, got a string "0.5"',
    ),
    "boolean number": (lambda p: _bad(p, V=[[True] + r[1:] for r in p.V.tolist()]), 422, "V[0][0]", "V[0][0] must be a number, got true"),
    "null number": (lambda p: _bad(p, V=[[None] + r[1:] for r in p.V.tolist()]), 422, "V[0][0]", "V[0][0] must be a number, got null"),
    "W shape": (lambda p: _bad(p, W=p.W[:, :-1].tolist()), 422, "W", "W must be H x H = 4 x 4, got 4 x 3"),
    "V shape": (lambda p: _bad(p, V=p.V[:-1].tolist()), 422, "V", "V must be C x H = 6 x 4 (U is H x C = 4 x 6), got 5 x 4"),
    "x y lengths": (lambda p: _bad(p, y=p.y.tolist()[:-1]), 422, "y", "len(x) = 5, got len(y) = 4"),
    "empty x": (lambda p: _bad(p, x=[]), 422, "x", "x must have at least 1 item(s), got an empty list"),
    "negative token": (lambda p: _bad(p, x=[-1] + p.x.tolist()[1:]), 422, "x[0]", "x[0] must be >= 0, got -1"),
    "token out of range": (
        lambda p: _bad(p, y=p.y.tolist()[:-1] + [6]),
        422, "y[4]", "y[4] = 6 is out of range: token ids must be in [0, C) = [0, 6)",
    ),
    "huge token": (lambda p: _bad(p, x=[10**30] + p.x.tolist()[1:]), 422, "x[0]", "x[0] = 1000000000000000000000000000000 is out of range"),
    "float token": (lambda p: _bad(p, x=[1.5] + p.x.tolist()[1:]), 422, "x[0]", "x[0] must be an integer, got 1.5"),
    "boolean token": (lambda p: _bad(p, x=[True] + p.x.tolist()[1:]), 422, "x[0]", "x[0] must be an integer, got true"),
    "string token": (lambda p: _bad(p, x=["1"] + p.x.tolist()[1:]), 422, "x[0]", 'x[0] must be an integer, got a string "1"'),
    "negative truncate": (lambda p: _bad(p, bptt_truncate=-1), 422, "bptt_truncate", "bptt_truncate must be >= 0, got -1"),
    "float truncate": (lambda p: _bad(p, bptt_truncate=2.5), 422, "bptt_truncate", "bptt_truncate must be an integer, got 2.5"),
    "string truncate": (lambda p: _bad(p, bptt_truncate="4"), 422, "bptt_truncate", 'bptt_truncate must be an integer, got a string "4"'),
    "s0 length": (lambda p: _bad(p, s0=[0.0] * 3), 422, "s0", "s0 must have H = 4 numbers, got 3"),
    "s0 not list": (lambda p: _bad(p, s0=0.0), 422, "s0", "s0 must be a list, got 0.0"),
    "unknown field": (lambda p: _bad(p, bptt_trunc=3), 422, "bptt_trunc", "bptt_trunc is not a known field"),
    "overflowing weight": (
        lambda p: orjson.dumps(p.body()).replace(b'"W":[[', b'"W":[[1e400,', 1),
        422, "W[0][0]", "W[0][0] must be a finite number",
    ),
    "NaN weight": (
        lambda p: orjson.dumps(p.body()).replace(b'"U":[[', b'"U":[[NaN,', 1),
        422, "U[0][0]", "U[0][0] must be a finite number (no NaN, Infinity or overflowing values), got NaN",
    ),
    "Infinity weight": (
        lambda p: orjson.dumps(p.body()).replace(b'"V":[[', b'"V":[[-Infinity,', 1),
        422, "V[0][0]", "V[0][0] must be a finite number (no NaN, Infinity or overflowing values), got -Infinity",
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
    assert r.json() == {"status": "ok"}


def test_unknown_route_is_404_with_error_body(client):
    r = client.get("/nope")
    assert r.status_code == 404
    assert ErrorResponse.model_validate(r.json()).detail == "Not Found"


def test_wrong_method_is_405_with_error_body(client):
    r = client.get("/bptt")
    assert r.status_code == 405
    assert ErrorResponse.model_validate(r.json()).detail == "Method Not Allowed"
