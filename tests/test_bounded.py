"""Bounded by design: deadlines, cancellation, body timeouts, the parse price, the queue bound under
simultaneous arrivals, no non-finite number in a 200, escaped logs, error bodies of bounded size."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import LocalServer, make_problem

from service import admission, codec, engine, plans
from service.app import create_app
from service.client import Wire
from service.errors import ComputeError, LimitError
from service.settings import Settings

JSON = {"content-type": "application/json"}
# The cost model would refuse the slow requests below before they start; these tests are about
# what bounds a request that was admitted (on a slower machine than the model's, say).
UNPRICED = {"BPTT_MAX_REQUEST_SECONDS": "1e6", "BPTT_MAX_REQUEST_BYTES": str(8 << 30)}


def slow_body(rng: np.random.Generator, *, T: int = 600, H: int = 200) -> bytes:
    """A request that computes for a second or more: truncation K = T - 2 costs about T^2 H^2 (K >= T - 1 is full)."""
    p = make_problem(rng, H=H, C=5, T=T)
    return Wire("base64", "float64").bptt_body(p.U, p.V, p.W, p.x, p.y, bptt_truncate=T - 2)


def quick_body(rng: np.random.Generator) -> bytes:
    p = make_problem(rng, H=3, C=4, T=3)
    return Wire("base64", "float64").bptt_body(p.U, p.V, p.W, p.x, p.y)


@pytest.mark.slow  # a real server held busy for seconds
def test_deadline_stops_the_work_with_504_and_frees_the_thread(rng):
    with LocalServer(env={"BPTT_REQUEST_TIMEOUT": "1", "BPTT_THREADS": "1", **UNPRICED}) as server:
        start = time.monotonic()
        r = httpx.post(f"{server.url}/bptt", content=slow_body(rng, T=3000), headers=JSON, timeout=60)
        elapsed = time.monotonic() - start
        assert r.status_code == 504, r.text[:300]
        assert "deadline of 1 s (setting BPTT_REQUEST_TIMEOUT)" in r.json()["detail"]
        assert elapsed < 10, elapsed  # stopped between lags, not after the minutes the work would take
        # The one compute thread is free again at once.
        assert httpx.post(f"{server.url}/bptt", content=quick_body(rng), headers=JSON, timeout=5).status_code == 200


@pytest.mark.slow  # a real server held busy for seconds
def test_client_disconnect_cancels_running_work(rng):
    with LocalServer(env={"BPTT_REQUEST_TIMEOUT": "600", "BPTT_THREADS": "1", **UNPRICED}) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/bptt", content=slow_body(rng, T=3000), headers=JSON, timeout=1.0)
        # Without cancellation the one thread would be busy for minutes; with it, this is answered at once.
        r = httpx.post(f"{server.url}/bptt", content=quick_body(rng), headers=JSON, timeout=10)
        assert r.status_code == 200


@pytest.mark.slow  # a real server held busy for seconds
def test_a_body_that_does_not_arrive_gets_408():
    with (
        LocalServer(env={"BPTT_BODY_TIMEOUT": "1"}) as server,
        socket.create_connection(("127.0.0.1", server.port)) as s,
    ):
        s.sendall(b"POST /bptt HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        s.settimeout(10)
        start = time.monotonic()
        received = b""
        while b"}" not in received:  # the head and the JSON body may come in separate segments
            chunk = s.recv(65536)
            if not chunk:
                break
            received += chunk
        answer = received.decode()
        assert answer.startswith("HTTP/1.1 408"), answer
        assert "BPTT_BODY_TIMEOUT" in answer
        assert time.monotonic() - start < 5


@pytest.mark.slow  # a real server held busy for seconds
def test_queue_bound_holds_under_simultaneous_arrivals(rng):
    """threads = 1, max_queue = 2, twelve requests at once: exactly three admitted (no check-then-act)."""
    body = slow_body(rng, T=400, H=200)

    async def burst(url: str) -> list[int]:
        async with httpx.AsyncClient(timeout=120) as http:
            answers = await asyncio.gather(*(http.post(f"{url}/bptt", content=body, headers=JSON) for _ in range(12)))
        return sorted(r.status_code for r in answers)

    with LocalServer(env={"BPTT_THREADS": "1", "BPTT_MAX_QUEUE": "2", **UNPRICED}) as server:
        statuses = asyncio.run(burst(server.url))
    assert statuses.count(503) >= 9 - 1, statuses  # one may slip in after the first finishes
    assert statuses.count(200) <= 4, statuses
    assert set(statuses) <= {200, 503}


def test_json_parse_is_priced_before_parsing():
    """One-element rows cost about 1.5 us each to parse, holding the GIL: refused before parsing."""
    rows = "[" + ",".join(["[0]"] * 400_000) + "]"
    body = ('{"U":' + rows + ',"V":[[0]],"W":[[0]],"x":[0],"y":[0]}').encode()
    with pytest.raises(LimitError, match=r"setting BPTT_MAX_PARSE_SECONDS\); send the arrays as base64"):
        admission.check_json_parse(Settings(), body)


def test_the_seeds_request_as_plain_json_is_admitted(client, rng):
    """The tutorial's model (C = 8000, H = 100) with T = 50 as nested lists, about 34 MB: answered 200."""
    p = make_problem(rng, H=100, C=8000, T=50)
    body = codec.dumps(p.body())
    assert len(body) > 30e6
    admission.check_json_parse(Settings(), body)  # within the price
    r = client.post("/bptt", content=body, headers=JSON)
    assert r.status_code == 200, r.text[:300]


def test_no_non_finite_number_in_a_200(client, rng, monkeypatch):
    """Whatever the engine returns, a NaN or infinity becomes a 422 naming the quantity (checked in one place)."""
    p = make_problem(rng, H=3, C=4, T=3)
    real = engine.bptt

    def overflowing(*args, **kwargs):  # a gradient the engine's own check does not look at
        g = real(*args, **kwargs)
        g.dLdb[1] = np.inf
        return g

    monkeypatch.setattr(plans.engine, "bptt", overflowing)
    r = client.post("/bptt", json=p.body(b=[0.1, 0.2, 0.3]))
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "dLdb"
    assert "dLdb is not finite" in r.json()["detail"]


def test_require_finite_walks_every_part():
    codec.require_finite({"a": [1.0, {"b": np.ones(3)}], "n": 3})
    with pytest.raises(ComputeError, match=r"a\[1\]\.b is not finite"):
        codec.require_finite({"a": [1.0, {"b": np.array([1.0, np.nan])}]})


def test_fp32_v2_weights_beyond_float32_are_refused(client, rng):
    p = make_problem(rng, H=2, C=3, T=2)
    inputs = [
        {"name": "U", "shape": [2, 3], "datatype": "FP32", "data": [1e300, 0, 0, 0, 0, 0]},
        {"name": "V", "shape": [3, 2], "datatype": "FP32", "data": p.V.ravel().tolist()},
        {"name": "W", "shape": [2, 2], "datatype": "FP32", "data": p.W.ravel().tolist()},
        {"name": "x", "shape": [2], "datatype": "INT64", "data": p.x.tolist()},
        {"name": "y", "shape": [2], "datatype": "INT64", "data": p.y.tolist()},
    ]
    r = client.post("/v2/models/bptt/infer", json={"inputs": inputs})
    assert r.status_code == 400
    assert r.json()["error"].startswith("U[0][0] must be a finite number when converted to float32")


def test_text_logs_escape_request_controlled_text():
    app = create_app(Settings(log_format="text"))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    access = logging.getLogger("service.access")
    access.addHandler(handler)
    try:
        with TestClient(app) as c:
            c.get("/nope%0aFORGED 200 GET /healthz")
    finally:
        access.removeHandler(handler)
    lines = [r.getMessage() for r in records]
    assert lines and all("\n" not in line for line in lines)
    assert any("\\nFORGED" in line for line in lines)


def test_error_bodies_stay_small_whatever_the_request(client):
    huge = "x" * 2_000_000
    r = client.post("/bptt", json={"U": huge, "V": [[0]], "W": [[0]], "x": [0], "y": [0], huge: 1})
    assert r.status_code == 422
    assert len(r.content) < 8_000, len(r.content)


@pytest.mark.slow  # a real server held busy for seconds
def test_bytes_in_flight_are_bounded_across_connections(rng):
    """Bodies held at once (arriving or waiting) count against BPTT_MAX_BYTES_IN_FLIGHT: past it, 503 early."""
    limit = 200_000
    env = {"BPTT_MAX_BYTES_IN_FLIGHT": str(limit), "BPTT_MAX_BODY_BYTES": str(limit), "BPTT_BODY_TIMEOUT": "10"}
    with LocalServer(env=env) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as slow:
            # A slow upload that declared 150 kB holds them from its first byte.
            slow.sendall(b"POST /bptt HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            slow.sendall(b"Content-Length: 150000\r\n\r\n{")
            time.sleep(0.3)
            p = make_problem(rng, H=20, C=60, T=20)
            body = Wire("json", "float64").bptt_body(p.U, p.V, p.W, p.x, p.y)
            assert 50_000 < len(body) < limit
            r = httpx.post(f"{server.url}/bptt", content=body, headers=JSON, timeout=10)
            assert r.status_code == 503, r.text[:300]
            assert "BPTT_MAX_BYTES_IN_FLIGHT" in r.json()["detail"]
            assert "retry-after" in r.headers
        # The slow upload gone, the same request passes.
        deadline = time.monotonic() + 5
        while (r := httpx.post(f"{server.url}/bptt", content=body, headers=JSON, timeout=10)).status_code == 503:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert r.status_code == 200


@pytest.mark.slow  # a real server held busy for seconds
def test_sigterm_exits_within_the_deadline_while_a_long_request_runs(rng):
    """Graceful shutdown waits for requests in flight; none runs past its deadline, so the stop is bounded."""
    import signal
    import threading

    server = LocalServer(env={"BPTT_REQUEST_TIMEOUT": "2", "BPTT_THREADS": "1", **UNPRICED})
    answer: dict[str, object] = {}

    def post() -> None:
        try:
            answer["r"] = httpx.post(f"{server.url}/bptt", content=slow_body(rng, T=3000), headers=JSON, timeout=60)
        except httpx.HTTPError as exc:
            answer["error"] = exc

    worker = threading.Thread(target=post)
    worker.start()
    try:
        time.sleep(0.8)  # the request is computing (it would take minutes)
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        status = server.proc.wait(timeout=20)
        took = time.monotonic() - start
    finally:
        server.stop()
        worker.join(timeout=30)
    assert status == 0
    assert took < 2 + 5, f"stopped after {took:.1f} s"
    r = answer.get("r")
    assert isinstance(r, httpx.Response) and r.status_code == 504, answer


def test_a_client_that_leaves_during_the_upload_is_no_server_error():
    """Starlette's ClientDisconnect becomes Cancelled (499 in the log), not a 500 with a traceback."""
    app = create_app(Settings())
    sent: list[dict] = []
    messages = [
        {"type": "http.request", "body": b'{"U": ', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/bptt", "raw_path": b"/bptt", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1), "server": ("t", 80),
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    assert status == 499
