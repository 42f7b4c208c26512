"""The drain on SIGTERM: not ready at once, new work accepted for the grace then refused with 503,
the admitted work finished, exit 0 (service/lifecycle.py)."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import LocalServer, make_problem

from service.app import create_app
from service.compute import Pool
from service.errors import Draining
from service.lifecycle import Lifecycle
from service.settings import Settings


def test_lifecycle_refuses_new_work_after_the_grace_and_waits_for_the_admitted():
    """One request computing and one queued when the drain begins, one more within the grace: all three
    finish; after the grace a new one is refused; the drain ends only when the pool is idle."""

    async def main() -> None:
        pool = Pool(threads=1, max_queue=4, timeout=10)
        lifecycle = Lifecycle(pool, grace=0.2, timeout=10)
        release = threading.Event()
        stopped = anyio.Event()
        done: list[int] = []

        async def job(i: int) -> None:
            done.append(await pool.run(lambda: i if release.wait(5) else -i))

        async with lifecycle.running(), anyio.create_task_group() as tasks:
            tasks.start_soon(job, 1)
            tasks.start_soon(job, 2)
            await anyio.sleep(0.05)
            assert pool.admitted == 2  # one computing, one queued
            lifecycle.stop(grace=0.2, then=stopped.set)
            assert lifecycle.draining and not lifecycle.refusing
            tasks.start_soon(job, 3)  # within the grace: admitted
            await anyio.sleep(0.3)
            assert lifecycle.refusing
            with pytest.raises(Draining, match="shutting down"):
                await pool.run(lambda: 0)
            assert not stopped.is_set()  # three requests still admitted
            release.set()
            with anyio.fail_after(5):
                await stopped.wait()
            assert sorted(done) == [1, 2, 3] and lifecycle.stopped

    anyio.run(main)


def test_lifecycle_gives_up_waiting_after_the_deadline():
    async def main() -> None:
        pool = Pool(threads=1, max_queue=0, timeout=10)
        lifecycle = Lifecycle(pool, grace=0, timeout=0.2)
        stopped = anyio.Event()
        async with lifecycle.running(), pool.slot():  # a request that never ends
            lifecycle.stop(grace=0, then=stopped.set)
            with anyio.fail_after(2):
                await stopped.wait()

    anyio.run(main)


def test_draining_app_is_not_ready_but_live_and_refuses_work_with_retry_after(rng):
    p = make_problem(rng, H=2, C=3, T=2)
    with TestClient(create_app(Settings()), raise_server_exceptions=False) as c:
        assert c.get("/readyz").status_code == 200
        c.portal.call(lambda: c.app.state.lifecycle.stop(grace=0, then=lambda: None))
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["detail"].startswith("draining: the server is stopping")
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get("/v2/models/bptt/ready").status_code == 503
        assert c.get("/healthz").status_code == 200 and c.get("/v2/health/live").status_code == 200
        r = c.post("/bptt", content=json.dumps(p.body()))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["errors"][0]["type"] == "draining"
        assert c.post("/v2/models/bptt/infer", json={"inputs": []}).json()["error"].startswith("the server is shutting")


@pytest.mark.slow  # a real server process, a second of grace
def test_sigterm_drains_a_real_server(rng):
    """Against `python -m service`: a request whose body is still arriving when SIGTERM comes is answered,
    readiness turns 503 at once while liveness stays 200, new work is accepted during the grace and refused
    with 503 + Retry-After after it, and the process exits 0 once the admitted request is answered."""
    grace = 1.0
    p = make_problem(rng, H=3, C=4, T=3)
    body = json.dumps(p.body()).encode()
    server = LocalServer(env={"BPTT_DRAIN_GRACE_SECONDS": str(grace)})
    try:
        # Admitted (a queue slot is taken before the body is read), its body half sent.
        upload = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        upload.sendall(
            b"POST /bptt HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        time.sleep(0.2)
        with httpx.Client(base_url=server.url, timeout=5) as http:
            start = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            deadline = start + 5
            while http.get("/readyz").status_code == 200:  # the signal is handled in the event loop
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert http.get("/v2/health/ready").status_code == 503
            assert http.get("/healthz").status_code == 200
            assert http.post("/bptt", content=body).status_code == 200  # within the grace: answered
            while (r := http.post("/bptt", content=body)).status_code == 200:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            refused_after = time.monotonic() - start
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["errors"][0]["type"] == "draining"
        assert grace - 0.1 <= refused_after, refused_after
        assert server.proc.poll() is None  # the upload still holds it
        upload.sendall(body[10:])
        answer = upload.recv(1 << 16)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        upload.close()
        assert server.proc.wait(timeout=10) == 0
    finally:
        server.stop()
