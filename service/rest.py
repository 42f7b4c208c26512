"""The REST routes: read the body, run its plan (``service.plans``) in the compute pool, write the answer;
and the probes, the limits, the /explain page.

Request bodies are parsed from the raw bytes by pydantic (``model_validate_json``)
inside a compute thread, not by FastAPI in the event loop: a 30 MB body of
weights then neither blocks other requests nor passes through Python's json.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.requests import ClientDisconnect

from . import __version__, admission, ops, plans
from .codec import dumps, require_finite
from .compute import Pool, Priced
from .errors import BodyTimeout, Cancelled, NotReady, UnsupportedMediaType
from .openapi import ERROR_RESPONSES, json_body
from .schemas import (
    BpttBatchRequest,
    BpttBatchResponse,
    BpttRequest,
    BpttResponse,
    CompareRequest,
    CompareResponse,
    CostResponse,
    ErrorResponse,
    FlowRequest,
    FlowResponse,
    GradientCheckRequest,
    GradientCheckResponse,
    HealthResponse,
    IndexResponse,
    LimitsResponse,
    VjpCompareRequest,
    VjpCompareResponse,
    VjpRequest,
    VjpResponse,
)
from .settings import Settings

Result = TypeVar("Result")

__all__ = ["STATIC", "compute", "disconnected", "read_body", "readiness", "router", "run_json"]

STATIC = pathlib.Path(__file__).parent / "static"

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
    return await run_json(request, plans.bptt_plan)


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
    return await run_json(request, plans.batch_plan)


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
    return await run_json(request, plans.check_plan)


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
    return await run_json(request, plans.compare_plan)


def _cost_route(route: str, model: type[Any]) -> None:
    """``POST {route}/cost``: the dry run of ``route``, with that route's request body."""

    async def post_cost(request: Request) -> Response:
        return await run_json(request, plans.cost_plan(route))

    post_cost.__name__ = "post" + route.replace("/", "_").replace("-", "_") + "_cost"
    post_cost.__doc__ = (
        f"The cost model's estimate of a `POST {route}` request (seconds, bytes, by part) and whether the limits "
        "admit it, from its shapes, without computing it: a batching client sizes its requests with this."
    )
    router.post(
        f"{route}/cost",
        response_model=CostResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=json_body(model),
        summary=f"Price a {route} request without computing it",
        tags=["operations"],
    )(post_cost)


@router.post(
    "/bptt/flow",
    response_model=FlowResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=json_body(FlowRequest),
    summary="Vanishing and exploding gradients, measured: Jacobian norms, per-lag decay, truncation bias",
    tags=["learning"],
)
async def post_bptt_flow(request: Request) -> Response:
    """For one sequence: log10 of the norm of d s_t / d s_k for every pair k <= t, each step Jacobian's
    largest singular value, W's spectral radius, the per-lag contributions to dL/dW and dL/dU, and the
    relative error of every truncation K against full BPTT (computed in one pass)."""
    return await run_json(request, plans.flow_plan)


@router.post(
    "/vjp",
    response_model=VjpResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=json_body(VjpRequest),
    summary="The recurrence's forward and backward pass in a course's conventions",
    tags=["learning"],
)
async def post_vjp(request: Request) -> Response:
    """The states and the vector-Jacobian product of the recurrence alone, given the upstream gradient
    `dh` of every hidden state: what CS231n's `rnn_backward` / `lstm_backward` and the Coursera
    specialisation's `rnn_backward` / `lstm_backward` return, in their layouts (`layout`)."""
    return await run_json(request, plans.vjp_plan)


@router.post(
    "/vjp/compare",
    response_model=VjpCompareResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=json_body(VjpCompareRequest),
    summary="Check your rnn_backward: the errors and the classic mistake your answer matches",
    tags=["learning"],
)
async def post_vjp_compare(request: Request) -> Response:
    """Submit your dx, dh0, dWx, dWh, db with the problem: the answer gives each one's error and every
    classic mistake of these assignments your answer matches."""
    return await run_json(request, plans.vjp_compare_plan)


for _route, _model in (
    ("/bptt", BpttRequest),
    ("/bptt/batch", BpttBatchRequest),
    ("/gradient-check", GradientCheckRequest),
    ("/bptt/compare", CompareRequest),
    ("/bptt/flow", FlowRequest),
    ("/vjp", VjpRequest),
    ("/vjp/compare", VjpCompareRequest),
):
    _cost_route(_route, _model)


@router.get("/limits", response_model=LimitsResponse, summary="The limits in force", tags=["operations"])
async def get_limits(request: Request) -> dict[str, Any]:
    """Every limit and budget in force (with its setting), and what they admit at a few common shapes."""
    settings: Settings = request.app.state.settings
    names = [
        "max_body_bytes", "max_bytes_in_flight", "max_parse_seconds", "max_request_seconds", "max_request_bytes",
        "speed", "request_timeout", "body_timeout", "max_tokens", "max_weights", "max_probabilities", "max_batch",
        "max_batch_tokens", "max_trace_values", "max_trace_delta_o", "threads", "max_queue",
    ]  # fmt: skip
    limits = {n: {"value": getattr(settings, n), "setting": f"BPTT_{n.upper()}"} for n in names}
    return {"limits": limits, "admits": admission.examples(settings)}


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
    responses={503: {"model": ErrorResponse, "description": "Not ready: starting, self-check failed, or stopping."}},
    summary="Readiness",
    tags=["operations"],
)
async def get_readyz(request: Request) -> dict[str, str]:
    """200 once the app has started and the engine's self-check (against central
    differences) passed, until it is stopping: the readiness probe."""
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
    """Raise ``NotReady`` (503, with the reason) unless the app started, its self-check passed and it
    is not stopping."""
    state = request.app.state
    if not state.ready:
        raise NotReady(state.not_ready_reason)
    if state.lifecycle.draining:
        raise NotReady("draining: the server is stopping (SIGTERM); send new work to another replica")


async def run_json(request: Request, planner: plans.Planner) -> Response:
    """Admit (a queue slot before the body is read), read the JSON body within its timeout, then
    price the parse, parse, compute and serialise within the deadline: in the event loop when the
    cost model prices it all under BPTT_INLINE_SECONDS, else in a compute thread."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaType(
            f"the body must be sent as Content-Type: application/json, got {ctype!r}", field="Content-Type"
        )
    settings: Settings = request.app.state.settings

    def plan(body: bytes) -> Priced[bytes]:
        planned = planner(body, settings)

        def encoded() -> bytes:
            content = planned.admitted(settings)
            require_finite(content)
            return dumps(content)

        return Priced(planned.estimate.seconds, encoded)

    content = await compute(request, lambda body: admission.check_json_parse(settings, body), plan)
    return Response(content, media_type="application/json")


async def compute(request: Request, price: Callable[[bytes], float], plan: Callable[[bytes], Priced[Result]]) -> Result:
    """Take a queue slot before the body is read, read it within BPTT_BODY_TIMEOUT, then price its
    parse (``price``, which may refuse it), parse and price the work (``plan``) and run it, within
    the deadline, stopped if the client leaves while it waits or computes in a thread.

    The steps the cost model prices under BPTT_INLINE_SECONDS run in the event loop
    (``Slot.run_priced``), the rest in a compute thread; so does all of a body too large to price
    in the event loop.
    """
    settings: Settings = request.app.state.settings
    pool: Pool = request.app.state.pool
    async with pool.slot() as slot:
        body = await read_body(request, settings)
        inline = (
            settings.inline_seconds if len(body) * admission.COUNT_SECONDS_PER_BYTE < settings.inline_seconds else 0.0
        )
        return await slot.run_priced(
            lambda: price(body), lambda: plan(body), inline=inline, disconnected=lambda: disconnected(request)
        )


async def read_body(request: Request, settings: Settings) -> bytes:
    """The whole body, or ``BodyTimeout`` (408) when it does not arrive within BPTT_BODY_TIMEOUT."""
    try:
        # asyncio's own timeout: a quarter of anyio.fail_after's cost (5 against 19 us here)
        async with asyncio.timeout(settings.body_timeout):
            return await request.body()
    except ClientDisconnect:
        raise Cancelled("the client disconnected while sending its body") from None
    except TimeoutError:
        raise BodyTimeout(
            f"the request body did not arrive within {settings.body_timeout:g} s (setting BPTT_BODY_TIMEOUT)",
            field="body",
        ) from None


async def disconnected(request: Request) -> None:
    """Return once the client has gone (the body is read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
