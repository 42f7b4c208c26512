"""service.client against a real uvicorn server on loopback (python -m service)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest
import seed
from helpers import assert_close, make_problem

from service import engine
from service.client import AsyncClient, Client, ServerError


@pytest.mark.parametrize("K", [None, 3])
def test_client_bptt_matches_seed(live_server, rng, K):
    p = make_problem(rng, H=6, C=9, T=14, s0=True)
    with Client(live_server.url) as client:
        g = client.bptt(p.U, p.V, p.W, p.x, p.y, bptt_truncate=K, s0=p.s0)
    ref = seed.bptt(p.U, p.V, p.W, p.x, p.y, 14 if K is None else K, s0=p.s0)
    for got, want in zip((g.dLdU, g.dLdV, g.dLdW), ref, strict=False):
        assert isinstance(got, np.ndarray)
        assert_close(got, want)
    local = engine.bptt(p.U, p.V, p.W, p.x, p.y, bptt_truncate=K, s0=p.s0)
    assert g.loss == local.loss
    np.testing.assert_array_equal(g.final_state, local.final_state)
    np.testing.assert_array_equal(g.dLds0, local.dLds0)


def test_client_accepts_lists_and_views(live_server, rng):
    p = make_problem(rng, H=3, C=5, T=4)
    with Client(live_server.url) as client:
        g = client.bptt(p.U.tolist(), np.asfortranarray(p.V), p.W, list(p.x), p.y[::1])
    assert_close(g.dLdV, seed.bptt(p.U, p.V, p.W, p.x, p.y, 4)[1])


def test_client_error_carries_server_message(live_server, rng):
    p = make_problem(rng, H=4, C=5, T=4)
    with Client(live_server.url) as client, pytest.raises(ServerError) as info:
        client.bptt(p.U, p.V, p.W[:, :3], p.x, p.y)
    assert info.value.status == 422
    assert info.value.detail == "W must be H x H = 4 x 4, got 4 x 3"
    assert info.value.errors[0]["field"] == "W"


def test_async_client_concurrent_requests(live_server, rng):
    problems = [make_problem(rng, H=5, C=7, T=8 + i) for i in range(6)]

    async def run():
        async with AsyncClient(live_server.url) as client:
            assert await client.health()
            return await asyncio.gather(*(client.bptt(p.U, p.V, p.W, p.x, p.y) for p in problems))

    for p, g in zip(problems, asyncio.run(run()), strict=False):
        local = engine.bptt(p.U, p.V, p.W, p.x, p.y)
        np.testing.assert_array_equal(g.dLdW, local.dLdW)


def test_async_client_error(live_server):
    async def run():
        async with AsyncClient(live_server.url) as client:
            await client.bptt(np.ones((2, 3)), np.ones((3, 2)), np.ones((2, 2)), [0, 5], [1, 1])

    with pytest.raises(ServerError, match=r"x\[1\] = 5 is out of range"):
        asyncio.run(run())


def test_server_keeps_serving_after_bad_requests(live_server, rng):
    import httpx

    for body in (b"{", b"[]", b'{"U": "x"}', b"\xff\xfe"):
        r = httpx.post(f"{live_server.url}/bptt", content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500
        assert "Traceback" not in r.text
    with Client(live_server.url) as client:
        assert client.health()


@pytest.mark.parametrize("encoding", ["base64", "json"])
def test_client_encodings_give_identical_gradients(live_server, rng, encoding):
    p = make_problem(rng, H=7, C=11, T=9, s0=True)
    with Client(live_server.url, encoding=encoding) as client:
        g = client.bptt(p.U, p.V, p.W, p.x, p.y, bptt_truncate=2, s0=p.s0)
    local = engine.bptt(p.U, p.V, p.W, p.x, p.y, bptt_truncate=2, s0=p.s0)
    for name in ("dLdU", "dLdV", "dLdW", "dLds0", "final_state"):
        np.testing.assert_array_equal(getattr(g, name), getattr(local, name))


def test_client_float32(live_server, rng):
    p = make_problem(rng, H=7, C=11, T=9)
    with Client(live_server.url, dtype="float32") as client:
        g = client.bptt(p.U, p.V, p.W, p.x, p.y)
    assert g.dLdU.dtype == np.float32
    assert_close(g.dLdU.astype(np.float64), engine.bptt(p.U, p.V, p.W, p.x, p.y).dLdU, rtol=1e-5)


def test_client_batch_equals_local_batch(live_server, rng):
    p = make_problem(rng, H=6, C=10, T=1)
    xs = [rng.integers(0, 10, T) for T in (4, 7, 2)]
    ys = [rng.integers(0, 10, T) for T in (4, 7, 2)]
    s0 = [None, rng.uniform(-1, 1, 6), None]
    with Client(live_server.url) as client:
        g = client.bptt_batch(p.U, p.V, p.W, xs, ys, bptt_truncate=3, s0=s0)
    local = engine.bptt_batch(p.U, p.V, p.W, xs, ys, bptt_truncate=3, s0=s0)
    for name in ("dLdU", "dLdV", "dLdW", "dLds0", "final_state", "losses"):
        np.testing.assert_array_equal(getattr(g, name), getattr(local, name))
    assert g.loss == local.loss


def test_client_rejects_unknown_options():
    with pytest.raises(ValueError, match="encoding must be 'json' or 'base64', got 'hex'"):
        Client(encoding="hex")


def test_client_biases_clip_and_trace(live_server, rng):
    p = make_problem(rng, H=4, C=6, T=7, s0=True)
    b, c = rng.uniform(-1, 1, 4), rng.uniform(-1, 1, 6)
    with Client(live_server.url) as client:
        g = client.bptt(p.U, p.V, p.W, p.x, p.y, s0=p.s0, b=b, c=c, clip=0.05, bptt_truncate=2)
        tr = client.trace(p.U, p.V, p.W, p.x, p.y, s0=p.s0, b=b, c=c, bptt_truncate=2)
    local = engine.bptt(p.U, p.V, p.W, p.x, p.y, s0=p.s0, b=b, c=c, clip=0.05, bptt_truncate=2)
    for name in ("dLdU", "dLdV", "dLdW", "dLdb", "dLdc"):
        np.testing.assert_array_equal(getattr(g, name), getattr(local, name))
    assert g.clipped == local.clipped
    want = engine.trace(p.U, p.V, p.W, p.x, p.y, s0=p.s0, b=b, c=c, bptt_truncate=2)
    np.testing.assert_array_equal(tr.delta_o, want.delta_o)
    for got, exp in zip(tr.deltas, want.deltas, strict=False):
        np.testing.assert_array_equal(got, exp)
    np.testing.assert_array_equal(tr.norms, want.norms)


def test_client_imports_no_server_module():
    """`import service.client` loads neither the web stack nor pydantic: the client installs without them."""
    code = (
        "import sys, service.client; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'fastapi', 'starlette', 'uvicorn', 'pydantic', 'pydantic_settings', 'prometheus_client', 'anyio'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
