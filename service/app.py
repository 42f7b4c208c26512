"""The application factory: settings, middleware, error handlers, routers. Nothing happens at import.

    uvicorn --factory service.app:create_app      (what ``python -m service`` runs)

Data flows one way: request bytes -> schemas (validate) -> admission (limits)
-> inputs/codec (decode) -> engine (compute) -> codec (encode) -> response.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from . import __version__, engine, handlers, openapi, ops, rest, runtime, tracing
from .compute import Pool
from .lifecycle import Lifecycle
from .middleware import BearerAuth, Bodies, BodyLimit, GzipRequest, RateLimit, RequestId, TrailingSlash
from .openapi import ERROR_RESPONSES
from .quota import Quotas
from .settings import Settings
from .v2 import routes as v2_routes

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = ["create_app"]

log = logging.getLogger("service")

DESCRIPTION = """\
Loss and backpropagation-through-time (BPTT) gradients of a vanilla RNN language model:

    s_t  = tanh(U[:, x_t] + W s_{t-1})      s_{-1} = s0 (zeros unless given)
    o_t  = softmax(V s_t)
    loss = sum over t of -ln o_t[y_t]

U is H x C, V is C x H, W is H x H; x and y are T token ids in [0, C).
Gradients are exact (full BPTT) unless `bptt_truncate` asks for the truncated
loop of Denny Britz's `RNNNumpy.bptt`. The derivation of every gradient, and what
the tutorial's `delta_t` is, is in `docs/derivation.md` of the repository; the page
`GET /explain` draws `delta_t` for a model of your choice. Every error answer has the body
`{"detail": "...", "errors": [{"field", "message", "type"}]}`.
"""


def create_app(settings: Settings | None = None, *, tracer_provider: TracerProvider | None = None) -> FastAPI:
    """The application, configured by ``settings`` (read from the environment when omitted).

    Building it also applies the process-wide choices of the settings: the malloc
    tuning (``BPTT_TUNE_MALLOC``), the BLAS threads (``BPTT_BLAS_THREADS``), the engine's loops
    (``BPTT_KERNEL``) and the log format.
    With ``BPTT_TRACING``, spans go to ``tracer_provider`` (by default one exporting by OTLP,
    configured by the ``OTEL_*`` variables; service/tracing.py).
    """
    settings = settings or Settings()
    provider = (tracer_provider or tracing.otlp_provider()) if settings.tracing else None
    if settings.tune_malloc:
        runtime.tune_malloc()
    runtime.limit_blas(settings.blas_threads)
    engine.use_kernel(settings.kernel)  # compiled in the self-check, before readiness
    ops.configure_logging(settings.log_level, settings.log_format)
    # FastAPIOffline serves Swagger UI and ReDoc from files in its package: /docs
    # works in clusters without internet (FastAPI's default loads them from a CDN).
    app = FastAPIOffline(
        lifespan=_lifespan,
        title="bptt-service",
        version=__version__,
        description=DESCRIPTION,
        responses={500: ERROR_RESPONSES[500]},
        redirect_slashes=False,  # TrailingSlash serves /bptt/ as /bptt instead of a 307
        telemetry=tracing.telemetry(provider),  # FastAPI's own OpenTelemetry: the request's span, or off
    )
    app.state.settings = settings
    app.state.ready = False
    app.state.not_ready_reason = "starting: the engine self-check has not run yet"
    app.state.pool = Pool(threads=settings.threads, max_queue=settings.max_queue, timeout=settings.request_timeout)
    app.state.pool.tracer = tracing.tracer(provider)  # the queue wait and the phases, as the request's children
    app.state.tracer_provider = provider
    app.state.lifecycle = Lifecycle(
        app.state.pool, grace=settings.drain_grace_seconds, timeout=settings.request_timeout
    )
    app.state.bodies = Bodies(settings.max_bytes_in_flight)  # HTTP bodies and gRPC messages (v2/servicer.py)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, bodies=app.state.bodies)
    app.add_middleware(GzipRequest, max_bytes=settings.max_body_bytes)  # outside BodyLimit: it counts the inflated
    app.state.quotas = None
    if settings.rate_limit_per_key is not None:  # inside the key check: it counts by the key's id
        app.state.quotas = Quotas(rate=settings.rate_limit_per_key, burst=settings.rate_limit_burst)
        app.add_middleware(RateLimit, quotas=app.state.quotas)
    if settings.api_keys:
        app.add_middleware(BearerAuth, keys=settings.api_keys)
    if settings.cors_allowed:  # outside the key check: a browser's preflight carries no key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allowed,
            allow_methods=["GET", "POST"],
            allow_headers=[
                "authorization",
                "content-type",
                "content-encoding",
                "x-request-id",
                "inference-header-content-length",
            ],
            expose_headers=["x-request-id", "retry-after", "inference-header-content-length"],
            max_age=600,
        )
    app.add_middleware(TrailingSlash)
    app.add_middleware(ops.RequestObserver)  # it also counts and logs 401s
    app.add_middleware(RequestId)  # outermost: every answer and log line carries the request's id
    app.mount("/static", StaticFiles(directory=rest.STATIC), name="static")
    app.include_router(rest.router)
    app.include_router(v2_routes.router)
    handlers.install(app)
    openapi.install(app)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    problem = await anyio.to_thread.run_sync(ops.self_check)
    app.state.ready = problem is None
    app.state.not_ready_reason = problem
    if problem:
        log.error(problem)
    settings: Settings = app.state.settings
    async with app.state.lifecycle.running():  # SIGTERM drains (service/lifecycle.py)
        if settings.grpc_port is None:
            yield
        else:
            # Imported only when served: the gRPC stack stays out of processes that do not serve it.
            from .v2 import servicer

            grpc_server = await servicer.start(app)
            try:
                yield
            finally:
                # The drain has waited for the pool; calls still in flight end within their deadlines.
                await grpc_server.stop(grace=settings.request_timeout)
    await anyio.to_thread.run_sync(tracing.shutdown, app.state.tracer_provider)  # the spans still buffered
