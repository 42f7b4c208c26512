"""service.guards: body and work limits, the compute queue, API keys; and faults that leak nothing."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import httpx
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from helpers import LocalServer, make_problem

from service import engine
from service.app import create_app
from service.client import Client, ServerError
from service.settings import Settings


def app_client(**settings) -> TestClient:
    return TestClient(create_app(Settings(**settings)), raise_server_exceptions=False)


# -- body size ------------------------------------------------------------------


@pytest.mark.slow  # a server process (or interpreter) of its own
def test_body_over_limit_is_413_before_reading():
    """Content-Length over the limit: 413 at once, though no body byte was sent."""
    server = LocalServer(env={"BPTT_MAX_BODY_BYTES": "100000"})
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(
                b"POST /bptt HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000000000\r\n\r\n"
            )
            answer = sock.makefile("rb")
            head = b"".join(iter(answer.readline, b"\r\n")).decode()
            length = int(next(ln for ln in head.lower().splitlines() if ln.startswith("content-length")).split(":")[1])
            body = answer.read(length)
        assert head.startswith("HTTP/1.1 413"), head
        assert json.loads(body)["detail"] == (
            "the request body is larger than the limit of 100,000 bytes (setting BPTT_MAX_BODY_BYTES); "
            "send base64 tensors, or split the batch"
        )
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        server.stop()


def test_chunked_body_over_limit_is_413():
    with app_client(max_body_bytes=10_000) as c:

        def chunks():
            for _ in range(100):
                yield b" " * 1000

        r = c.post("/bptt", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert "BPTT_MAX_BODY_BYTES" in r.json()["detail"]
        r = c.post("/v2/models/bptt/infer", content=chunks())
        assert r.status_code == 413
        assert "BPTT_MAX_BODY_BYTES" in r.json()["error"]


# -- work size ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "make", "message"),
    [
        (
            {"max_tokens": 10},
            lambda rng: make_problem(rng, 2, 3, 11).body(),
            "T (tokens in one sequence) is 11, over the limit of 10 (setting BPTT_MAX_TOKENS)",
        ),
        (
            {"max_weights": 20},
            lambda rng: make_problem(rng, 3, 7, 2).body(),
            "C x H = 7 x 3 is 21, over the limit of 20 (setting BPTT_MAX_WEIGHTS)",
        ),
        (
            {"max_probabilities": 50},
            lambda rng: make_problem(rng, 2, 10, 6).body(),
            "the probability matrix (tokens x C = 6 x 10) is 60, over the limit of 50 (setting BPTT_MAX_PROBABILITIES)",
        ),
    ],
)
def test_work_over_limit_is_413_naming_the_setting(rng, settings, make, message):
    with app_client(**settings) as c:
        r = c.post("/bptt", content=orjson.dumps(make(rng)))
        assert r.status_code == 413
        assert r.json()["detail"] == message


def test_batch_limits(rng):
    p = make_problem(rng, 2, 3, 4)
    seqs = [{"x": p.x.tolist(), "y": p.y.tolist()}] * 3
    body = {k: getattr(p, k).tolist() for k in "UVW"} | {"sequences": seqs}
    with app_client(max_batch=2) as c:
        r = c.post("/bptt/batch", content=orjson.dumps(body))
        assert r.status_code == 413
        assert r.json()["detail"] == "the number of sequences is 3, over the limit of 2 (setting BPTT_MAX_BATCH)"
    with app_client(max_batch_tokens=11) as c:
        r = c.post("/bptt/batch", content=orjson.dumps(body))
        assert (
            r.json()["detail"] == "the batch's total tokens is 12, over the limit of 11 (setting BPTT_MAX_BATCH_TOKENS)"
        )


def test_v2_work_limit_is_413_with_error(rng):
    p = make_problem(rng, 2, 3, 11)
    inputs = [
        {
            "name": n,
            "shape": list(getattr(p, n).shape),
            "datatype": "FP64" if n in "UVW" else "INT64",
            "data": getattr(p, n).ravel().tolist(),
        }
        for n in ("U", "V", "W", "x", "y")
    ]
    with app_client(max_tokens=10) as c:
        r = c.post("/v2/models/bptt/infer", content=orjson.dumps({"inputs": inputs}))
        assert r.status_code == 413
        assert r.json()["error"] == "T (tokens in one sequence) is 11, over the limit of 10 (setting BPTT_MAX_TOKENS)"


# -- the queue ------------------------------------------------------------------


@pytest.mark.slow  # a real server held busy for seconds
def test_full_queue_is_503_with_retry_after_and_healthz_still_answers():
    server = LocalServer(env={"BPTT_THREADS": "1", "BPTT_MAX_QUEUE": "1"})
    rng = np.random.default_rng(2)
    slow = orjson.dumps(make_problem(rng, 100, 8000, 400).body(encoding="base64"))
    small = orjson.dumps(make_problem(rng, 4, 5, 3).body())

    async def run():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            heavy = [asyncio.create_task(http.post("/bptt", content=slow)) for _ in range(3)]
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            health = await http.get("/healthz")
            health_s = time.monotonic() - t0
            light = await asyncio.gather(*(http.post("/bptt", content=small) for _ in range(5)))
            return await asyncio.gather(*heavy), light, health, health_s

    try:
        heavy, light, health, health_s = asyncio.run(run())
    finally:
        server.stop()
    statuses = [r.status_code for r in heavy + light]
    assert set(statuses) <= {200, 503}, statuses
    busy = [r for r in heavy + light if r.status_code == 503]
    assert busy, "with 1 thread and a queue of 1, some of 8 requests must be refused"
    assert busy[0].headers["retry-after"] == "1"
    assert "the server is at capacity" in busy[0].json()["detail"]
    assert health.status_code == 200 and health_s < 2.0


# -- API keys -------------------------------------------------------------------


def test_api_key_required_except_probes_and_metrics(rng):
    body = orjson.dumps(make_problem(rng, 2, 3, 2).body())
    with app_client(api_key="first-key, second-key") as c:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "first-key"}):
            r = c.post("/bptt", content=body, headers=headers)
            assert r.status_code == 401
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["detail"] == "missing or wrong API key: send the header Authorization: Bearer <key>"
        for key in ("first-key", "second-key"):
            assert c.post("/bptt", content=body, headers={"authorization": f"Bearer {key}"}).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics"):
            assert c.get(path).status_code == 200
        for path in ("/docs", "/openapi.json", "/v2", "/v2/models/bptt"):
            assert c.get(path).status_code == 401


@pytest.mark.slow  # a server process (or interpreter) of its own
def test_client_sends_api_key(rng):
    server = LocalServer(env={"BPTT_API_KEY": "s3cret"})
    p = make_problem(rng, 3, 4, 5)
    try:
        with Client(server.url, api_key="s3cret") as client:
            g = client.bptt(p.U, p.V, p.W, p.x, p.y)
        np.testing.assert_array_equal(g.dLdW, engine.bptt(p.U, p.V, p.W, p.x, p.y).dLdW)
        with Client(server.url) as client, pytest.raises(ServerError) as info:
            client.bptt(p.U, p.V, p.W, p.x, p.y)
        assert info.value.status == 401
    finally:
        server.stop()


# -- faults ---------------------------------------------------------------------


def test_unexpected_error_is_generic_500_and_server_keeps_serving(rng, monkeypatch, caplog):
    from service import plans as app_module

    calls = {"n": 0}
    real = engine.bptt

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("secret internal detail /usr/lib/python3/numpy")
        return real(*args, **kwargs)

    body = orjson.dumps(make_problem(rng, 2, 3, 2).body())
    c = app_client()
    monkeypatch.setattr(logging.getLogger("service"), "propagate", True)  # let caplog see the traceback
    with c:
        monkeypatch.setattr(app_module.engine, "bptt", flaky)  # after the start-up self-check
        r = c.post("/bptt", content=body)
        assert r.status_code == 500
        detail = r.json()["detail"]
        assert detail.startswith("internal server error; report request id ")
        assert "secret" not in r.text and "Traceback" not in r.text and "/usr/" not in r.text
        assert c.post("/bptt", content=body).status_code == 200
    request_id = detail.rsplit(" ", 1)[1]
    assert any(request_id in rec.getMessage() and rec.exc_info for rec in caplog.records)


def test_answers_name_no_server_software(live_server):
    r = httpx.get(f"{live_server.url}/nope")
    assert "server" not in r.headers
    assert "uvicorn" not in r.text.lower() and "python" not in r.text.lower()
