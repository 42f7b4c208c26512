"""Bounded load against a real server: a mix of valid, invalid and oversized requests, then a full queue.

3,000 requests, 48 in flight, at most 180 s, loopback only. Checks: no 5xx at
all in the mix (2 threads + a queue of 46 admit every one of 48 in flight),
every array of every valid answer equal to the engine's (REST and V2), the
server's memory (RSS) flat across the run, and the server still answering
afterwards. Then the queue is filled on purpose (2 slow requests computing, 46
waiting) and the requests past it are refused with 503 and Retry-After at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from helpers import LocalServer, make_problem

from service import codec, engine
from service.client import Wire

pytestmark = pytest.mark.slow


REQUESTS = 3000
IN_FLIGHT = 48
BUDGET_S = 180
MAX_BODY = 1 << 20
THREADS = 2
# Every request in flight is admitted (threads + queue = IN_FLIGHT): the mix never meets the bound.
MAX_QUEUE = IN_FLIGHT - THREADS
PAST_THE_QUEUE = 4  # requests sent once the queue is full: each must be refused with 503


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


Expected = dict[str, Any]
ARRAYS = ("dLdU", "dLdV", "dLdW", "dLds0", "final_state")


def expected_rest(g: engine.Gradients | engine.BatchGradients, tokens: int) -> Expected:
    """Every field of a REST answer: the engine's arrays and loss (no biases, no clipping), and
    ``tokens`` counted from the request, ``mean_loss`` = loss / tokens (not the engine's word for them)."""
    want: Expected = {name: getattr(g, name) for name in ("loss", *ARRAYS)}
    want |= {"tokens": tokens, "mean_loss": g.loss / tokens}
    if isinstance(g, engine.BatchGradients):
        want["losses"] = g.losses
    return want | {"dLdb": None, "dLdc": None, "clipped": None}


def expected_v2(g: engine.Gradients | engine.BatchGradients, tokens: int) -> Expected:
    """Every output of a V2 answer, each as the [1]- or array-shaped tensor the protocol sends."""
    rest = expected_rest(g, tokens)
    losses = g.losses if isinstance(g, engine.BatchGradients) else np.array([g.loss])
    scalars = {name: np.array([rest[name]]) for name in ("loss", "mean_loss", "tokens")}
    return scalars | {name: rest[name] for name in ARRAYS} | {"losses": losses}


def v2_tensor(name: str, a: np.ndarray) -> dict[str, Any]:
    datatype = "FP64" if a.dtype.kind == "f" else "INT64"
    return {"name": name, "shape": list(a.shape), "datatype": datatype, "data": a.ravel().tolist()}


def valid_requests(rng) -> list[tuple[str, bytes, dict, Expected]]:
    """(path, body, headers, every expected field) for a pool of problems: JSON and base64, single
    and batch, through REST and the Open Inference Protocol."""
    out = []
    for i in range(40):
        p = make_problem(rng, H=int(rng.integers(2, 24)), C=int(rng.integers(2, 60)), T=int(rng.integers(1, 30)))
        K = None if i % 3 else int(rng.integers(0, 5))
        s0 = rng.uniform(-1, 1, p.U.shape[0]) if i % 5 == 1 else None
        T = len(p.x)
        expected = expected_rest(engine.bptt(p.U, p.V, p.W, p.x, p.y, bptt_truncate=K, s0=s0), T)
        encoding = "base64" if i % 2 else "json"
        body = Wire(encoding, "float64").bptt_body(p.U, p.V, p.W, p.x, p.y, bptt_truncate=K, s0=s0)
        out.append(("/bptt", body, {"content-type": "application/json"}, expected))
        if i % 4 == 0:
            xs = [p.x, p.y, p.x[: max(1, len(p.x) // 2)]]
            ys = [p.y, p.x, p.y[: max(1, len(p.y) // 2)]]
            g = engine.bptt_batch(p.U, p.V, p.W, xs, ys, bptt_truncate=K)
            expected = expected_rest(g, sum(len(x) for x in xs))
            body = Wire(encoding, "float64").batch_body(p.U, p.V, p.W, xs, ys, bptt_truncate=K)
            out.append(("/bptt/batch", body, {"content-type": "application/json"}, expected))
        if i % 4 == 1:  # V2: one sequence, and a [B, T] batch padded at the end with lengths
            tensors = [v2_tensor(n, getattr(p, n)) for n in ("U", "V", "W", "x", "y")]
            if s0 is not None:
                tensors.append(v2_tensor("s0", s0))
            params = {} if K is None else {"parameters": {"bptt_truncate": K}}
            expected = expected_v2(engine.bptt(p.U, p.V, p.W, p.x, p.y, bptt_truncate=K, s0=s0), T)
            out.append(("/v2/models/bptt/infer", orjson.dumps({"inputs": tensors} | params), {}, expected))
            lengths = np.array([T, max(1, T // 2)])
            X = np.stack([p.x, np.roll(p.x, 1)])
            Y = np.stack([p.y, np.roll(p.y, 1)])
            rows = [(X[b, :n], Y[b, :n]) for b, n in enumerate(lengths)]
            g = engine.bptt_batch(p.U, p.V, p.W, [x for x, _ in rows], [y for _, y in rows], bptt_truncate=K)
            tensors = [v2_tensor(n, getattr(p, n)) for n in "UVW"]
            tensors += [v2_tensor("x", X), v2_tensor("y", Y), v2_tensor("lengths", lengths)]
            out.append(
                ("/v2/models/bptt/infer", orjson.dumps({"inputs": tensors} | params), {}, expected_v2(g, sum(lengths)))
            )
    return out


def as_array(value: Any) -> Any:
    """A REST answer's field: a base64 tensor object or nested lists as an array; scalars as they are."""
    if isinstance(value, dict):
        return codec.from_base64(value["dtype"], value["shape"], value["data"], "answer")
    return np.asarray(value) if isinstance(value, list) else value


def differences(path: str, content: bytes, expected: Expected) -> list[str]:
    """The names of the fields (REST) or outputs (V2) of an answer that differ from ``expected``."""
    data = orjson.loads(content)
    if path.startswith("/v2/"):
        got = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in data["outputs"]}
    else:
        got = {name: as_array(data.get(name, "missing")) for name in expected}
    wrong = sorted(set(expected) ^ set(got))
    for name, want in expected.items():
        have = got.get(name)
        if want is None or np.isscalar(want):
            same = have == want
        else:
            same = isinstance(have, np.ndarray) and have.shape == want.shape and np.array_equal(have, want)
        if not same:
            wrong.append(name)
    return wrong


def invalid_requests(rng) -> list[tuple[str, bytes, dict, int]]:
    p = make_problem(rng, H=3, C=5, T=4)
    good = p.body()
    bodies = [
        b"{",
        b"[]",
        b"null",
        b'"x"',
        b"{}",
        orjson.dumps(good | {"W": p.W[:2].tolist()}),
        orjson.dumps(good | {"x": [9, 9, 9, 9]}),
        orjson.dumps(good | {"y": [0]}),
        orjson.dumps(good | {"bptt_truncate": -1}),
        orjson.dumps(good | {"U": [["a"] * 5] * 3}),
        orjson.dumps(good).replace(b'"V":[[', b'"V":[[NaN,', 1),
        orjson.dumps(good | {"U": {"dtype": "float64", "shape": [3, 5], "data": "AAAA"}}),
        orjson.dumps({"U": good["U"], "V": good["V"], "W": good["W"], "sequences": []}),
    ]
    out = [("/bptt", b, {"content-type": "application/json"}, 0) for b in bodies]
    out.append(("/v2/models/bptt/infer", b'{"inputs": [{"name": "U"}]}', {}, 0))
    out.append(("/v2/models/bptt/infer", b"{}" + b"\0" * 16, {"Inference-Header-Content-Length": "99"}, 0))
    out.append(("/bptt", orjson.dumps(good), {"content-type": "text/plain"}, 0))
    return out


async def in_flight(http: httpx.AsyncClient) -> int:
    """Requests the server is answering, this /metrics request excepted."""
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith("bptt_http_requests_in_flight "):
            return int(float(line.split()[1])) - 1
    raise AssertionError("no bptt_http_requests_in_flight in /metrics")


async def wait_in_flight(http: httpx.AsyncClient, n: int, slow: list[asyncio.Task]) -> None:
    """Until ``n`` requests are in flight, then 0.2 s (from in flight to admitted is a small body
    read); fail if a ``slow`` request has already been answered."""
    deadline = time.monotonic() + 30
    while await in_flight(http) < n:
        assert not any(t.done() for t in slow), "a slow request was answered before the queue filled"
        assert time.monotonic() < deadline, f"fewer than {n} requests in flight after 30 s"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)


async def fill_the_queue(url: str, valid: list) -> tuple[list, list, list]:
    """THREADS slow gradient checks computing, MAX_QUEUE valid requests waiting, then PAST_THE_QUEUE
    more: each answer with the time it arrived, for (slow, queued, past)."""
    rng = np.random.default_rng(3)
    # Seconds of central differences: H = 80, where the forward loop is numpy's also with the
    # compiled loops installed (service/kernel.py compiles it only while B x H <= 64).
    slow = orjson.dumps(make_problem(rng, 80, 8, 10_000).body(samples=16))

    async def timed(http: httpx.AsyncClient, path: str, body: bytes, headers: dict) -> tuple[httpx.Response, float]:
        r = await http.post(path, content=body, headers=headers)
        return r, time.monotonic()

    limits = httpx.Limits(max_connections=IN_FLIGHT + PAST_THE_QUEUE + 1)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        json_headers = {"content-type": "application/json"}
        holders = [asyncio.create_task(timed(http, "/gradient-check", slow, json_headers)) for _ in range(THREADS)]
        await wait_in_flight(http, THREADS, holders)
        queued = [asyncio.create_task(timed(http, *valid[j][:3])) for j in range(MAX_QUEUE)]
        await wait_in_flight(http, THREADS + MAX_QUEUE, holders)
        past = [asyncio.create_task(timed(http, *valid[j][:3])) for j in range(PAST_THE_QUEUE)]
        return await asyncio.gather(*holders), await asyncio.gather(*queued), await asyncio.gather(*past)


def test_bounded_mixed_load_no_5xx_correct_answers_flat_memory():
    rng = np.random.default_rng(7)
    valid = valid_requests(rng)
    invalid = invalid_requests(rng)
    oversized = b'{"U": [' + b"0.0," * (MAX_BODY // 4) + b"0.0]]}"
    env = {"BPTT_MAX_BODY_BYTES": str(MAX_BODY), "BPTT_THREADS": str(THREADS), "BPTT_MAX_QUEUE": str(MAX_QUEUE)}
    # The full queue's slow requests (seconds each) are neither priced out nor timed out on a slow machine.
    env |= {"BPTT_MAX_REQUEST_SECONDS": "600", "BPTT_REQUEST_TIMEOUT": "600"}
    # The queue fills with valid requests that wait for a thread: priced under BPTT_INLINE_SECONDS they
    # would compute in the event loop at once (tests/test_compute.py).
    env |= {"BPTT_INLINE_SECONDS": "0"}
    server = LocalServer(env=env)
    pick = random.Random(11)
    plan = []
    for _ in range(REQUESTS):
        roll = pick.random()
        plan.append("valid" if roll < 0.7 else "invalid" if roll < 0.92 else "oversized")
    statuses: dict[int, int] = {}
    wrong: list[str] = []
    rss: list[tuple[int, float]] = []

    async def one(http: httpx.AsyncClient, i: int, kind: str) -> None:
        if kind == "valid":
            path, body, headers, expected = valid[i % len(valid)]
        elif kind == "invalid":
            path, body, headers, expected = invalid[i % len(invalid)]
        else:
            path, body, headers, expected = "/bptt", oversized, {"content-type": "application/json"}, None
        r = await http.post(path, content=body, headers=headers)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        if kind == "valid":
            if r.status_code != 200:
                wrong.append(f"{path}: {r.status_code} {r.text[:200]}")
            elif bad := differences(path, r.content, expected):
                wrong.append(f"{path}: wrong {', '.join(bad)}")
        elif kind == "invalid" and not 400 <= r.status_code < 500:
            wrong.append(f"invalid request answered {r.status_code}")
        elif kind == "oversized" and r.status_code != 413:
            wrong.append(f"oversized request answered {r.status_code}")
        if i % 100 == 0:
            rss.append((i, rss_mb(server.proc.pid)))

    async def run() -> None:
        gate = asyncio.Semaphore(IN_FLIGHT)
        limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:

            async def guarded(i: int, kind: str) -> None:
                async with gate:
                    await one(http, i, kind)

            await asyncio.wait_for(asyncio.gather(*(guarded(i, k) for i, k in enumerate(plan))), BUDGET_S)

    try:
        start = time.monotonic()
        asyncio.run(run())
        elapsed = time.monotonic() - start
        slow, queued, past = asyncio.run(fill_the_queue(server.url, valid))
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        p, body, headers, _ = valid[0]
        assert httpx.post(f"{server.url}{p}", content=body, headers=headers, timeout=30).status_code == 200
    finally:
        server.stop()
    assert sum(statuses.values()) == REQUESTS
    assert not [s for s in statuses if s >= 500], statuses
    assert not wrong, wrong[:5]
    # The full queue: the slow requests and the waiting ones served (and right); every one past
    # the bound refused with 503 and Retry-After at once, while the slow ones still computed.
    assert [r.status_code for r, _ in slow] == [200] * THREADS, [r.text[:200] for r, _ in slow]
    for j, (r, _) in enumerate(queued):
        assert r.status_code == 200, r.text[:200]
        path, _, _, expected = valid[j]
        assert not differences(path, r.content, expected), (path, differences(path, r.content, expected))
    first_slow_done = min(t for _, t in slow)
    for r, t in past:
        assert r.status_code == 503, f"a request past the full queue answered {r.status_code}: {r.text[:200]}"
        assert r.headers["retry-after"] == "1"
        assert "(settings BPTT_THREADS, BPTT_MAX_QUEUE)" in r.json()["detail"]
        assert t < first_slow_done, "refused only after a slow request ended: it was queued, not refused"
    # Memory: after the first third (warm-up, malloc arenas filling), RSS stays flat.
    settled = [mb for i, mb in rss if i >= REQUESTS // 3]
    assert max(settled) - min(settled) < 40, f"RSS grew from {min(settled):.0f} to {max(settled):.0f} MB: {rss}"
    print(f"\n{REQUESTS} requests in {elapsed:.1f} s, statuses {statuses}, RSS {rss[0][1]:.0f} -> {rss[-1][1]:.0f} MB")
    print(f"full queue: {THREADS} slow, {MAX_QUEUE} waiting served; {PAST_THE_QUEUE} past it refused with 503")
