"""The Open Inference Protocol's HTTP routes (KServe V2 / Triton) for the one model, ``bptt``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from .. import admission
from ..compute import Priced
from ..openapi import ERROR_RESPONSES, V2_ERRORS, V2_INFER_RESPONSES
from ..rest import compute, readiness
from ..settings import Settings
from . import dataplane, protocol
from .wire import ModelMetadata, ServerMetadata

__all__ = ["router"]

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (V2)"])

# The one model: other names are answered 404 (not refused as malformed), so the
# spec lists the valid values without FastAPI enforcing them.
ModelName = Annotated[
    str,
    Path(
        description="The model: `bptt` (the vanilla cell), `bptt-gru` or `bptt-lstm`.",
        json_schema_extra={"enum": list(protocol.MODELS)},
    ),
]
ModelVersion = Annotated[
    str, Path(description="The version: `1`.", json_schema_extra={"enum": [protocol.MODEL_VERSION]})
]

INFER_DESCRIPTION = """\
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

INFER_BODY = {
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


@router.get("", response_model=ServerMetadata, summary="Server metadata")
async def get_v2_server() -> dict[str, Any]:
    """Name, version and protocol extensions (`binary_tensor_data`)."""
    return protocol.server_metadata()


@router.get("/health/live", summary="Server liveness")
async def get_v2_live() -> dict[str, Any]:
    """200 while the process is up."""
    return {"live": True}


@router.get("/health/ready", summary="Server readiness", responses={503: ERROR_RESPONSES[503]})
async def get_v2_ready(request: Request) -> dict[str, Any]:
    """200 when the server can compute (as `/readyz`)."""
    readiness(request)
    return {"ready": True}


@router.get("/models/{model_name}", response_model=ModelMetadata, responses=V2_ERRORS, summary="Model metadata")
async def get_v2_model(model_name: ModelName) -> dict[str, Any]:
    """Every input and output with its default datatype and shape (-1: any size); the description
    says which other datatypes and ranks are accepted."""
    return protocol.model_metadata(protocol.check_model(model_name, None).name)


@router.get(
    "/models/{model_name}/versions/{model_version}",
    response_model=ModelMetadata,
    responses=V2_ERRORS,
    summary="Model metadata (versioned)",
)
async def get_v2_model_version(model_name: ModelName, model_version: ModelVersion) -> dict[str, Any]:
    """As `GET /v2/models/bptt`."""
    return protocol.model_metadata(protocol.check_model(model_name, model_version).name)


@router.get("/models/{model_name}/ready", responses=V2_ERRORS, summary="Model readiness")
async def get_v2_model_ready(request: Request, model_name: ModelName) -> dict[str, Any]:
    """200 when the model can compute."""
    model = protocol.check_model(model_name, None)
    readiness(request)
    return {"name": model.name, "ready": True}


@router.get(
    "/models/{model_name}/versions/{model_version}/ready", responses=V2_ERRORS, summary="Model readiness (versioned)"
)
async def get_v2_model_version_ready(
    request: Request, model_name: ModelName, model_version: ModelVersion
) -> dict[str, Any]:
    """As `GET /v2/models/bptt/ready`."""
    model = protocol.check_model(model_name, model_version)
    readiness(request)
    return {"name": model.name, "ready": True}


@router.post(
    "/models/{model_name}/infer",
    response_model=None,
    responses=V2_INFER_RESPONSES,
    openapi_extra=INFER_BODY,
    summary="Inference: loss and gradients",
    description=INFER_DESCRIPTION,
)
async def post_v2_infer(request: Request, model_name: ModelName) -> Response:
    return await _infer(request, model_name, None)


@router.post(
    "/models/{model_name}/versions/{model_version}/infer",
    response_model=None,
    responses=V2_INFER_RESPONSES,
    openapi_extra=INFER_BODY,
    summary="Inference (versioned)",
    description=INFER_DESCRIPTION,
)
async def post_v2_version_infer(request: Request, model_name: ModelName, model_version: ModelVersion) -> Response:
    return await _infer(request, model_name, model_version)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    model = protocol.check_model(name, version).name
    header_length = request.headers.get(protocol.HEADER_LENGTH)
    settings: Settings = request.app.state.settings

    def price(body: bytes) -> float:
        header = protocol.json_header(body, header_length)
        return (
            admission.check_json_parse(settings, header) + (len(body) - len(header)) * admission.PARSE_SECONDS_PER_BYTE
        )

    def plan(body: bytes) -> Priced[tuple[bytes | memoryview, dict[str, str]]]:
        """Parse and price; its ``run`` computes and encodes."""
        call = protocol.parse_request(body, header_length, model)
        work = dataplane.priced(call, settings)
        return Priced(work.seconds, lambda: protocol.encode_response(call, work.run()))

    content, headers = await compute(request, price, plan)
    return Response(content, headers=headers)
