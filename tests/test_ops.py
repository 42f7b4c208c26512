"""service.ops and the operations endpoints: readiness, metrics, access logs, offline docs, stopping."""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import LocalServer, make_problem

import service
from service import engine, kernel, ops
from service.app import create_app
from service.client import Wire
from service.settings import Settings


def test_readyz_after_self_check(client):
    assert client.get("/readyz").json() == {"status": "ready", "version": service.__version__}
    assert client.get("/v2/health/ready").status_code == 200


def test_readyz_is_503_until_started():
    app = create_app(Settings())
    plain = TestClient(app)  # no `with`: the lifespan (and the self-check) has not run
    r = plain.get("/readyz")
    assert r.status_code == 503
    assert r.json()["detail"] == "starting: the engine self-check has not run yet"
    assert plain.get("/healthz").status_code == 200  # alive all the same


def test_readyz_reports_a_failed_self_check(monkeypatch):
    monkeypatch.setattr(ops, "self_check", lambda: "engine self-check failed: dLdW differs")
    with TestClient(create_app(Settings())) as c:
        r = c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["detail"] == "engine self-check failed: dLdW differs"
        assert c.get("/v2/models/bptt/ready").status_code == 503


def test_self_check_passes():
    assert ops.self_check() is None


def metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}}") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{want}}} not in /metrics")


def metrics(client: TestClient, series: dict[str, tuple[str, dict[str, str]]]) -> dict[str, float]:
    """The value of each series (its name and labels) in the app's /metrics now; 0 for one not created
    yet (no such request so far in this process)."""
    text = client.get("/metrics").text
    out = {}
    for key, (name, labels) in series.items():
        try:
            out[key] = metric(text, name, **labels)
        except AssertionError:
            out[key] = 0.0
    return out


def test_metrics_count_requests_sizes_and_engine_time(client, rng):
    """Exact increments of each metric around two requests: independent of what ran before in the process."""
    p = make_problem(rng, H=3, C=4, T=5)
    series = {
        "ok": ("bptt_http_requests_total", {"method": "POST", "route": "/bptt", "status": "200"}),
        "bad": ("bptt_http_requests_total", {"method": "POST", "route": "/bptt", "status": "400"}),
        "timed": ("bptt_http_request_duration_seconds_count", {"method": "POST", "route": "/bptt"}),
        "bytes": ("bptt_http_request_size_bytes_sum", {"route": "/bptt"}),
        "engine": ("bptt_engine_seconds_count", {"function": "bptt"}),
        "tokens": ("bptt_engine_tokens_total", {"function": "bptt"}),
    }

    def read() -> dict[str, float]:
        return metrics(client, series)

    before = read()
    body = json.dumps(p.body()).encode()
    assert client.post("/bptt", content=body).status_code == 200
    assert client.post("/bptt", content=b"{").status_code == 400
    after = read()
    delta = {k: after[k] - before[k] for k in series}
    assert delta == {"ok": 1, "bad": 1, "timed": 2, "bytes": len(body) + 1, "engine": 1, "tokens": 5}
    # Unknown paths share one label instead of one per path.
    client.get("/no/such/path/123")
    assert 'route="unmatched"' in client.get("/metrics").text


def test_access_log_line_per_request_json(caplog, capsys, rng):
    app = create_app(Settings(log_format="json"))
    logging.getLogger("service").propagate = True  # let caplog see the records too
    try:
        with TestClient(app) as c, caplog.at_level("INFO", logger="service.access"):
            c.post("/bptt", content=json.dumps(make_problem(rng, H=2, C=3, T=2).body()))
        records = [r for r in caplog.records if r.name == "service.access" and r.path == "/bptt"]
        assert len(records) == 1
        r = records[0]
        assert (r.method, r.status, r.route) == ("POST", 200, "/bptt")
        assert r.duration_ms > 0 and r.request_bytes > 0
        line = next(ln for ln in capsys.readouterr().err.splitlines() if '"path": "/bptt"' in ln)
        assert json.loads(line)["status"] == 200  # the handler writes JSON lines
    finally:
        logging.getLogger("service").propagate = False


def test_docs_work_offline(client):
    html = client.get("/docs").text
    assert "SwaggerUIBundle" in html
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls, html
    for url in urls:
        assert url.startswith("/"), f"/docs loads {url} from outside the service"
        assert client.get(url).status_code == 200, url
    assert "http://" not in html and "https://" not in html
    redoc = client.get("/redoc").text
    assert "https://" not in redoc and "http://" not in redoc


@pytest.mark.slow  # a server process started and stopped by a signal: the system tests
def test_sigterm_lets_in_flight_request_finish():
    """A request in flight when SIGTERM arrives is answered; then the process exits 0."""
    server = LocalServer()
    rng = np.random.default_rng(1)
    p = make_problem(rng, H=100, C=20000, T=300)  # long enough to still be running at the signal
    body = Wire("base64", "float64").bptt_body(p.U, p.V, p.W, p.x, p.y)
    answer: dict = {}

    def post():
        try:
            answer["r"] = httpx.post(
                f"{server.url}/bptt", content=body, headers={"content-type": "application/json"}, timeout=120
            )
        except Exception as exc:  # reported by the assertion below
            answer["error"] = exc

    t = threading.Thread(target=post)
    t.start()
    deadline = time.monotonic() + 30
    while metric(httpx.get(f"{server.url}/metrics").text, "bptt_http_requests_in_flight") < 2:  # /metrics is 1
        assert time.monotonic() < deadline and t.is_alive(), answer
        time.sleep(0.01)
    server.proc.send_signal(signal.SIGTERM)
    t.join(timeout=120)
    assert server.proc.wait(timeout=60) == 0
    assert "error" not in answer, repr(answer.get("error"))
    assert answer["r"].status_code == 200
    assert answer["r"].json()["tokens"] == 300


def _broken_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    """tanh' off by 1% in the backward loops, numpy's and the compiled one, whichever runs."""
    numpy_loop, compiled_loop = engine._backward_full, kernel.backward_full
    monkeypatch.setattr(engine, "_backward_full", lambda W, dLds, dtanh: numpy_loop(W, dLds, dtanh * 1.01))
    monkeypatch.setattr(kernel, "backward_full", lambda W, dLds, dtanh: compiled_loop(W, dLds, dtanh * 1.01))


def _broken_fused(monkeypatch: pytest.MonkeyPatch) -> None:
    """dLdW off by 1% in the one-call path of a short sequence (kernel.bptt_one)."""
    real = kernel.bptt_one
    monkeypatch.setattr(kernel, "bptt_one", lambda *a: real(*a)._replace(dLdW=real(*a).dLdW * 1.01))


@pytest.mark.parametrize(
    ("breaks", "detail"),
    [
        (_broken_loops, "engine self-check failed: a batch's dLdU differs from its sequences' by"),
        (_broken_fused, "engine self-check failed: gradients differ from central differences (dLdW by"),
    ],
)
def test_readyz_is_503_when_the_engine_is_broken(monkeypatch, breaks, detail):
    """A broken engine injected, not a stubbed check: the self-check finds it in the loops that serve
    batches and long sequences, and in the one call that serves a short sequence (with the numba kernel,
    which the test extra installs; without it the loops serve the self-check's sequence too, and the
    central differences find them first)."""
    breaks(monkeypatch)
    if engine.kernel_in_use() != "numba":
        assert breaks is _broken_loops, "bptt_one does not run without the numba kernel: nothing to break"
        detail = "engine self-check failed: gradients differ from central differences"
    with TestClient(create_app(Settings()), raise_server_exceptions=False) as c:
        r = c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["detail"].startswith(detail), r.json()["detail"]
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get("/healthz").status_code == 200  # alive, not ready


def test_request_id_is_echoed_in_answers_errors_and_the_log(client, rng):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    access = logging.getLogger("service.access")
    access.addHandler(handler)
    try:
        p = make_problem(rng, H=2, C=3, T=2)
        ok = client.post("/bptt", content=json.dumps(p.body()), headers={"x-request-id": "trace-42"})
        bad = client.post("/bptt", content=b"{", headers={"x-request-id": "trace-43"})
        made = client.get("/nope")
        forged = client.get("/healthz", headers={"x-request-id": "a b\tc"})
    finally:
        access.removeHandler(handler)
    assert ok.headers["x-request-id"] == "trace-42"
    assert bad.headers["x-request-id"] == "trace-43" and bad.json()["request_id"] == "trace-43"
    generated = made.headers["x-request-id"]
    assert len(generated) == 32 and made.json()["request_id"] == generated
    assert forged.headers["x-request-id"] != "a b\tc"  # not printable as one token: replaced
    ids = [r.request_id for r in records]
    assert "trace-42" in ids and "trace-43" in ids and generated in ids
    assert any(r.getMessage().endswith("id=trace-42") for r in records)


def test_v2_errors_carry_the_request_id(client):
    r = client.post("/v2/models/other/infer", json={"inputs": []}, headers={"x-request-id": "v2-1"})
    assert r.status_code == 404
    assert r.json()["request_id"] == "v2-1" and r.json()["error"].startswith("unknown model")
