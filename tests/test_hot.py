"""service.hot: POST /bptt and the V2 infer routes answered without FastAPI's router, the same answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from helpers import make_problem
from test_limits import v2_body

from service.app import create_app
from service.hot import HotRoutes
from service.settings import Settings

JSON = {"content-type": "application/json"}


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests FastAPI's router handed to a route, from now on."""
    paths: list[str] = []
    handle = APIRoute.handle

    async def recorded(self: APIRoute, scope: Any, receive: Any, send: Any) -> None:
        paths.append(scope["path"])
        await handle(self, scope, receive, send)

    monkeypatch.setattr(APIRoute, "handle", recorded)
    return paths


def test_hot_routes_bypass_the_router_and_the_others_do_not(client, routed, rng):
    p = make_problem(rng, H=3, C=4, T=5)
    assert client.post("/bptt", content=json.dumps(p.body()), headers=JSON).status_code == 200
    assert client.post("/v2/models/bptt/infer", content=v2_body(p)).status_code == 200
    assert client.post("/v2/models/bptt/versions/1/infer", content=v2_body(p)).status_code == 200
    assert routed == []
    assert client.post("/bptt/batch", content=b"{", headers=JSON).status_code == 400
    assert client.get("/healthz").status_code == 200
    assert routed == ["/bptt/batch", "/healthz"]


def test_hot_routes_answer_errors_as_the_router_does(client, routed, rng):
    """The app's exception handlers: a 404 for an unknown model, the V2 error body, a 415, a 405 from the router."""
    p = make_problem(rng, H=3, C=4, T=5)
    r = client.post("/v2/models/nope/infer", content=v2_body(p))
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = client.post("/bptt", content=json.dumps(p.body()), headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["errors"][0]["field"] == "Content-Type"
    assert r.headers["x-request-id"]
    assert routed == []
    assert client.get("/bptt").status_code == 405  # not a POST: the router's answer
    assert client.post("/bptt/", content=json.dumps(p.body()), headers=JSON).status_code == 200  # TrailingSlash


def test_hot_routes_are_not_installed_with_tracing():
    """Traced, the request's span is named in FastAPI's router (tests/test_tracing.py)."""
    from opentelemetry.sdk.trace import TracerProvider

    traced = create_app(Settings(tracing=True), tracer_provider=TracerProvider())
    untraced = create_app(Settings())
    assert not any(m.cls is HotRoutes for m in traced.user_middleware)
    assert any(m.cls is HotRoutes for m in untraced.user_middleware)
    with TestClient(traced):
        pass
