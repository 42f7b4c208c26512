"""OpenTelemetry tracing (service/tracing.py): one span per request, its queue wait and phases as
children, probes and metrics untraced, the caller's trace continued; no SDK imported when off."""

from __future__ import annotations

import http.server
import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest
from fastapi.testclient import TestClient
from helpers import make_problem
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service.app import create_app
from service.settings import Settings

PHASES = ["queue", "decode", "engine", "encode"]


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    """The default app, traced into the SDK's in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(Settings(tracing=True), tracer_provider=provider)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, exporter


def trace_of(exporter: InMemorySpanExporter, name: str) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The one request span called ``name``, and its children in order of start."""
    spans = exporter.get_finished_spans()
    (request,) = [s for s in spans if s.name == name]
    children = [s for s in spans if s.parent is not None and s.parent.span_id == request.context.span_id]
    return request, sorted(children, key=lambda s: s.start_time or 0)


def test_a_request_is_one_span_with_its_queue_wait_and_phases_in_order(traced, rng):
    client, exporter = traced
    exporter.clear()
    p = make_problem(rng, H=3, C=4, T=5)
    r = client.post("/bptt", content=json.dumps(p.body()))
    assert r.status_code == 200
    request, children = trace_of(exporter, "POST /bptt")
    assert request.kind == SpanKind.SERVER
    assert request.attributes["http.route"] == "/bptt" and request.attributes["http.response.status_code"] == 200
    assert [s.name for s in children] == PHASES
    for before, after in itertools.pairwise(children):  # one after the other, within the request
        assert before.end_time <= after.start_time
    assert request.start_time <= children[0].start_time and children[-1].end_time <= request.end_time


@pytest.mark.parametrize(
    "inline", [0.0, 0.001], ids=["all in a thread", "parsed in the event loop, computed in a thread"]
)
def test_the_phases_are_the_same_wherever_the_request_computes(inline, rng):
    """The default settings compute this small request in the event loop (the test above); the same
    spans, in the same order, when it is handed to a compute thread, before or after its parse."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(Settings(tracing=True, inline_seconds=inline), tracer_provider=provider)
    p = make_problem(rng, H=3, C=4, T=5)
    with TestClient(app) as client:
        assert client.post("/bptt", content=json.dumps(p.body())).status_code == 200
        assert app.state.pool.inline_runs == 0
    request, children = trace_of(exporter, "POST /bptt")
    assert [s.name for s in children] == PHASES
    for before, after in itertools.pairwise(children):
        assert before.end_time <= after.start_time
    assert request.start_time <= children[0].start_time and children[-1].end_time <= request.end_time


def test_v2_infer_is_named_by_its_route_template(traced, rng):
    client, exporter = traced
    exporter.clear()
    p = make_problem(rng, H=3, C=4, T=5)
    tensors = [("U", p.U, "FP64"), ("V", p.V, "FP64"), ("W", p.W, "FP64"), ("x", p.x, "INT64"), ("y", p.y, "INT64")]
    inputs = [{"name": n, "datatype": d, "shape": list(a.shape), "data": a.ravel().tolist()} for n, a, d in tensors]
    body = json.dumps({"inputs": inputs})
    assert client.post("/v2/models/bptt/infer", content=body).status_code == 200
    _, children = trace_of(exporter, "POST /v2/models/{model_name}/infer")
    assert [s.name for s in children] == PHASES


def test_an_error_is_recorded_on_the_phase_that_raised_it(traced, rng):
    client, exporter = traced
    exporter.clear()
    p = make_problem(rng, H=3, C=4, T=5)
    r = client.post("/bptt", content=json.dumps({k: v for k, v in p.body().items() if k != "y"}))
    assert r.status_code == 422
    request, children = trace_of(exporter, "POST /bptt")
    assert [s.name for s in children] == ["queue", "decode"]  # refused before the engine
    (event,) = children[1].events
    assert event.name == "exception" and event.attributes["bptt.error.type"] == "value_error"
    assert request.attributes["http.response.status_code"] == 422


def test_probes_and_metrics_are_not_traced_and_unknown_paths_do_not_name_spans(traced):
    client, exporter = traced
    exporter.clear()
    for path in ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready", "/v2/models/bptt/ready"):
        assert client.get(path).status_code == 200
    assert exporter.get_finished_spans() == ()
    assert client.get("/no/such/path/4711").status_code == 404
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET"  # the method alone: no span name per path a client makes up


def test_a_callers_traceparent_continues_its_trace(traced, rng):
    client, exporter = traced
    exporter.clear()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    p = make_problem(rng, H=2, C=3, T=2)
    headers = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
    assert client.post("/bptt", content=json.dumps(p.body()), headers=headers).status_code == 200
    request, children = trace_of(exporter, "POST /bptt")
    assert request.context.trace_id == int(trace_id, 16) and request.parent.span_id == int(parent_id, 16)
    assert {s.context.trace_id for s in children} == {int(trace_id, 16)}


class Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: keeps the span names of every export it is sent."""

    names: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        export = ExportTraceServiceRequest()
        export.ParseFromString(self.rfile.read(int(self.headers["content-length"])))
        for resource in export.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
            for scope in resource.scope_spans:
                Collector.names += [f"{service}: {s.name}" for s in scope.spans]
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_bptt_tracing_exports_by_otlp_to_the_endpoint_the_otel_variables_name(monkeypatch, rng):
    receiver = http.server.HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    Collector.names = []
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{receiver.server_port}/v1/traces")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "bptt-test")
    try:
        p = make_problem(rng, H=2, C=3, T=2)
        with TestClient(create_app(Settings(tracing=True))) as client:
            assert client.post("/bptt", content=json.dumps(p.body())).status_code == 200
        # The lifespan's end exported the batch.
        assert sorted(Collector.names) == sorted(f"bptt-test: {n}" for n in ["POST /bptt", *PHASES])
    finally:
        receiver.shutdown()


@pytest.mark.slow  # a server process (or interpreter) of its own
def test_tracing_off_imports_nothing_of_the_sdk():
    code = (
        "import json, sys; from fastapi.testclient import TestClient; from service.app import create_app; "
        "from service.settings import Settings\n"
        "body = {'U': [[0.1]], 'V': [[0.2]], 'W': [[0.3]], 'x': [0], 'y': [0]}\n"
        "with TestClient(create_app(Settings())) as c: assert c.post('/bptt', json=body).status_code == 200\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('opentelemetry'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    imported = json.loads(out.stdout)
    assert "opentelemetry.trace" in imported  # FastAPI imports the API itself, tracing or not
    assert [m for m in imported if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))] == []


def test_tracing_without_the_extra_stops_the_start(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"tracing needs the tracing extra: pip install 'bptt-service\[tracing\]'"):
        Settings(tracing=True)
