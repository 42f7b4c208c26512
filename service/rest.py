"""The REST routes: parse -> admit -> compute -> encode, and the probes.

Request bodies are parsed from the raw bytes by pydantic (``model_validate_json``)
inside a compute thread, not by FastAPI in the event loop: a 30 MB body of
weights then neither blocks other requests nor passes through Python's json.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from . import __version__, admission, checks, engine, inputs, ops
from .codec import Array, Encoding, dumps, require_finite, to_wire
from .errors import BodyTimeout, NotReady, UnsupportedMediaType
from .handlers import parse
from .openapi import ERROR_RESPONSES, json_body
from .schemas import (
    BpttBatchRequest,
    BpttBatchResponse,
    BpttRequest,
    BpttResponse,
    CompareRequest,
    CompareResponse,
    ErrorResponse,
    GradientCheckRequest,
    GradientCheckResponse,
    HealthResponse,
    IndexResponse,
)
from .settings import Settings

__all__ = ["STATIC", "disconnected", "read_body", "readiness", "router", "run_json"]

STATIC = pathlib.Path(__file__).parent / "static"

Answer = Callable[[bytes, Settings], dict[str, Any]]

router = APIRouter()


@router.post(
    "/bptt",
    response_model=BpttResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=json_body(BpttRequest),
    summary="Loss and BPTT gradients of one sequence",
)
async def post_bptt(request: Request) -> Response:
    """Run the RNN over `x`, score it against `y`, and return the loss with dL/dU, dL/dV, dL/dW.

    Any of `U`, `V`, `W`, `s0` may be a base64 tensor object instead of nested
    lists; `encoding` chooses the form of the answer's arrays.
    """
    return await run_json(request, bptt_answer)


@router.post(
    "/bptt/batch",
    response_model=BpttBatchResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=json_body(BpttBatchRequest),
    summary="Summed loss and BPTT gradients of several sequences",
)
async def post_bptt_batch(request: Request) -> Response:
    """The weights once and B sequences of any lengths, computed together: the losses,
    and the gradients of their sum (equal to the sum of `POST /bptt` over the sequences)."""
    return await run_json(request, batch_answer)


@router.post(
    "/gradient-check",
    response_model=GradientCheckResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=json_body(GradientCheckRequest),
    summary="Check the engine's gradients against central differences",
    tags=["learning"],
)
async def post_gradient_check(request: Request) -> Response:
    """Compare BPTT's gradients with (f(p + h) - f(p - h)) / 2h on a sample of entries of each
    parameter, and report the largest relative error with a formula that cannot pass 0/0."""
    return await run_json(request, check_answer)


@router.post(
    "/bptt/compare",
    response_model=CompareResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=json_body(CompareRequest),
    summary="Compare your own BPTT gradients with the engine's",
    tags=["learning"],
)
async def post_bptt_compare(request: Request) -> Response:
    """Submit your dLdU, dLdV, dLdW with the inputs: the answer gives the errors, the worst
    entries, and which classic mistake your gradients match, when one does."""
    return await run_json(request, compare_answer)


@router.get(
    "/explain",
    response_class=FileResponse,
    summary="A page that draws delta_t",
    tags=["learning"],
    responses={
        200: {"content": {"text/html": {}}, "description": "The page (HTML, with its script and style under /static)."}
    },
)
async def get_explain() -> FileResponse:
    """Pick sizes and a seed (or paste weights): the page shows the loss, a heatmap of the delta
    norms over (output t, step k) and the per-lag curve, from `POST /bptt` with `trace`."""
    return FileResponse(STATIC / "explain.html", media_type="text/html")


@router.get("/", response_model=IndexResponse, summary="Where to start", tags=["operations"])
async def get_index() -> dict[str, str]:
    """What this service is, and where to go next: the API reference and the page for learners."""
    return {
        "service": "bptt-service",
        "version": __version__,
        "docs": "/docs",
        "explain": "/explain",
        "openapi": "/openapi.json",
    }


@router.get("/healthz", response_model=HealthResponse, summary="Liveness", tags=["operations"])
async def get_healthz() -> dict[str, str]:
    """Answer while the process is up (no computation): the liveness probe."""
    return {"status": "ok", "version": __version__}


@router.get(
    "/readyz",
    response_model=HealthResponse,
    responses={503: {"model": ErrorResponse, "description": "Not ready: starting, or the self-check failed."}},
    summary="Readiness",
    tags=["operations"],
)
async def get_readyz(request: Request) -> dict[str, str]:
    """200 once the app has started and the engine's self-check (against central
    differences) passed: the readiness probe."""
    readiness(request)
    return {"status": "ready", "version": __version__}


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    tags=["operations"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def get_metrics() -> Response:
    """Request counts and latency by route and status, request sizes, engine time (Prometheus text format)."""
    return Response(ops.metrics_payload(), media_type=ops.CONTENT_TYPE_LATEST)


def readiness(request: Request) -> None:
    """Raise ``NotReady`` (503, with the reason) unless the app started and its self-check passed."""
    state = request.app.state
    if not state.ready:
        raise NotReady(state.not_ready_reason)


async def run_json(request: Request, answer: Answer) -> Response:
    """Admit (a queue slot before the body is read), read the JSON body within its timeout, then
    price the parse, parse, compute and serialise in a compute thread within the deadline."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaType(
            f"the body must be sent as Content-Type: application/json, got {ctype!r}", field="Content-Type"
        )
    settings: Settings = request.app.state.settings

    def work(body: bytes) -> bytes:
        admission.check_json_parse(settings, body)
        content = answer(body, settings)
        require_finite(content)
        return dumps(content)

    async with request.app.state.pool.slot() as slot:
        body = await read_body(request, settings)
        content = await slot.run(lambda: work(body), disconnected=lambda: disconnected(request))
    return Response(content, media_type="application/json")


async def read_body(request: Request, settings: Settings) -> bytes:
    """The whole body, or ``BodyTimeout`` (408) when it does not arrive within BPTT_BODY_TIMEOUT."""
    try:
        with anyio.fail_after(settings.body_timeout):
            return await request.body()
    except TimeoutError:
        raise BodyTimeout(
            f"the request body did not arrive within {settings.body_timeout:g} s (setting BPTT_BODY_TIMEOUT)",
            field="body",
        ) from None


async def disconnected(request: Request) -> None:
    """Return once the client has gone (the body is read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# -- answers: parse -> admit -> compute -> encode, in a compute thread ----------


def bptt_answer(body: bytes, settings: Settings) -> dict[str, Any]:
    """``POST /bptt``."""
    request = parse(BpttRequest, body)
    arrays = inputs.bptt_arrays(request)
    H, C = arrays["U"].shape
    admission.check_work(settings, H=H, C=C, lengths=[len(arrays["x"])])
    if request.trace:
        admission.check_trace(settings, H=H, T=len(arrays["x"]), K=request.bptt_truncate)
    with ops.engine_timer("bptt") as counts:
        result = engine.bptt(**arrays)
        counts["tokens"] = result.tokens
    answer = _gradients_body(result, request.encoding)
    if request.trace:
        arrays.pop("clip")
        trace = engine.trace(**arrays)
        keep = trace.delta_o.size <= settings.max_trace_delta_o
        answer["trace"] = _trace_body(trace, request.encoding, keep_delta_o=keep)
    return answer


def batch_answer(body: bytes, settings: Settings) -> dict[str, Any]:
    """``POST /bptt/batch``."""
    request = parse(BpttBatchRequest, body)
    arrays = inputs.batch_arrays(request)
    H, C = arrays["U"].shape
    admission.check_work(settings, H=H, C=C, lengths=[len(x) for x in arrays["xs"]])
    with ops.engine_timer("bptt_batch") as counts:
        result = engine.bptt_batch(**arrays)
        counts["tokens"] = result.tokens
    return {**_gradients_body(result, request.encoding), "losses": result.losses}


def check_answer(body: bytes, settings: Settings) -> dict[str, Any]:
    """``POST /gradient-check``."""
    request = parse(GradientCheckRequest, body)
    arrays = inputs.check_arrays(request)
    H, C = arrays["U"].shape
    T = len(arrays["x"])
    admission.check_work(settings, H=H, C=C, lengths=[T])
    sizes = [a.size for k, a in arrays.items() if k in ("U", "V", "W", "b", "c", "s0") and a is not None]
    evaluations = 2 * sum(min(n, request.samples) for n in sizes)
    admission.check_flops(settings, evaluations * T * H * (H + C), "this gradient check")
    with ops.engine_timer("gradient_check"):
        report = checks.gradient_check(
            arrays, h=request.h, tolerance=request.tolerance, samples=request.samples, seed=request.seed
        )
    note = None
    if request.bptt_truncate is not None:
        note = (
            f"bptt_truncate = {request.bptt_truncate}: the truncated gradients of U and W are not the "
            "derivatives of the loss, so they are expected to fail where outputs reach back further "
            "than K steps (docs/derivation.md, section 6)."
        )
    return {
        "passed": all(r["passed"] for r in report.values()),
        "h": request.h,
        "tolerance": request.tolerance,
        "parameters": report,
        "note": note,
    }


def compare_answer(body: bytes, settings: Settings) -> dict[str, Any]:
    """``POST /bptt/compare``."""
    request = parse(CompareRequest, body)
    arrays, submitted = inputs.compare_arrays(request)
    H, C = arrays["U"].shape
    T = len(arrays["x"])
    admission.check_work(settings, H=H, C=C, lengths=[T])
    lags = T if request.bptt_truncate is None else min(T, request.bptt_truncate + 2)
    admission.check_flops(settings, 8 * T * H * (C + lags * H), "this comparison (the tutorial's loop, 8 times)")
    with ops.engine_timer("compare"):
        return checks.compare(arrays, submitted, tolerance=request.tolerance)


def _gradients_body(g: engine.Gradients | engine.BatchGradients, encoding: Encoding) -> dict[str, Any]:
    def wire(a: Array | None) -> Any:
        return None if a is None else to_wire(a, encoding)

    return {
        "loss": g.loss,
        "mean_loss": g.mean_loss,
        "tokens": g.tokens,
        **{name: wire(getattr(g, name)) for name in ("dLdU", "dLdV", "dLdW", "dLds0", "final_state", "dLdb", "dLdc")},
        "clipped": g.clipped,
    }


def _trace_body(trace: engine.Trace, encoding: Encoding, *, keep_delta_o: bool) -> dict[str, Any]:
    return {
        "delta_o": to_wire(trace.delta_o, encoding) if keep_delta_o else None,
        "deltas": [to_wire(d, encoding) for d in trace.deltas],
        "delta_norms": [row[~np.isnan(row)] for row in trace.norms],
        "lag_summary": trace.lag_summary(),
    }
