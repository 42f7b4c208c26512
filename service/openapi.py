"""What FastAPI cannot infer about the spec: bodies the routes parse themselves, errors, security.

The routes read their bodies as bytes (pydantic parses them in a worker thread,
not in the event loop), so FastAPI does not see the request models: they are
declared here, with the error answers of every route, and the optional bearer key.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from .middleware import OPEN_PATHS
from .schemas import (
    BpttBatchRequest,
    BpttRequest,
    CompareRequest,
    ErrorResponse,
    FlowRequest,
    GradientCheckRequest,
    VjpCompareRequest,
    VjpRequest,
)
from .v2.wire import InferRequest, V2ErrorResponse

__all__ = ["ERROR_RESPONSES", "V2_ERRORS", "V2_INFER_RESPONSES", "install", "json_body", "openapi_json"]

# Request bodies the routes parse themselves, listed so the spec describes them.
REQUEST_MODELS: tuple[type[pydantic.BaseModel], ...] = (
    BpttRequest,
    BpttBatchRequest,
    GradientCheckRequest,
    CompareRequest,
    FlowRequest,
    VjpRequest,
    VjpCompareRequest,
    InferRequest,
)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body is not valid JSON."},
    415: {"model": ErrorResponse, "description": "The body is not sent as application/json."},
    422: {
        "model": ErrorResponse,
        "description": "A field is missing, malformed or inconsistent with another "
        "(the message names it, with what was expected and what arrived), or the computation overflowed.",
    },
    413: {
        "model": ErrorResponse,
        "description": "Over a limit: the body (BPTT_MAX_BODY_BYTES) or the work (T, C x H, "
        "tokens x C, batch size); the message names the limit, its value and its setting.",
    },
    500: {"model": ErrorResponse, "description": "A server fault; the message carries a request id to report."},
    503: {
        "model": ErrorResponse,
        "description": "At capacity (BPTT_THREADS requests computing and BPTT_MAX_QUEUE waiting), or stopping "
        "(`draining`). Retry after the `Retry-After` header's seconds.",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
    },
}

V2_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": V2ErrorResponse, "description": "A malformed request; `error` names the tensor."},
    404: {"model": V2ErrorResponse, "description": "No such model or version (this server serves `bptt`, version 1)."},
}
V2_INFER_RESPONSES: dict[int | str, dict[str, Any]] = V2_ERRORS | {
    200: {
        "description": "The outputs: JSON, or, when outputs are asked for in binary, a JSON header "
        "of Inference-Header-Content-Length bytes followed by the outputs' raw bytes.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
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


def json_body(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` describing a JSON body the route parses itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` FastAPI's spec plus what this module adds."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _spec(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _spec(app: FastAPI) -> dict[str, Any]:
    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
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
        "description": "BPTT_API_KEY is set and the request has no key or a wrong one (`WWW-Authenticate: Bearer`).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    rate_limited = {
        "description": "BPTT_RATE_LIMIT_PER_KEY is set and this key is over its rate: retry after the "
        "`Retry-After` header's seconds.",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    for path, operations in spec["paths"].items():
        if path in OPEN_PATHS:
            continue
        for operation in operations.values():
            operation["security"] = [{"bearerAuth": []}, {}]
            operation["responses"].setdefault("401", unauthorised)
            operation["responses"].setdefault("429", rate_limited)
    return spec


def openapi_json() -> str:
    """The spec of a default app, as committed in openapi/openapi.json."""
    from .app import create_app  # the factory builds the routes the spec describes
    from .settings import Settings

    return json.dumps(create_app(Settings()).openapi(), indent=2, sort_keys=False) + "\n"
