"""Optional tracing with OpenTelemetry: a span per request, and child spans for its queue wait and the
phases of its work. Probes and /metrics are not traced.

    POST /bptt        the request (SERVER: FastAPI's own telemetry, named by the route's template)
      queue           waiting for a compute thread (about zero for a request computed in the event loop)
      decode          the body parsed and validated, priced and admitted, its arrays built (a request
                      parsed in the event loop, then handed to a thread, waits within it)
      engine          the forward pass and BPTT (``ops.engine_timer``)
      encode          the answer: its arrays written out, the JSON or binary body

Off unless ``BPTT_TRACING`` is true, which needs the ``tracing`` extra (``pip install
'bptt-service[tracing]'``): the OpenTelemetry SDK and its OTLP exporter over HTTP, configured by
the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``, default ``bptt-service``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and its ``_ARG``, ``OTEL_BSP_*``). A caller's
W3C ``traceparent`` header continues its trace. The request's span is FastAPI's (its native
OpenTelemetry support, given this module's provider); the children are made here.

Off, FastAPI's telemetry is switched off (it imports only the OpenTelemetry API, as it always
does), nothing of the SDK is imported, the pool has no tracer, and ``phase`` finds no work to
trace and returns.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import BpttError

if TYPE_CHECKING:
    from fastapi.telemetry import TelemetryConfig
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = ["UNTRACED", "Work", "otlp_provider", "phase", "shutdown", "telemetry", "tracer", "untraced"]

# The probes and the metrics scraper: requests to these paths get no span.
UNTRACED = re.compile(r"/healthz|/readyz|/metrics|/v2/health/(live|ready)|/v2/models/[^/]+(/versions/[^/]+)?/ready")

_work: contextvars.ContextVar[Work | None] = contextvars.ContextVar("bptt_traced_work", default=None)


class Work:
    """One request's work, traced: the ``queue`` span from now (in the event loop) until ``running``
    begins (in the compute thread), then one span per phase, ``decode`` first."""

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry import context

        self.tracer = tracer
        self.parent: Context = context.get_current()  # the request's span
        self.queue: Span = tracer.start_span("queue", context=self.parent)
        self.phase: Span | None = None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """The work itself, in its compute thread (or the event loop, for a request priced cheaper than the
        hand-off): ``phase`` starts the next span from here. The first block ends the queue span and begins
        ``decode``; a later one (a request parsed in the event loop, computed in a thread) carries on the
        phase it finds open. ``close`` ends the last phase."""
        if self.queue.is_recording():
            self.queue.end()
        token = _work.set(self)
        if self.phase is None:
            self.next("decode")
        try:
            yield
        except BaseException as exc:
            if self.phase is not None:
                self.phase.record_exception(exc, attributes={"bptt.error.type": _error_type(exc)})
                if not isinstance(exc, BpttError) or type(exc) is BpttError:
                    from opentelemetry.trace import Status, StatusCode

                    self.phase.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            _work.reset(token)

    def next(self, name: str) -> None:
        """End the running phase and begin ``name``."""
        if self.phase is not None:
            self.phase.end()
        self.phase = self.tracer.start_span(name, context=self.parent)

    def close(self) -> None:
        """End the last phase; and the queue span if the work never started (its deadline passed, or its
        client left)."""
        if self.queue.is_recording():
            self.queue.set_attribute("bptt.left_the_queue", True)
            self.queue.end()
        if self.phase is not None and self.phase.is_recording():
            self.phase.end()


def phase(name: str) -> None:
    """Begin the phase ``name`` of the request computing in this thread (nothing when it is not traced)."""
    work = _work.get()
    if work is not None:
        work.next(name)


def _error_type(exc: BaseException) -> str:
    return exc.type if isinstance(exc, BpttError) else type(exc).__name__


def untraced(scope: MutableMapping[str, Any]) -> bool:
    """True for the probes and /metrics, which get no span."""
    return UNTRACED.fullmatch(scope.get("path", "")) is not None


def telemetry(provider: TracerProvider | None) -> TelemetryConfig:
    """FastAPI's own OpenTelemetry configuration: a span per request from ``provider``, or none at all."""
    off: TelemetryConfig = {"metrics": False, "logs": False, "auto_configure": False}  # Prometheus has the metrics
    if provider is None:
        return off | {"tracing": False}
    # No operation spans (FastAPI's endpoint span): the queue wait and the phases are the request's children.
    return off | {"tracer_provider": provider, "operation_spans": False, "exclude": untraced}


def tracer(provider: TracerProvider | None) -> Tracer | None:
    """The tracer of the child spans (None when tracing is off)."""
    return None if provider is None else provider.get_tracer("service", __version__)


def otlp_provider() -> TracerProvider:
    """A tracer provider exporting in batches by OTLP over HTTP, configured by the ``OTEL_*`` variables."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({SERVICE_VERSION: __version__})  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "bptt-service"}))
    provider = TracerProvider(resource=resource)  # OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_EXPORTER_OTLP_*, OTEL_BSP_*
    return provider


def shutdown(provider: TracerProvider | None) -> None:
    """Export the spans still buffered, at the end of the app's lifespan (FastAPI leaves that to us)."""
    stop = getattr(provider, "shutdown", None)
    if stop is not None:
        stop()
