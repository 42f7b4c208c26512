"""Operations: Prometheus metrics, one access-log line per request, and the readiness self-check.

Metrics (prometheus-client), served at ``GET /metrics``:

    bptt_http_requests_total{method, route, status}      counter
    bptt_http_request_duration_seconds{method, route}    histogram, whole request
    bptt_http_request_size_bytes{route}                   histogram, body bytes read
    bptt_http_requests_in_flight                          gauge
    bptt_engine_seconds{function}                         histogram, forward + BPTT only
    bptt_engine_tokens_total{function}                    counter, predicted tokens
    bptt_rate_limited_total{key}                          counter, requests refused by a key's quota
    bptt_engine_kernel{kernel}                            gauge, 1 for the loops in use: numba or numpy

``route`` is the route's template (``/v2/models/{model_name}/infer``), so the
label set stays small whatever paths clients send. With several worker
processes, set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory (the
prometheus-client multiprocess mode) so that every worker's numbers are summed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import Iterator

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import checks, engine, kernel, tracing
from .handlers import request_id

__all__ = [
    "CONTENT_TYPE_LATEST",
    "RATE_LIMITED",
    "RequestObserver",
    "configure_logging",
    "engine_timer",
    "metrics_payload",
    "self_check",
]

access_log = logging.getLogger("service.access")

REQUESTS = Counter("bptt_http_requests_total", "HTTP requests answered.", ["method", "route", "status"])
DURATION = Histogram(
    "bptt_http_request_duration_seconds",
    "Time from the request's first byte read to the last byte of the answer sent.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
REQUEST_BYTES = Histogram(
    "bptt_http_request_size_bytes",
    "Request body size.",
    ["route"],
    buckets=(100, 1e3, 1e4, 1e5, 1e6, 4e6, 1.6e7, 6.4e7, 2.56e8),
)
IN_FLIGHT = Gauge("bptt_http_requests_in_flight", "Requests being answered.", multiprocess_mode="livesum")
ENGINE_SECONDS = Histogram(
    "bptt_engine_seconds",
    "Time in the engine (forward pass and BPTT), without parsing or serialising.",
    ["function"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
ENGINE_TOKENS = Counter("bptt_engine_tokens_total", "Predicted tokens whose gradients were computed.", ["function"])
KERNEL = Gauge(
    "bptt_engine_kernel",
    "1 for the engine's per-step loops in use (BPTT_KERNEL): numba (compiled where faster) or numpy.",
    ["kernel"],
    multiprocess_mode="max",
)
# ``key`` is the key's id (service.quota.key_id), never the key: one label value per configured key.
RATE_LIMITED = Counter("bptt_rate_limited_total", "Requests refused (429) by their API key's rate limit.", ["key"])


@contextlib.contextmanager
def engine_timer(function: str) -> Iterator[dict[str, int]]:
    """Time an engine call; set ``tokens`` in the yielded dict to count them. A traced request's
    ``engine`` span is this call, and its ``encode`` span begins after it."""
    counts = {"tokens": 0}
    tracing.phase("engine")
    start = time.perf_counter()
    yield counts
    seconds, tokens = _engine_series(function)
    seconds.observe(time.perf_counter() - start)
    tokens.inc(counts["tokens"])
    tracing.phase("encode")


@functools.lru_cache(maxsize=64)
def _engine_series(function: str) -> tuple[Histogram, Counter]:
    """The engine's two series of ``function`` (a handful of names), looked up once."""
    return ENGINE_SECONDS.labels(function), ENGINE_TOKENS.labels(function)


def metrics_payload() -> bytes:
    """The Prometheus text format of every metric (summed over workers in multiprocess mode)."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


class RequestObserver:
    """ASGI middleware: metrics and one access-log line for every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        size = 0
        status = 500  # if the app fails before answering

        async def counting_receive() -> Message:
            nonlocal size
            message = await receive()
            size += len(message.get("body", b""))
            return message

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        IN_FLIGHT.inc()
        try:
            await self.app(scope, counting_receive, status_send)
        finally:
            IN_FLIGHT.dec()
            elapsed = time.perf_counter() - start
            route_obj = scope.get("route")
            route = getattr(route_obj, "path", None) or "unmatched"
            method = _printable(scope["method"])
            path = _printable(scope["path"])
            REQUESTS.labels(method, route, str(status)).inc()
            DURATION.labels(method, route).observe(elapsed)
            REQUEST_BYTES.labels(route).observe(size)
            rid = request_id(scope) or "-"
            access_log.info(
                "%s %s %d %.1fms %dB id=%s",
                method,
                path,
                status,
                elapsed * 1e3,
                size,
                rid,
                extra={
                    "request_id": rid,
                    "method": method,
                    "path": path,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1e3, 3),
                    "request_bytes": size,
                },
            )


def _printable(text: str, limit: int = 300) -> str:
    """Request-controlled text for a log line: control characters escaped (a decoded %0a cannot
    forge a line), and cut to ``limit`` characters."""
    escaped = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


def configure_logging(level: str, fmt: str) -> None:
    """The service's loggers ("service", "service.access") to stderr, as text or JSON lines."""
    logger = logging.getLogger("service")
    logger.setLevel(level.upper())
    logger.propagate = False
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level"})
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.handlers[:] = [handler]


def self_check() -> str | None:
    """Compile the engine's loops (service.kernel, when in use) and check the engine against
    central differences on a tiny model; None if it passes.

    Run once at start-up: ``/readyz`` answers 200 only after it passed.
    """
    try:
        return _self_check()
    except Exception as exc:  # not ready, and say why; the process stays up for the probes
        logging.getLogger("service").exception("engine self-check raised")
        return f"engine self-check raised {type(exc).__name__}: {exc}"


def _self_check() -> str | None:
    name = engine.kernel_in_use()
    start = time.perf_counter()
    if name == "numba":
        kernel.warm_up()  # compile now: no request pays for it
    logging.getLogger("service").info(
        "engine loops: %s%s",
        name,
        f" (compiled in {time.perf_counter() - start:.1f} s)" if name == "numba" else "",
    )
    for loops in ("numba", "numpy"):
        KERNEL.labels(loops).set(loops == name)
    rng = np.random.default_rng(0)
    H, C, T = 3, 4, 6
    arrays = {
        "U": rng.uniform(-1, 1, (H, C)),
        "V": rng.uniform(-1, 1, (C, H)),
        "W": rng.uniform(-1, 1, (H, H)),
        "x": rng.integers(0, C, T),
        "y": rng.integers(0, C, T),
    }
    report = checks.gradient_check(arrays, tolerance=1e-6, samples=H * C)  # every entry
    failed = {name: r["max_relative_error"] for name, r in report.items() if not r["passed"]}
    if failed:
        worst = ", ".join(f"dLd{name} by {err}" for name, err in failed.items())
        return f"engine self-check failed: gradients differ from central differences ({worst}, relative)"
    # One short sequence is computed in one compiled call (kernel.bptt_one) where the kernel runs; batches
    # and longer sequences by the per-step loops: the sequence twice in a batch must give twice its gradients.
    U, V, W, x, y = (arrays[k] for k in ("U", "V", "W", "x", "y"))
    one, two = engine.bptt(U, V, W, x, y), engine.bptt_batch(U, V, W, [x, x], [y, y])
    for name in ("dLdU", "dLdV", "dLdW"):
        want = 2 * getattr(one, name)
        err = float(np.abs(getattr(two, name) - want).max() / np.abs(want).max())
        if not err <= 1e-10:
            return f"engine self-check failed: a batch's {name} differs from its sequences' by {err:.3g} (relative)"
    return None
