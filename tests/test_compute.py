"""service.compute: requests priced cheaper than the hand-off compute in the event loop (BPTT_INLINE_SECONDS),
still admitted, counted and bounded; the others in a compute thread."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio.to_thread
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import make_problem
from test_limits import v2_body
from test_ops import metrics

from service import costs, engine
from service.app import create_app
from service.settings import Settings

JSON = {"content-type": "application/json"}


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every hand-off to a compute thread from now on, recorded (the app has started: its self-check ran)."""
    calls: list[Any] = []
    run_sync = anyio.to_thread.run_sync

    async def recorded(fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(fn)
        return await run_sync(fn, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", recorded)
    yield calls
    monkeypatch.undo()  # before the app's shutdown, which hands its own work to a thread


@pytest.fixture
def app_client(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    """An app with the settings the test is parametrized with (the defaults otherwise)."""
    settings = Settings(**getattr(request, "param", {}))
    with TestClient(create_app(settings)) as c:
        yield c


def test_inline_request_is_computed_in_the_event_loop_and_counted_in_metrics(app_client, threads, rng):
    p = make_problem(rng, H=3, C=4, T=5)
    pool = app_client.app.state.pool
    series = {
        "ok": ("bptt_http_requests_total", {"method": "POST", "route": "/bptt", "status": "200"}),
        "engine": ("bptt_engine_seconds_count", {"function": "bptt"}),
    }

    def read() -> dict[str, float]:
        return metrics(app_client, series)

    before, inline = read(), pool.inline_runs
    r = app_client.post("/bptt", content=json.dumps(p.body()), headers=JSON)
    assert r.status_code == 200, r.text
    assert np.allclose(r.json()["dLdW"], engine.bptt(p.U, p.V, p.W, p.x, p.y).dLdW, rtol=0, atol=1e-12)
    after = read()
    assert pool.inline_runs == inline + 1
    assert threads == []  # no hand-off
    assert {k: after[k] - before[k] for k in series} == {"ok": 1, "engine": 1}
    assert pool.admitted == 0  # its slot was taken and given back


def test_inline_v2_request_is_computed_in_the_event_loop(app_client, threads, rng):
    p = make_problem(rng, H=3, C=4, T=5)
    inline = app_client.app.state.pool.inline_runs
    r = app_client.post("/v2/models/bptt/infer", content=v2_body(p), headers=JSON)
    assert r.status_code == 200, r.text
    assert app_client.app.state.pool.inline_runs == inline + 1
    assert threads == []


def test_inline_request_is_still_bounded_by_the_queue(app_client, threads, rng):
    """At capacity a request priced for the event loop is refused like any other (503), before its body is read."""
    pool = app_client.app.state.pool
    p = make_problem(rng, H=3, C=4, T=5)
    pool.admitted = pool.threads + pool.max_queue  # every slot taken
    try:
        r = app_client.post("/bptt", content=json.dumps(p.body()), headers=JSON)
    finally:
        pool.admitted = 0
    assert r.status_code == 503
    assert r.json()["detail"].startswith("the server is at capacity: 2 requests computing")
    assert app_client.post("/bptt", content=json.dumps(p.body()), headers=JSON).status_code == 200


def test_request_priced_above_inline_seconds_computes_in_a_thread(app_client, threads, rng):
    p = make_problem(rng, H=60, C=400, T=40)
    settings = app_client.app.state.settings
    estimate = costs.bptt(lengths=[40], H=60, C=400, K=None)
    assert estimate.seconds > settings.inline_seconds  # the premise: priced above the threshold
    inline = app_client.app.state.pool.inline_runs
    r = app_client.post("/bptt", content=json.dumps(p.body()), headers=JSON)
    assert r.status_code == 200, r.text
    assert app_client.app.state.pool.inline_runs == inline
    assert len(threads) == 1  # parsed and priced in the event loop, computed in a thread


@pytest.mark.parametrize("app_client", [{"inline_seconds": 0}], indirect=True)
def test_inline_seconds_zero_computes_every_request_in_a_thread(app_client, threads, rng):
    p = make_problem(rng, H=3, C=4, T=5)
    r = app_client.post("/bptt", content=json.dumps(p.body()), headers=JSON)
    assert r.status_code == 200, r.text
    assert app_client.app.state.pool.inline_runs == 0
    assert len(threads) == 1


def test_inline_errors_are_the_same_answers(app_client, threads, rng):
    """A 422 and a 413 found in the event loop read as they do from a thread."""
    p = make_problem(rng, H=3, C=4, T=5)
    body = p.body()
    body["x"] = [0, 1, 99, 2, 3]
    r = app_client.post("/bptt", content=json.dumps(body), headers=JSON)
    assert r.status_code in (400, 422), r.text
    assert r.json()["errors"][0]["field"].startswith("x")
    assert app_client.post("/bptt", content=b"{", headers=JSON).status_code == 400
    assert threads == []
