"""The FastAPI application: thin routes, and every error mapped to a clear 4xx here.

Data flows one way: request bytes -> schemas (validate) -> tensors (decode)
-> engine (compute) -> tensors (encode) -> response bytes.

Request bodies are parsed from the raw bytes by pydantic (``model_validate_json``)
inside the worker thread, not by FastAPI in the event loop: a 30 MB body of
weights then neither blocks other requests nor passes through Python's json.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
import numpy as np
import pydantic
from fastapi import APIRouter, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__, checks, engine, guards, ops, runtime, tensors, v2
from .errors import ComputeError, InputError
from .schemas import (
    TENSOR_TAGS,
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
    InferRequest,
    InferResponse,
    ModelMetadata,
    ServerMetadata,
    V2ErrorResponse,
)
from .settings import Settings

__all__ = ["app", "create_app", "openapi_json"]

T = TypeVar("T")

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

STATIC = pathlib.Path(__file__).parent / "static"

# Request bodies the routes parse themselves, listed so the spec describes them.
REQUEST_MODELS = (BpttRequest, BpttBatchRequest, GradientCheckRequest, CompareRequest, InferRequest)
MAX_ERRORS = 20

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body is not valid JSON."},
    415: {"model": ErrorResponse, "description": "The body is not sent as application/json."},
    422: {
        "model": ErrorResponse,
        "description": "A field is missing, malformed or inconsistent with another "
        "(the message names it, with what was expected and what arrived).",
    },
    413: {
        "model": ErrorResponse,
        "description": "Over a limit: the body (BPTT_MAX_BODY_BYTES) or the work (T, C x H, "
        "tokens x C, batch size); the message names the limit, its value and its setting.",
    },
    500: {"model": ErrorResponse, "description": "A server fault; the message carries a request id to report."},
    503: {
        "model": ErrorResponse,
        "description": "At capacity: BPTT_THREADS requests computing and BPTT_MAX_QUEUE waiting. "
        "Retry after the `Retry-After` header's seconds.",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
    },
}


class HttpError(Exception):
    """A 4xx answer with our error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str = "body",
        type: str = "value_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers
        self.body = {"detail": message, "errors": [{"field": field, "message": message, "type": type}]}


def create_app(settings: Settings | None = None) -> FastAPI:
    """The application, configured by ``settings`` (read from the environment when omitted)."""
    settings = settings or Settings()
    if settings.tune_malloc:
        runtime.tune_malloc()
    ops.configure_logging(settings.log_level, settings.log_format)
    # FastAPIOffline serves Swagger UI and ReDoc from files in its package: /docs
    # works in clusters without internet (FastAPI's default loads them from a CDN).
    app = FastAPIOffline(
        lifespan=_lifespan,
        title="bptt-service",
        version=__version__,
        description=DESCRIPTION,
        responses={500: ERROR_RESPONSES[500]},
    )
    app.state.settings = settings
    app.state.ready = False
    app.state.not_ready_reason = "starting: the engine self-check has not run yet"
    app.add_middleware(guards.BodyLimit, max_bytes=settings.max_body_bytes, reject=_reject_early)
    if settings.api_keys:
        app.add_middleware(guards.BearerAuth, keys=settings.api_keys)
    app.add_middleware(ops.RequestObserver)  # outermost: it also counts and logs 401s
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(_routes())
    app.include_router(_v2_routes())
    _add_error_handlers(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    problem = await anyio.to_thread.run_sync(ops.self_check)
    app.state.ready = problem is None
    app.state.not_ready_reason = problem
    if problem:
        log.error(problem)
    yield


# -- routes ------------------------------------------------------------------


def _routes() -> APIRouter:
    router = APIRouter()

    @router.post(
        "/bptt",
        response_model=BpttResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=_json_body(BpttRequest),
        summary="Loss and BPTT gradients of one sequence",
    )
    async def post_bptt(request: Request) -> Response:
        """Run the RNN over `x`, score it against `y`, and return the loss with dL/dU, dL/dV, dL/dW.

        Any of `U`, `V`, `W`, `s0` may be a base64 tensor object instead of nested
        lists; `encoding` chooses the form of the answer's arrays.
        """
        return await _compute(request, _bptt_answer)

    @router.post(
        "/bptt/batch",
        response_model=BpttBatchResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=_json_body(BpttBatchRequest),
        summary="Summed loss and BPTT gradients of several sequences",
    )
    async def post_bptt_batch(request: Request) -> Response:
        """The weights once and B sequences of any lengths, computed together: the losses,
        and the gradients of their sum (equal to the sum of `POST /bptt` over the sequences)."""
        return await _compute(request, _batch_answer)

    @router.post(
        "/gradient-check",
        response_model=GradientCheckResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=_json_body(GradientCheckRequest),
        summary="Check the engine's gradients against central differences",
        tags=["learning"],
    )
    async def post_gradient_check(request: Request) -> Response:
        """Compare BPTT's gradients with (f(p + h) - f(p - h)) / 2h on a sample of entries of each
        parameter, and report the largest relative error with a formula that cannot pass 0/0."""
        return await _compute(request, _check_answer)

    @router.post(
        "/bptt/compare",
        response_model=CompareResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=_json_body(CompareRequest),
        summary="Compare your own BPTT gradients with the engine's",
        tags=["learning"],
    )
    async def post_bptt_compare(request: Request) -> Response:
        """Submit your dLdU, dLdV, dLdW with the inputs: the answer gives the errors, the worst
        entries, and which classic mistake your gradients match, when one does."""
        return await _compute(request, _compare_answer)

    @router.get(
        "/explain",
        response_class=FileResponse,
        summary="A page that draws delta_t",
        tags=["learning"],
        responses={200: {"content": {"text/html": {}}, "description": "The page (HTML, with its script and style under /static)."}},
    )
    async def get_explain() -> FileResponse:
        """Pick sizes and a seed (or paste weights): the page shows the loss, a heatmap of the delta
        norms over (output t, step k) and the per-lag curve, from `POST /bptt` with `trace`."""
        return FileResponse(STATIC / "explain.html", media_type="text/html")

    @router.get("/healthz", response_model=HealthResponse, summary="Liveness", tags=["operations"])
    async def get_healthz() -> dict[str, str]:
        """Answer while the process is up (no computation): the liveness probe."""
        return {"status": "ok"}

    @router.get(
        "/readyz",
        response_model=HealthResponse,
        responses={503: {"model": ErrorResponse, "description": "Not ready: starting, or the self-check failed."}},
        summary="Readiness",
        tags=["operations"],
    )
    async def get_readyz(request: Request) -> Any:
        """200 once the app has started and the engine's self-check (against central
        differences) passed: the readiness probe."""
        return _readiness(request) or {"status": "ready"}

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

    return router


# -- Open Inference Protocol (KServe V2) ---------------------------------------

V2_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": V2ErrorResponse, "description": "A malformed request; `error` names the tensor."},
    404: {"model": V2ErrorResponse, "description": "No such model or version (this server serves `bptt`, version 1)."},
}
V2_INFER_RESPONSES = V2_ERRORS | {
    200: {
        "description": "The outputs: JSON, or, when outputs are asked for in binary, a JSON header "
        "of Inference-Header-Content-Length bytes followed by the outputs' raw bytes.",
        "content": {
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
            }
        },
        "headers": {
            "Inference-Header-Content-Length": {
                "schema": {"type": "integer"},
                "description": "Length of the JSON header, when binary outputs follow it.",
            }
        },
    },
    413: {"model": V2ErrorResponse, "description": ERROR_RESPONSES[413]["description"]},
    503: ERROR_RESPONSES[503],
}

V2_INFER_DESCRIPTION = """\
Loss and gradients through the Open Inference Protocol (KServe V2 / Triton), the same
computation as `POST /bptt`.

Inputs: `U`, `V`, `W` (FP64 or FP32; FP32 only if all three are), `x`, `y` (INT64 or INT32)
of shape [T], or [B, T] for a batch with the semantics of `POST /bptt/batch`; optional
`s0` ([H], or [B, H]) and `lengths` ([B]: row b uses its first lengths[b] tokens).
Request parameter `bptt_truncate` (integer >= 0; absent or null: full BPTT).
Outputs: `loss`, `mean_loss`, `tokens`, `dLdU`, `dLdV`, `dLdW`, `dLds0`, `final_state`,
`losses` (one per sequence); all of them unless `outputs` names some.

**Binary tensor data extension.** The body may be a JSON header followed by raw
little-endian, row-major tensor bytes: the header `Inference-Header-Content-Length`
gives the JSON's length in bytes, and each binary input carries
`"parameters": {"binary_data_size": n}` instead of `data`, its bytes following in the
order of the inputs. Outputs asked for with `"parameters": {"binary_data": true}`, or all
outputs when the request has `"parameters": {"binary_data_output": true}`, come back the
same way: the answer is `application/octet-stream`, its first
`Inference-Header-Content-Length` bytes the JSON header, in which each binary output has
`binary_data_size`. Errors are `{"error": "..."}` with status 400, naming the tensor.
"""


def _v2_routes() -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (V2)"])

    @router.get("", response_model=ServerMetadata, summary="Server metadata")
    async def get_v2_server() -> dict[str, Any]:
        """Name, version and protocol extensions (`binary_tensor_data`)."""
        return v2.server_metadata()

    @router.get("/health/live", summary="Server liveness")
    async def get_v2_live() -> dict[str, Any]:
        """200 while the process is up."""
        return {"live": True}

    @router.get("/health/ready", summary="Server readiness")
    async def get_v2_ready(request: Request) -> Any:
        """200 when the server can compute (as `/readyz`)."""
        return _readiness(request) or {"ready": True}

    @router.get("/models/{model_name}", response_model=ModelMetadata, responses=V2_ERRORS, summary="Model metadata")
    async def get_v2_model(model_name: ModelName) -> Any:
        """Every input and output with datatype and shape (-1: any size)."""
        return _v2_unknown_model(model_name, None) or v2.model_metadata()

    @router.get("/models/{model_name}/versions/{model_version}", response_model=ModelMetadata,
                responses=V2_ERRORS, summary="Model metadata (versioned)")
    async def get_v2_model_version(model_name: ModelName, model_version: ModelVersion) -> Any:
        """As `GET /v2/models/bptt`."""
        return _v2_unknown_model(model_name, model_version) or v2.model_metadata()

    @router.get("/models/{model_name}/ready", responses=V2_ERRORS, summary="Model readiness")
    async def get_v2_model_ready(request: Request, model_name: ModelName) -> Any:
        """200 when the model can compute."""
        return _v2_model_ready(request, model_name, None)

    @router.get("/models/{model_name}/versions/{model_version}/ready", responses=V2_ERRORS,
                summary="Model readiness (versioned)")
    async def get_v2_model_version_ready(request: Request, model_name: ModelName, model_version: ModelVersion) -> Any:
        """As `GET /v2/models/bptt/ready`."""
        return _v2_model_ready(request, model_name, model_version)

    infer_body = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": "JSON header (Inference-Header-Content-Length bytes), then tensor bytes.",
                },
            },
        }
    }

    @router.post("/models/{model_name}/infer", response_model=InferResponse, responses=V2_INFER_RESPONSES,
                 openapi_extra=infer_body, summary="Inference: loss and gradients", description=V2_INFER_DESCRIPTION)
    async def post_v2_infer(request: Request, model_name: ModelName) -> Response:
        return await _v2_infer(request, model_name, None)

    @router.post("/models/{model_name}/versions/{model_version}/infer", response_model=InferResponse,
                 responses=V2_INFER_RESPONSES, openapi_extra=infer_body, summary="Inference (versioned)",
                 description=V2_INFER_DESCRIPTION)
    async def post_v2_version_infer(request: Request, model_name: ModelName, model_version: ModelVersion) -> Response:
        return await _v2_infer(request, model_name, model_version)

    return router


# The one model: other names are answered 404 (not refused as malformed), so the
# spec lists the valid values without FastAPI enforcing them.
ModelName = Annotated[str, Path(description="The model: `bptt`.", json_schema_extra={"enum": [v2.MODEL_NAME]})]
ModelVersion = Annotated[str, Path(description="The version: `1`.", json_schema_extra={"enum": [v2.MODEL_VERSION]})]


def _v2_model_ready(request: Request, name: str, version: str | None) -> Any:
    return _v2_unknown_model(name, version) or _readiness(request) or {"name": v2.MODEL_NAME, "ready": True}


async def _v2_infer(request: Request, name: str, version: str | None) -> Response:
    unknown = _v2_unknown_model(name, version)
    if unknown is not None:
        return unknown
    body = await request.body()
    header_length = request.headers.get(v2.HEADER_LENGTH)
    settings = request.app.state.settings
    return await _in_pool(request, lambda: _v2_answer(body, header_length, settings))


def _v2_unknown_model(name: str, version: str | None) -> Response | None:
    if name == v2.MODEL_NAME and version in (None, v2.MODEL_VERSION):
        return None
    what = f"model {name!r}" if version is None else f"model {name!r} version {version!r}"
    return _v2_error(404, f"unknown {what}: this server serves {v2.MODEL_NAME!r}, version {v2.MODEL_VERSION}", "model_name")


def _v2_answer(body: bytes, header_length: str | None, settings: Settings) -> Response:
    try:
        call = v2.parse_request(body, header_length)
        H, C, lengths = v2.work_size(call)
        guards.check_work(settings, H=H, C=C, lengths=lengths)
        with ops.engine_timer("v2_infer") as counts:
            results = v2.infer(call)
            counts["tokens"] = int(results["tokens"][0])
        content, headers = v2.encode_response(call, results)
    except (InputError, ComputeError) as exc:
        return _v2_error(400, exc.message, exc.field)
    except guards.LimitError as exc:
        return _v2_error(413, exc.message, exc.field)
    except pydantic.ValidationError as exc:
        err = _validation_error(exc.errors(include_url=False, include_context=True), prefix=())
        return _json({"error": err.body["detail"], **err.body}, 400)
    return Response(content, headers=headers)


def _v2_error(status: int, message: str, field: str) -> Response:
    return _json({"error": message, "detail": message, "errors": [{"field": field, "message": message, "type": "v2"}]}, status)


async def _compute(request: Request, answer: Callable[[bytes, Settings], dict[str, Any]]) -> Response:
    """Read the JSON body, then parse, compute and serialise in the worker threads."""
    body = await _json_bytes(request)
    settings = request.app.state.settings
    content = await _in_pool(request, lambda: tensors.dumps(answer(body, settings)))
    return Response(content, media_type="application/json")


async def _in_pool(request: Request, work: Callable[[], T]) -> T:
    """Run ``work`` in the compute threads (off the event loop), at most BPTT_THREADS at once;
    past BPTT_MAX_QUEUE requests waiting, refuse with 503."""
    state = request.app.state
    if getattr(state, "limiter", None) is None:  # made on first use: it needs the running event loop
        state.limiter = anyio.CapacityLimiter(state.settings.threads)
    waiting = state.limiter.statistics().tasks_waiting
    if waiting >= state.settings.max_queue:
        raise HttpError(
            503,
            f"the server is at capacity: {state.limiter.borrowed_tokens} requests computing and "
            f"{waiting} waiting (settings BPTT_THREADS, BPTT_MAX_QUEUE); retry shortly",
            field="",
            type="busy",
            headers={"Retry-After": "1"},
        )
    return await anyio.to_thread.run_sync(work, limiter=state.limiter)


def _readiness(request: Request) -> Response | None:
    """None when ready, else the 503 answer saying why."""
    state = request.app.state
    if state.ready:
        return None
    reason = state.not_ready_reason
    return _json({"detail": reason, "errors": [{"field": "", "message": reason, "type": "not_ready"}]}, 503)


def _bptt_answer(body: bytes, settings: Settings) -> dict[str, Any]:
    request = _parse(BpttRequest, body)
    arrays = tensors.bptt_arrays(request)
    H, C = arrays["U"].shape
    guards.check_work(settings, H=H, C=C, lengths=[len(arrays["x"])])
    if request.trace:
        guards.check_trace(settings, H=H, T=len(arrays["x"]), K=request.bptt_truncate)
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


def _batch_answer(body: bytes, settings: Settings) -> dict[str, Any]:
    request = _parse(BpttBatchRequest, body)
    arrays = tensors.batch_arrays(request)
    H, C = arrays["U"].shape
    guards.check_work(settings, H=H, C=C, lengths=[len(x) for x in arrays["xs"]])
    with ops.engine_timer("bptt_batch") as counts:
        result = engine.bptt_batch(**arrays)
        counts["tokens"] = result.tokens
    return {**_gradients_body(result, request.encoding), "losses": result.losses}


def _check_answer(body: bytes, settings: Settings) -> dict[str, Any]:
    request = _parse(GradientCheckRequest, body)
    arrays = tensors.check_arrays(request)
    H, C = arrays["U"].shape
    T = len(arrays["x"])
    guards.check_work(settings, H=H, C=C, lengths=[T])
    sizes = [a.size for k, a in arrays.items() if k in ("U", "V", "W", "b", "c", "s0") and a is not None]
    evaluations = 2 * sum(min(n, request.samples) for n in sizes)
    guards.check_flops(settings, evaluations * T * H * (H + C), "this gradient check")
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


def _compare_answer(body: bytes, settings: Settings) -> dict[str, Any]:
    request = _parse(CompareRequest, body)
    arrays, submitted = tensors.compare_arrays(request)
    H, C = arrays["U"].shape
    T = len(arrays["x"])
    guards.check_work(settings, H=H, C=C, lengths=[T])
    lags = T if request.bptt_truncate is None else min(T, request.bptt_truncate + 2)
    guards.check_flops(settings, 8 * T * H * (C + lags * H), "this comparison (the tutorial's loop, 8 times)")
    with ops.engine_timer("compare"):
        return checks.compare(arrays, submitted, tolerance=request.tolerance)


async def _json_bytes(request: Request) -> bytes:
    """The raw body, refusing media types other than JSON (a missing Content-Type is read as JSON)."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise HttpError(
            415,
            f"the body must be sent as Content-Type: application/json, got {ctype!r}",
            field="Content-Type",
            type="media_type",
        )
    return await request.body()


def _parse(model: type[pydantic.BaseModel], body: bytes) -> Any:
    """Validate JSON bytes against ``model``; a pydantic error becomes our 400/422."""
    try:
        return model.model_validate_json(body)
    except pydantic.ValidationError as exc:
        raise _validation_error(exc.errors(include_url=False, include_context=True), prefix=()) from None


def _gradients_body(g: engine.Gradients | engine.BatchGradients, encoding: tensors.Encoding) -> dict[str, Any]:
    def wire(a: np.ndarray | None) -> Any:
        return None if a is None else tensors.to_wire(a, encoding)

    return {
        "loss": g.loss,
        "mean_loss": g.mean_loss,
        "tokens": g.tokens,
        **{name: wire(getattr(g, name)) for name in ("dLdU", "dLdV", "dLdW", "dLds0", "final_state", "dLdb", "dLdc")},
        "clipped": g.clipped,
    }


def _trace_body(trace: engine.Trace, encoding: tensors.Encoding, *, keep_delta_o: bool) -> dict[str, Any]:
    return {
        "delta_o": tensors.to_wire(trace.delta_o, encoding) if keep_delta_o else None,
        "deltas": [tensors.to_wire(d, encoding) for d in trace.deltas],
        "delta_norms": [row[~np.isnan(row)] for row in trace.norms],
        "lag_summary": trace.lag_summary(),
    }


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(tensors.dumps(content), status_code=status, media_type="application/json", headers=headers)


# -- errors ------------------------------------------------------------------


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HttpError)
    async def http_error(request: Request, exc: HttpError) -> Response:
        return _json(exc.body, exc.status, headers=exc.headers)

    @app.exception_handler(guards.LimitError)
    async def limit_error(request: Request, exc: guards.LimitError) -> Response:
        return _json(_limit_body(request.url.path, exc), 413)

    @app.exception_handler(InputError)
    @app.exception_handler(ComputeError)
    async def input_error(request: Request, exc: InputError | ComputeError) -> Response:
        return _json(
            {"detail": exc.message, "errors": [{"field": exc.field, "message": exc.message, "type": "shape" if isinstance(exc, InputError) else "overflow"}]},
            422,
        )

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(request: Request, exc: RequestValidationError) -> Response:
        err = _validation_error(exc.errors(), prefix=("body",))
        return _json(err.body, err.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_exception(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        body = {"detail": message, "errors": [{"field": "", "message": message, "type": "http"}]}
        if request.url.path.startswith("/v2"):
            body = {"error": message, **body}  # the protocol's error field
        return _json(body, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        request_id = uuid.uuid4().hex
        log.error("unhandled error, request id %s", request_id, exc_info=exc)
        message = f"internal server error; report request id {request_id}"
        return _json({"detail": message, "errors": [{"field": "", "message": message, "type": "internal"}]}, 500)


def _limit_body(path: str, exc: guards.LimitError) -> dict[str, Any]:
    body: dict[str, Any] = {"detail": exc.message, "errors": [{"field": exc.field, "message": exc.message, "type": "limit"}]}
    return {"error": exc.message, **body} if path.startswith("/v2") else body


async def _reject_early(scope: dict, send: Any, exc: guards.LimitError) -> None:
    """The 413 for a Content-Length over the limit, sent before any of the body is read."""
    await _json(_limit_body(scope["path"], exc), 413)(scope, None, send)


def _validation_error(errors: list[dict[str, Any]], *, prefix: tuple) -> HttpError:
    """One HttpError from pydantic's error list: 400 for broken JSON, else 422."""
    items = []
    status = 422
    for e in errors:
        loc = tuple(e.get("loc", ()))
        if loc[: len(prefix)] == prefix:
            loc = loc[len(prefix) :]
        field = _field_name(loc)
        message = _message(field, e)
        if e["type"] == "json_invalid":
            status = 400
        items.append({"field": field, "message": message, "type": e["type"]})
    shown = items[:MAX_ERRORS]
    detail = "; ".join(i["message"] for i in shown[:3])
    if len(items) > 3:
        detail += f"; and {len(items) - 3} more"
    err = HttpError(status, detail)
    err.body = {"detail": detail, "errors": shown}
    return err


def _field_name(loc: tuple) -> str:
    """('U', 'lists', 3, 5) -> 'U[3][5]'; () -> 'body'."""
    name = ""
    for part in loc:
        if part in TENSOR_TAGS:
            continue
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name or "body"


def _message(field: str, e: dict[str, Any]) -> str:
    kind, ctx = e["type"], e.get("ctx") or {}
    got = _describe(e.get("input"))
    if kind == "json_invalid":
        return f"the body is not valid JSON: {ctx.get('error', e['msg'])}"
    if kind in ("model_type", "dict_type", "model_attributes_type") and field == "body":
        return f"the body must be a JSON object, got {got}"
    if kind == "missing":
        return f"{field} is required but missing"
    if kind == "extra_forbidden":
        return f"{field} is not a known field"
    if kind in ("float_type", "float_parsing"):
        return f"{field} must be a number, got {got}"
    if kind == "finite_number":
        return f"{field} must be a finite number (no NaN, Infinity or overflowing values), got {got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{field} must be an integer, got {got}"
    if kind in ("list_type", "tuple_type"):
        return f"{field} must be a list, got {got}"
    if kind == "too_short":
        return f"{field} must have at least {ctx.get('min_length')} item(s), got {got}"
    if kind == "greater_than_equal":
        return f"{field} must be >= {ctx.get('ge')}, got {got}"
    return f"{field}: {e['msg']}, got {got}"


def _describe(value: Any) -> str:
    """A short JSON-flavoured description of an input value, never the whole of a large one."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        text = "NaN" if value != value else repr(value).replace("inf", "Infinity")
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, str):
        return f'a string "{value[:37]}..."' if len(value) > 40 else f'a string "{value}"'
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item(s)" if value else "an empty list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# -- OpenAPI -----------------------------------------------------------------


def _json_body(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """openapi_extra describing a JSON body the route parses itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's spec, plus the request models of routes that parse their own body."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    _, defs = models_json_schema(
        [(m, "validation") for m in REQUEST_MODELS], ref_template="#/components/schemas/{model}"
    )
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, schema in defs.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    # Optional API keys: every route but the probes and metrics accepts a bearer
    # token, and needs one when the server has BPTT_API_KEY set.
    components["securitySchemes"] = {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "Required only when the server has BPTT_API_KEY set: Authorization: Bearer <key>.",
        }
    }
    unauthorised = {
        "description": "BPTT_API_KEY is set and the request has no key or a wrong one "
        "(`WWW-Authenticate: Bearer`).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    for path, operations in spec["paths"].items():
        if path in guards.OPEN_PATHS:
            continue
        for operation in operations.values():
            operation["security"] = [{"bearerAuth": []}, {}]
            operation["responses"].setdefault("401", unauthorised)
    app.openapi_schema = spec
    return spec


def openapi_json() -> str:
    """The spec of a default app, as committed in openapi/openapi.json."""
    return json.dumps(create_app(Settings()).openapi(), indent=2, sort_keys=False) + "\n"


app = create_app()
