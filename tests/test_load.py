"""Bounded load against a real server: a mix of valid, invalid and oversized requests.

3,000 requests, 48 in flight, at most 180 s, loopback only. Checks: no 5xx at
all, every valid answer equal to the engine's, the server's memory (RSS) flat
across the run, and the server still answering afterwards.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

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


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def valid_requests(rng) -> list[tuple[str, bytes, dict, object]]:
    """(path, body, headers, expected dLdW) for a pool of problems, JSON and base64, single and batch."""
    out = []
    for i in range(40):
        p = make_problem(rng, H=int(rng.integers(2, 24)), C=int(rng.integers(2, 60)), T=int(rng.integers(1, 30)))
        K = None if i % 3 else int(rng.integers(0, 5))
        expected = engine.bptt(p.U, p.V, p.W, p.x, p.y, bptt_truncate=K).dLdW
        encoding = "base64" if i % 2 else "json"
        body = Wire(encoding, "float64").bptt_body(p.U, p.V, p.W, p.x, p.y, bptt_truncate=K)
        out.append(("/bptt", body, {"content-type": "application/json"}, expected))
        if i % 4 == 0:
            xs = [p.x, p.y, p.x[: max(1, len(p.x) // 2)]]
            ys = [p.y, p.x, p.y[: max(1, len(p.y) // 2)]]
            expected = engine.bptt_batch(p.U, p.V, p.W, xs, ys, bptt_truncate=K).dLdW
            body = Wire(encoding, "float64").batch_body(p.U, p.V, p.W, xs, ys, bptt_truncate=K)
            out.append(("/bptt/batch", body, {"content-type": "application/json"}, expected))
    return out


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


def test_bounded_mixed_load_no_5xx_correct_answers_flat_memory():
    rng = np.random.default_rng(7)
    valid = valid_requests(rng)
    invalid = invalid_requests(rng)
    oversized = b'{"U": [' + b"0.0," * (MAX_BODY // 4) + b"0.0]]}"
    server = LocalServer(env={"BPTT_MAX_BODY_BYTES": str(MAX_BODY), "BPTT_MAX_QUEUE": "1000"})
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
            else:
                data = orjson.loads(r.content)
                got = data["dLdW"]
                if isinstance(got, dict):
                    got = codec.from_base64(got["dtype"], got["shape"], got["data"], "dLdW")
                if not np.array_equal(np.asarray(got), expected):
                    wrong.append(f"{path}: wrong dLdW")
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
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        p, body, headers, _ = valid[0]
        assert httpx.post(f"{server.url}{p}", content=body, headers=headers, timeout=30).status_code == 200
    finally:
        server.stop()
    assert sum(statuses.values()) == REQUESTS
    assert not [s for s in statuses if s >= 500], statuses
    assert not wrong, wrong[:5]
    # Memory: after the first third (warm-up, malloc arenas filling), RSS stays flat.
    settled = [mb for i, mb in rss if i >= REQUESTS // 3]
    assert max(settled) - min(settled) < 40, f"RSS grew from {min(settled):.0f} to {max(settled):.0f} MB: {rss}"
    print(f"\n{REQUESTS} requests in {elapsed:.1f} s, statuses {statuses}, RSS {rss[0][1]:.0f} -> {rss[-1][1]:.0f} MB")
