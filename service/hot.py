"""The hot routes served without FastAPI's router: ``POST /bptt`` and the V2 infer routes.

At C = 65, H = 32, T = 25 a request computes in about 0.2 ms; FastAPI's routing, its
request-response wrapper and dependency solving, which these routes do not use (they read
their raw body themselves), cost about a tenth of the request's time on top
(docs/performance.md). ``HotRoutes`` sits inside every middleware of the app (request id,
metrics, keys, quotas, body limits) and calls the same route functions with the same
``Request``, so the answer, the errors (the app's own exception handlers), the admission
and the OpenAPI document are the routes'; every other request goes on to FastAPI.

Not installed with tracing on: FastAPI's telemetry names the request's span in its router.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["HOT", "HotRoutes"]

# The routes served here, by name (the route function's): the ones a client calls in a loop.
HOT = ("post_bptt", "post_v2_infer", "post_v2_version_infer")


class HotRoutes:
    """ASGI: ``POST`` to a hot route is answered by its route function directly; the rest goes to ``app``.

    ``routes`` are the routers' routes (those named in ``HOT`` are served); the routers are included
    without a prefix or dependencies, which these calls would skip.
    """

    def __init__(self, app: ASGIApp, *, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        hot = [r for r in routes if isinstance(r, APIRoute) and r.name in HOT and "POST" in (r.methods or ())]
        if {r.name for r in hot} != set(HOT):
            raise RuntimeError(f"the hot routes {sorted(set(HOT) - {r.name for r in hot})} are not in the routers")
        self.routes = [(r.path_regex, r) for r in hot]
        self.handlers: dict[Any, Callable[..., Awaitable[Response]]] | None = None  # the app's, on first use

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self.handlers is None:  # the app's exception handlers; its 500 handler stays outermost
            registered = scope["app"].exception_handlers.items()
            self.handlers = {k: v for k, v in registered if k not in (500, Exception)}
        found = next(((m, r) for p, r in self.routes if (m := p.match(scope["path"])) is not None), None)
        if found is None:
            await self.app(scope, receive, send)
            return
        match, route = found
        params = match.groupdict()
        scope["route"] = route  # the metrics' label and the access log's route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = params
        request = Request(scope, receive)
        try:
            response = await route.endpoint(request, **params)
        except Exception as exc:
            handlers = self.handlers
            handler = next((handlers[c] for c in type(exc).__mro__ if c in handlers), None)
            if handler is None:
                raise  # the app's 500 handler, outside every middleware
            response = await handler(request, exc)
        await response(scope, receive, send)
