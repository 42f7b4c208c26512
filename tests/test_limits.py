"""Every limit at its edge: a request at the limit is served, one unit past it is refused.

service.admission (tokens, weights, probabilities, batch, batch tokens, trace
values; the cost model's predicted seconds and bytes), service.middleware (body
bytes by Content-Length and chunked, API keys), service.compute (the queue
bound) and the clipping of gradients. Each test names in its docstring the one-line bug it catches (found
by a trial of mutations that no earlier test caught). A refusal must be 413
with the field and the ``BPTT_*`` setting named, and the value and the limit
in the message.

Dimension letters: T steps, H hidden, C vocabulary, B batch, K truncation,
N tokens of a batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from helpers import LocalServer, Problem, make_problem

from service import admission, engine
from service.app import create_app
from service.client import Wire
from service.compute import Pool
from service.errors import Busy
from service.settings import Settings


def app(**limits: Any) -> TestClient:
    """The app in-process with ``limits`` (settings) and quiet logs."""
    return TestClient(create_app(Settings(log_level="warning", **limits)), raise_server_exceptions=False)


def refused(r: httpx.Response, *, setting: str, field: str, value: int | None = None, limit: int | None = None) -> str:
    """Assert a 413 naming ``field`` and ``BPTT_<SETTING>`` (and ``value``, ``limit``); the message."""
    assert r.status_code == 413, r.text
    body = r.json()
    detail: str = body["detail"]
    assert body["errors"] == [{"field": field, "message": detail, "type": "limit"}], body
    assert f"BPTT_{setting.upper()}" in detail, detail
    if value is not None:
        assert f"is {value:,}" in detail, detail
    if limit is not None:
        assert f"limit of {limit:,}" in detail, detail
    return detail


def served(r: httpx.Response) -> dict[str, Any]:
    """Assert a 200; the answer."""
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def batch_body(p: Problem, lengths: list[int], **extra: Any) -> bytes:
    """POST /bptt/batch with the weights of ``p`` and sequences of ``lengths`` (cut from ``p.x``, ``p.y``)."""
    seqs = [{"x": p.x[:n].tolist(), "y": p.y[:n].tolist()} for n in lengths]
    return orjson.dumps({k: getattr(p, k).tolist() for k in "UVW"} | {"sequences": seqs} | extra)


def v2_body(p: Problem, *, X: np.ndarray | None = None, Y: np.ndarray | None = None, **more: np.ndarray) -> bytes:
    """An Open Inference Protocol request, every tensor as JSON data."""
    arrays = {"U": p.U, "V": p.V, "W": p.W, "x": p.x if X is None else X, "y": p.y if Y is None else Y, **more}
    inputs = [
        {
            "name": n,
            "shape": list(a.shape),
            "datatype": "FP64" if a.dtype.kind == "f" else "INT64",
            "data": a.ravel().tolist(),
        }
        for n, a in arrays.items()
    ]
    return orjson.dumps({"inputs": inputs})


# -- T per sequence ---------------------------------------------------------------


def test_max_tokens_at_limit_served_one_past_refused(rng):
    """Bug caught: ``>=`` for ``>`` on T vs BPTT_MAX_TOKENS (T = max_tokens refused)."""
    p = make_problem(rng, H=3, C=4, T=11)
    with app(max_tokens=10) as c:
        at = served(c.post("/bptt", content=orjson.dumps(p.body() | {"x": p.x[:10].tolist(), "y": p.y[:10].tolist()})))
        assert at["tokens"] == 10
        assert at["loss"] == pytest.approx(engine.bptt(p.U, p.V, p.W, p.x[:10], p.y[:10]).loss, rel=1e-12)
        refused(c.post("/bptt", content=orjson.dumps(p.body())), setting="max_tokens", field="x", value=11, limit=10)
        # A batch: the longest sequence counts, and is named.
        assert served(c.post("/bptt/batch", content=batch_body(p, [10, 3])))["tokens"] == 13
        refused(
            c.post("/bptt/batch", content=batch_body(p, [3, 10, 11])),
            setting="max_tokens",
            field="sequences[2].x",
            value=11,
            limit=10,
        )
        # The Open Inference Protocol's route admits with the same limit.
        assert served(c.post("/v2/models/bptt/infer", content=v2_body(p, X=p.x[:10], Y=p.y[:10])))
        r = c.post("/v2/models/bptt/infer", content=v2_body(p))
        assert r.json()["error"] == refused(r, setting="max_tokens", field="x", value=11, limit=10)


# -- C x H --------------------------------------------------------------------------


def test_max_weights_at_limit_served_one_past_refused(rng):
    """Bug caught: ``>=`` for ``>`` on C x H vs BPTT_MAX_WEIGHTS (C x H = max_weights refused)."""
    at = make_problem(rng, H=2, C=10, T=5)  # C x H = 20
    past = make_problem(rng, H=3, C=7, T=5)  # C x H = 21
    with app(max_weights=20) as c:
        served(c.post("/bptt", content=orjson.dumps(at.body())))
        detail = refused(
            c.post("/bptt", content=orjson.dumps(past.body())), setting="max_weights", field="U", value=21, limit=20
        )
        assert "C x H = 7 x 3" in detail
        served(c.post("/bptt/batch", content=batch_body(at, [5, 2])))
        refused(c.post("/bptt/batch", content=batch_body(past, [5, 2])), setting="max_weights", field="U", value=21)
        served(c.post("/v2/models/bptt/infer", content=v2_body(at)))
        refused(c.post("/v2/models/bptt/infer", content=v2_body(past)), setting="max_weights", field="U", value=21)


# -- the tokens x C probability matrix ------------------------------------------


def test_max_probabilities_single_sequence_at_limit_and_one_past(rng):
    """T x C = BPTT_MAX_PROBABILITIES is served, one more refused naming x (``>=`` for ``>`` caught)."""
    p = make_problem(rng, H=2, C=5, T=6)  # 30 probabilities
    with app(max_probabilities=30) as c:
        served(c.post("/bptt", content=orjson.dumps(p.body())))
    with app(max_probabilities=29) as c:
        detail = refused(
            c.post("/bptt", content=orjson.dumps(p.body())), setting="max_probabilities", field="x", value=30, limit=29
        )
        assert "tokens x C = 6 x 5" in detail


def test_max_probabilities_of_a_batch_count_all_tokens(rng):
    """Bug caught: the batch's probability matrix computed from the longest sequence (4 x 5 = 20)
    instead of all N tokens (N x C = 7 x 5 = 35)."""
    p = make_problem(rng, H=2, C=5, T=4)
    with app(max_probabilities=35) as c:
        assert served(c.post("/bptt/batch", content=batch_body(p, [3, 4])))["tokens"] == 7
        X = np.stack([p.x, p.x])
        Y = np.stack([p.y, p.y])
        lengths = np.array([3, 4])
        served(c.post("/v2/models/bptt/infer", content=v2_body(p, X=X, Y=Y, lengths=lengths)))
    with app(max_probabilities=34) as c:
        detail = refused(
            c.post("/bptt/batch", content=batch_body(p, [3, 4])),
            setting="max_probabilities",
            field="sequences",
            value=35,
            limit=34,
        )
        assert "tokens x C = 7 x 5" in detail
        refused(
            c.post("/v2/models/bptt/infer", content=v2_body(p, X=X, Y=Y, lengths=lengths)),
            setting="max_probabilities",
            field="sequences",
            value=35,
            limit=34,
        )


# -- batch size and batch tokens --------------------------------------------------


def test_max_batch_at_limit_served_one_past_refused(rng):
    """B = BPTT_MAX_BATCH is served, B + 1 refused (``>=`` for ``>``, or B - 1 counted, caught)."""
    p = make_problem(rng, H=2, C=3, T=3)
    with app(max_batch=3) as c:
        assert len(served(c.post("/bptt/batch", content=batch_body(p, [3, 2, 1])))["losses"]) == 3
        refused(
            c.post("/bptt/batch", content=batch_body(p, [3, 2, 1, 1])),
            setting="max_batch",
            field="sequences",
            value=4,
            limit=3,
        )


def test_max_batch_tokens_at_limit_served_one_past_refused(rng):
    """N = BPTT_MAX_BATCH_TOKENS is served, N + 1 refused (``>=`` for ``>``, or the longest counted, caught)."""
    p = make_problem(rng, H=2, C=3, T=5)
    with app(max_batch_tokens=12) as c:
        assert served(c.post("/bptt/batch", content=batch_body(p, [4, 4, 4])))["tokens"] == 12
        refused(
            c.post("/bptt/batch", content=batch_body(p, [4, 4, 5])),
            setting="max_batch_tokens",
            field="sequences",
            value=13,
            limit=12,
        )


# -- trace values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("T", "K", "H", "lags"),
    [
        (10, 3, 2, 4),  # K + 1 lags kept
        (10, 0, 3, 1),  # lag 0 only
        (5, None, 2, 5),  # full BPTT: T lags
        (5, 7, 2, 5),  # K + 1 > T: T lags
    ],
)
def test_max_trace_values_at_limit_served_one_past_refused(rng, T, K, H, lags):
    """Bug caught: the trace counted with K lags instead of K + 1 (T x min(T, K + 1) x H values)."""
    p = make_problem(rng, H=H, C=4, T=T)
    values = T * lags * H
    body = orjson.dumps(p.body(trace=True, bptt_truncate=K))
    with app(max_trace_values=values) as c:
        trace = served(c.post("/bptt", content=body))["trace"]
        assert sum(len(d) for d in trace["deltas"]) <= values // H  # the rows it holds fit the count
        assert max(len(d) for d in trace["deltas"]) == lags
    with app(max_trace_values=values - 1) as c:
        detail = refused(
            c.post("/bptt", content=body), setting="max_trace_values", field="trace", value=values, limit=values - 1
        )
        assert f"T x lags x H = {T} x {lags} x {H}" in detail


# -- the cost model's budgets: predicted seconds and bytes ---------------------------


def compute_body(route: str, p: Problem) -> bytes:
    """A base64 body for ``route`` (the same problem on every route)."""
    wire = Wire("base64", "float64")
    if route == "/bptt/batch":
        return wire.batch_body(p.U, p.V, p.W, [p.x, p.y[:3]], [p.y, p.x[:3]])
    body = orjson.loads(wire.bptt_body(p.U, p.V, p.W, p.x, p.y))
    if route in ("/gradient-check", "/bptt/compare"):  # float64 only, answers without arrays to encode
        del body["encoding"], body["dtype"]
    if route == "/gradient-check":
        body["samples"] = 2
    if route == "/bptt/compare":
        g = engine.bptt(p.U, p.V, p.W, p.x, p.y)
        body |= {"dLdU": wire.array(g.dLdU), "dLdV": wire.array(g.dLdV), "dLdW": wire.array(g.dLdW)}
    return orjson.dumps(body)


def price(route: str, body: bytes) -> dict[str, Any]:
    """POST {route}/cost's estimate of ``body``, with the default budgets (admitted)."""
    with app() as c:
        r = c.post(f"{route}/cost", content=body, headers={"content-type": "application/json"})
    answer = served(r)
    assert answer["admitted"] is True, answer
    estimate: dict[str, Any] = answer["estimate"]
    return estimate


ROUTES = ["/bptt", "/bptt/batch", "/gradient-check", "/bptt/compare"]


@pytest.mark.parametrize("route", ROUTES)
def test_max_request_seconds_at_the_estimate_and_just_below(rng, route):
    """A request predicted to take exactly BPTT_MAX_REQUEST_SECONDS runs; with the budget one
    float below the prediction it is refused (``>=`` for ``>`` caught)."""
    p = make_problem(rng, H=6, C=9, T=12)
    body = compute_body(route, p)
    seconds = price(route, body)["seconds"]
    with app(max_request_seconds=seconds) as c:
        served(c.post(route, content=body))
    with app(max_request_seconds=float(np.nextafter(seconds, 0))) as c:
        refused(c.post(route, content=body), setting="max_request_seconds", field="body")


def test_max_request_seconds_on_v2_at_the_estimate_of_bptt_and_just_below(rng):
    """V2 prices a request as POST /bptt prices the same arrays: admitted at that estimate, refused below it."""
    p = make_problem(rng, H=6, C=9, T=12)
    seconds = price("/bptt", compute_body("/bptt", p))["seconds"]
    with app(max_request_seconds=seconds) as c:
        served(c.post("/v2/models/bptt/infer", content=v2_body(p)))
    with app(max_request_seconds=float(np.nextafter(seconds, 0))) as c:
        r = c.post("/v2/models/bptt/infer", content=v2_body(p))
        assert r.json()["error"] == refused(r, setting="max_request_seconds", field="body")


@pytest.mark.parametrize("route", ROUTES)
def test_max_request_bytes_at_the_estimate_and_one_below(rng, route):
    """A request predicted to need exactly BPTT_MAX_REQUEST_BYTES (its arrays and the computation's
    peak) runs; one byte less of budget and it is refused (``>=`` for ``>`` caught)."""
    p = make_problem(rng, H=64, C=1100, T=16)  # U and V alone are 1.1 MB: over the setting's 1 MiB floor
    body = compute_body(route, p)
    total = price(route, body)["bytes"]
    assert total > 1 << 20
    with app(max_request_bytes=total) as c:
        served(c.post(route, content=body))
    with app(max_request_bytes=total - 1) as c:
        refused(c.post(route, content=body), setting="max_request_bytes", field="body")


# -- body bytes ---------------------------------------------------------------------

MAX_BODY = 1 << 16  # room for the queue test's slow request (40 KB)


def padded(body: bytes, size: int) -> bytes:
    """``body`` followed by spaces (still the same JSON) to exactly ``size`` bytes."""
    assert len(body) <= size
    return body + b" " * (size - len(body))


BODY_MESSAGE = f"the request body is larger than the limit of {MAX_BODY:,} bytes (setting BPTT_MAX_BODY_BYTES)"


def test_max_body_bytes_by_content_length_at_limit_and_one_past(rng):
    """Content-Length = BPTT_MAX_BODY_BYTES is read and served; one byte more is 413 (REST and V2)."""
    p = make_problem(rng, H=2, C=3, T=4)
    rest = orjson.dumps(p.body())
    v2 = v2_body(p)
    with app(max_body_bytes=MAX_BODY) as c:
        for path, body in (("/bptt", rest), ("/v2/models/bptt/infer", v2)):
            served(c.post(path, content=padded(body, MAX_BODY)))
            r = c.post(path, content=padded(body, MAX_BODY + 1))
            assert r.request.headers["content-length"] == str(MAX_BODY + 1)
            assert refused(r, setting="max_body_bytes", field="body").startswith(BODY_MESSAGE)


def test_max_bytes_in_flight_by_content_length_at_limit_and_one_past(rng):
    """With nothing else in flight, a body of exactly BPTT_MAX_BYTES_IN_FLIGHT is served, and nothing stays
    counted after it; one byte more is over the body limit, which may not exceed it (Settings refuses that),
    so 413. The 503 of bodies held at once is tests/test_bounded.py's (two connections)."""
    p = make_problem(rng, H=2, C=3, T=4)
    body = orjson.dumps(p.body())
    with app(max_body_bytes=MAX_BODY, max_bytes_in_flight=MAX_BODY) as c:
        served(c.post("/bptt", content=padded(body, MAX_BODY)))
        r = c.post("/bptt", content=padded(body, MAX_BODY + 1))
        assert r.status_code == 413, r.text
        served(c.post("/bptt", content=padded(body, MAX_BODY)))  # nothing stays counted
    with pytest.raises(ValueError, match="must be at least max_body_bytes"):
        Settings(max_body_bytes=1 << 20, max_bytes_in_flight=MAX_BODY)


def parse_seconds(body: bytes) -> float:
    """The parse price admission puts on a JSON body: its commas bound the numbers, its ``[`` the lists."""
    numbers, lists = body.count(b",") + 1, body.count(b"[")
    return float(numbers * admission.PARSE_SECONDS_PER_NUMBER + lists * admission.PARSE_SECONDS_PER_LIST)


@pytest.mark.parametrize("path", ["/bptt", "/v2/models/bptt/infer"])
def test_max_parse_seconds_at_the_price_and_just_below(rng, path):
    """A JSON body priced at exactly BPTT_MAX_PARSE_SECONDS is parsed; one float below, 413."""
    p = make_problem(rng, H=5, C=7, T=20)
    body = orjson.dumps(p.body()) if path == "/bptt" else v2_body(p)
    seconds = parse_seconds(body)
    with app(max_parse_seconds=seconds) as c:
        served(c.post(path, content=body))
    with app(max_parse_seconds=float(np.nextafter(seconds, 0))) as c:
        r = c.post(path, content=body)
        refused(r, setting="max_parse_seconds", field="body")


@pytest.fixture(scope="module")
def small_server() -> Iterator[LocalServer]:
    """A real server with a 64 KiB body limit, one compute thread and a queue of two."""
    env = {"BPTT_MAX_BODY_BYTES": str(MAX_BODY), "BPTT_THREADS": "1", "BPTT_MAX_QUEUE": "2"}
    # The queue test's slow request (about 3 s predicted) is neither priced out nor timed out on a slow machine.
    env |= {"BPTT_MAX_REQUEST_SECONDS": "600", "BPTT_REQUEST_TIMEOUT": "600"}
    # ... and takes seconds: numpy's loops (the compiled ones run it in a fraction of a second).
    env |= {"BPTT_KERNEL": "numpy"}
    # The small requests wait for the one thread: priced under BPTT_INLINE_SECONDS, they would compute
    # in the event loop at once (tests/test_compute.py).
    env |= {"BPTT_INLINE_SECONDS": "0"}
    with LocalServer(env=env) as server:
        yield server


def chunked(body: bytes, size: int = 100) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


@pytest.mark.parametrize("path", ["/bptt", "/v2/models/bptt/infer"])
def test_max_body_bytes_chunked_at_limit_and_one_past(small_server, rng, path):
    """Bug caught: the limit on a body without Content-Length loosened fourfold. Sent in chunks
    to a real server, exactly BPTT_MAX_BODY_BYTES bytes are served and one more byte is 413."""
    p = make_problem(rng, H=2, C=3, T=4)
    body = orjson.dumps(p.body()) if path == "/bptt" else v2_body(p)
    with httpx.Client(base_url=small_server.url, timeout=30) as http:
        r = http.post(path, content=chunked(padded(body, MAX_BODY)), headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
        served(r)
        r = http.post(path, content=chunked(padded(body, MAX_BODY + 1)), headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers
        assert refused(r, setting="max_body_bytes", field="body").startswith(BODY_MESSAGE)
        if path.startswith("/v2/"):
            assert r.json()["error"] == r.json()["detail"]
        assert http.get("/healthz").status_code == 200


# -- the compute queue ---------------------------------------------------------------


@pytest.mark.parametrize(("threads", "max_queue"), [(1, 2), (2, 0), (2, 3)])
def test_pool_admits_threads_plus_queue_and_refuses_one_more(threads, max_queue):
    """Bug caught: the queue bound off by one. With every admitted work held on an event,
    exactly threads + max_queue are admitted, at most ``threads`` run at once, and the next
    one is refused with Busy (Retry-After) without running; afterwards the pool admits again."""
    admitted = threads + max_queue
    release = threading.Event()
    lock = threading.Lock()
    running = {"now": 0, "peak": 0}
    ran: list[int] = []

    def work(i: int) -> int:
        with lock:
            running["now"] += 1
            running["peak"] = max(running["peak"], running["now"])
        release.wait(20)
        with lock:
            running["now"] -= 1
            ran.append(i)
        return i

    async def main() -> tuple[Busy, list[int], int]:
        pool = Pool(threads=threads, max_queue=max_queue, timeout=60.0)
        results: list[int] = []

        async def submit(i: int) -> None:
            results.append(await pool.run(lambda: work(i)))

        busy: Busy | None = None
        async with anyio.create_task_group() as tg:
            try:
                for i in range(admitted):
                    tg.start_soon(submit, i)
                with anyio.fail_after(10):
                    while pool.admitted < admitted or running["now"] < threads:
                        await anyio.sleep(0.001)
                try:
                    with anyio.fail_after(2):  # admitted past the bound, it would wait for a thread
                        await pool.run(lambda: work(99))
                except Busy as exc:
                    busy = exc
                assert pool.admitted == admitted
            finally:
                release.set()  # whatever failed, the held threads end now
        assert busy is not None, f"{admitted + 1} requests admitted with threads={threads}, max_queue={max_queue}"
        after = await pool.run(lambda: -1)
        return busy, results, after

    busy, results, after = anyio.run(main)
    assert sorted(results) == list(range(admitted)) and 99 not in ran
    assert running["peak"] == threads
    assert after == -1
    assert busy.headers == {"retry-after": "1"}
    assert busy.message == (
        f"the server is at capacity: {threads} requests computing and {max_queue} waiting "
        "(settings BPTT_THREADS, BPTT_MAX_QUEUE); retry shortly"
    )


async def in_flight(http: httpx.AsyncClient) -> int:
    """Requests the server is answering, this /metrics request excepted."""
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith("bptt_http_requests_in_flight "):
            return int(float(line.split()[1])) - 1
    raise AssertionError("no bptt_http_requests_in_flight in /metrics")


async def wait_in_flight(http: httpx.AsyncClient, n: int, holder: asyncio.Task[httpx.Response]) -> None:
    """Until ``n`` requests are in flight (then 0.2 s more: from in flight to admitted is a
    small body read); fail if ``holder``, the slow request, has already been answered."""
    deadline = time.monotonic() + 30
    while await in_flight(http) < n:
        if holder.done():
            r = holder.result()
            raise AssertionError(f"the slow request was answered early: {r.status_code} {r.text[:300]}")
        assert time.monotonic() < deadline, f"fewer than {n} requests in flight after 30 s"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)


def test_queue_on_a_real_server_admits_threads_plus_queue(small_server):
    """Bug caught: the queue bound off by one, on a real server with 1 thread and a queue of 2.
    A slow gradient check holds the thread, two small requests wait: all three are served; a
    fourth, sent while they are admitted, is 503 with Retry-After; afterwards one is served."""
    rng = np.random.default_rng(5)
    slow = make_problem(rng, H=8, C=8, T=10_000)  # 2 x 36 loss evaluations of 10,000 steps: seconds
    slow_body = orjson.dumps(slow.body(samples=12))
    assert len(slow_body) < MAX_BODY
    small = make_problem(rng, H=3, C=4, T=5)
    engine.use_kernel("numpy")  # as the server computes it, to the last bit
    try:
        expected = engine.bptt(small.U, small.V, small.W, small.x, small.y)
    finally:
        engine.use_kernel("auto")
    small_body = orjson.dumps(small.body())

    async def post(http: httpx.AsyncClient, path: str, body: bytes) -> httpx.Response:
        return await http.post(path, content=body, headers={"content-type": "application/json"})

    async def run() -> tuple[list[httpx.Response], httpx.Response, bool, httpx.Response]:
        limits = httpx.Limits(max_connections=8)
        async with httpx.AsyncClient(base_url=small_server.url, timeout=120, limits=limits) as http:
            async with httpx.AsyncClient(base_url=small_server.url, timeout=10) as probe:
                holder = asyncio.create_task(post(http, "/gradient-check", slow_body))
                await wait_in_flight(probe, 1, holder)
                waiting = [asyncio.create_task(post(http, "/bptt", small_body)) for _ in range(2)]
                await wait_in_flight(probe, 3, holder)
                fourth = asyncio.create_task(post(http, "/bptt", small_body))
                # Refused, it is answered at once; admitted, it waits for the slow request.
                done, _ = await asyncio.wait({fourth, holder}, return_when=asyncio.FIRST_COMPLETED)
                refused_at_once = fourth in done
            first = await asyncio.gather(holder, *waiting)
            extra = await fourth
            after = await post(http, "/bptt", small_body)
        return first, extra, refused_at_once, after

    first, extra, refused_at_once, after = asyncio.run(run())
    assert refused_at_once, (
        f"a fourth request was admitted (answered {extra.status_code} after the slow one) while 1 computed and 2 waited"
    )
    assert extra.status_code == 503, extra.text
    assert extra.headers["retry-after"] == "1"
    assert extra.json()["detail"] == (
        "the server is at capacity: 1 requests computing and 2 waiting (settings BPTT_THREADS, BPTT_MAX_QUEUE); "
        "retry shortly"
    )
    assert [r.status_code for r in first] == [200, 200, 200], [r.text[:200] for r in first]
    assert first[0].json()["passed"] is True
    for r in [*first[1:], after]:
        assert r.json()["loss"] == expected.loss
        np.testing.assert_array_equal(np.array(r.json()["dLdU"]), expected.dLdU)


# -- API keys --------------------------------------------------------------------------


def test_api_key_must_match_exactly(rng):
    """Bug caught: a key accepted on a prefix match. With key "s3cret", "s3cre", "s3cret0",
    "S3CRET" and "s3cret " with a space inside the token are refused; "s3cret" is accepted."""
    body = orjson.dumps(make_problem(rng, 2, 3, 2).body())
    with app(api_key="s3cret") as c:
        for token in ("s3cre", "s3cret0", "S3CRET", "3cret", ""):
            r = c.post("/bptt", content=body, headers={"authorization": f"Bearer {token}"})
            assert r.status_code == 401, token
            assert r.json()["errors"][0]["field"] == "Authorization"
        served(c.post("/bptt", content=body, headers={"authorization": "Bearer s3cret"}))
        served(c.post("/bptt", content=body, headers={"authorization": "bearer s3cret"}))  # the scheme is any case
    with app(api_key="s3cret,other") as c:
        for token in ("s3cre", "s3creto", "othe", "s3cret,other"):
            assert c.post("/bptt", content=body, headers={"authorization": f"Bearer {token}"}).status_code == 401
        for token in ("s3cret", "other"):
            served(c.post("/bptt", content=body, headers={"authorization": f"Bearer {token}"}))


# -- clipping --------------------------------------------------------------------------


def test_clip_bounds_every_gradient_entry_by_entry(rng):
    """Bug caught: clipping skipped for dLdU and the biases. Each of dLdU, dLdV, dLdW, dLdb,
    dLdc equals np.clip of the unclipped gradient, entry by entry, and ``clipped`` counts the
    entries with |g| > clip; the clip lies inside every gradient's range of magnitudes."""
    p = make_problem(rng, H=4, C=5, T=8, s0=True)
    b = rng.uniform(-1, 1, 4)
    c = rng.uniform(-1, 1, 5)
    free = engine.bptt(p.U, p.V, p.W, p.x, p.y, s0=p.s0, b=b, c=c)
    names = ("dLdU", "dLdV", "dLdW", "dLdb", "dLdc")
    grads = {n: getattr(free, n) for n in names}
    low = max(float(np.abs(g).min()) for g in grads.values())
    high = min(float(np.abs(g).max()) for g in grads.values())
    assert low < high, "the problem must have a clip that cuts every gradient and leaves some entries"
    clip = (low + high) / 2
    with app() as client:
        answer = served(client.post("/bptt", content=orjson.dumps(p.body(b=b.tolist(), c=c.tolist(), clip=clip))))
    for name, g in grads.items():
        got = np.array(answer[name])
        np.testing.assert_array_equal(got, np.clip(g, -clip, clip), err_msg=name)
        assert np.abs(got).max() == clip, name
        n = int(np.count_nonzero(np.abs(g) > clip))
        assert 0 < n < g.size, name
        assert answer["clipped"][name] == n, name
    assert answer["loss"] == free.loss
    np.testing.assert_array_equal(np.array(answer["dLds0"]), free.dLds0)  # not a parameter: never clipped
