"""Errors to answers: the exception handlers, and pydantic's findings reworded for people.

Every error reaches the client through ``error_response``: the status from
``errors.TABLE`` (the V2 column on ``/v2`` paths), the body from ``errors.body``.
Routes raise; they never build an error answer themselves.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, TypeVar

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Scope, Send

from . import errors
from .codec import describe, dumps
from .errors import BpttError, BrokenBody, ErrorItem, MethodNotAllowed, NotFound, RequestInvalid
from .schemas import TENSOR_TAGS

__all__ = ["error_response", "install", "is_v2", "json_response", "parse", "request_id", "reword", "send_error"]

log = logging.getLogger("service")

Model = TypeVar("Model", bound=pydantic.BaseModel)


def is_v2(path: str) -> bool:
    """True on the Open Inference Protocol's routes, whose errors carry the protocol's ``error``."""
    return path == "/v2" or path.startswith("/v2/")


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer written by orjson (numpy arrays included)."""
    return Response(dumps(content), status_code=status, media_type="application/json", headers=headers)


def error_response(exc: BpttError, path: str, request_id: str | None = None) -> Response:
    """The answer to ``exc`` on ``path``: status from the error table, the one error body."""
    v2 = is_v2(path)
    row = errors.outcome(exc)
    body = errors.body(exc, v2=v2, request_id=request_id)
    return json_response(body, row.v2 if v2 else row.http, headers=exc.headers or None)


def request_id(scope: Scope) -> str | None:
    """The request's id, put in the scope's state by ``middleware.RequestId``."""
    value = (scope.get("state") or {}).get("request_id")
    return value if isinstance(value, str) else None


async def send_error(scope: Scope, send: Send, exc: BpttError) -> None:
    """Answer ``exc`` from an ASGI middleware, before the app (and its handlers) run."""
    await error_response(exc, scope["path"], request_id(scope))(scope, _no_receive, send)


async def _no_receive() -> dict[str, Any]:  # an answer sent before the body is read never reads it
    return {"type": "http.disconnect"}


def parse(model: type[Model], body: bytes) -> Model:
    """Validate JSON bytes against ``model``; pydantic's findings become one ``RequestInvalid``."""
    try:
        return model.model_validate_json(body)
    except pydantic.ValidationError as exc:
        raise reword(exc.errors(include_url=False, include_context=True), prefix=()) from None


def install(app: FastAPI) -> None:
    """Register the handlers: ours, FastAPI's validation, Starlette's HTTP errors, and the rest (500)."""

    @app.exception_handler(BpttError)
    async def bptt_error(request: Request, exc: BpttError) -> Response:
        return error_response(exc, request.url.path, request_id(request.scope))

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(request: Request, exc: RequestValidationError) -> Response:
        error = reword(list(exc.errors()), prefix=("body",))
        return error_response(error, request.url.path, request_id(request.scope))

    @app.exception_handler(StarletteHTTPException)
    async def http_exception(request: Request, exc: StarletteHTTPException) -> Response:
        rid = request_id(request.scope)
        error = _from_starlette(request, exc)
        if error is not None:
            return error_response(error, request.url.path, rid)
        other = BpttError(str(exc.detail), headers=dict(exc.headers or {}))
        body = errors.body(other, v2=is_v2(request.url.path), request_id=rid)
        return json_response(body, exc.status_code, other.headers or None)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        rid = request_id(request.scope) or uuid.uuid4().hex
        log.error("unhandled error, request id %s", rid, exc_info=exc)
        error = BpttError(f"internal server error; report request id {rid}")
        return error_response(error, request.url.path, rid)


def _from_starlette(request: Request, exc: StarletteHTTPException) -> BpttError | None:
    """Starlette's 404 and 405 in our words: what is there, and how to reach it."""
    method, path = request.method, request.url.path
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return MethodNotAllowed(
            f"{method} {path} is not allowed: this route takes {allowed or 'another method'}",
            field="method",
            headers={"allow": allowed} if allowed else None,
        )
    if exc.status_code == 404:
        return NotFound(f"no route {method} {path}: the routes are listed at /docs (and /openapi.json)", field="path")
    return None


def reword(problems: list[Any], *, prefix: tuple[str, ...]) -> RequestInvalid:
    """One ``RequestInvalid`` from pydantic's error list: 400 for broken JSON, else 422."""
    items: list[ErrorItem] = []
    broken = False
    for e in problems:
        loc = tuple(e.get("loc", ()))
        if loc[: len(prefix)] == prefix:
            loc = loc[len(prefix) :]
        field = _field_name(loc)
        broken |= e["type"] == "json_invalid"
        items.append({"field": field, "message": _message(field, e), "type": e["type"]})
    return BrokenBody(items) if broken else RequestInvalid(items)


def _field_name(loc: tuple[Any, ...]) -> str:
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


_MATRICES = frozenset({"U", "V", "W", "dLdU", "dLdV", "dLdW"})


def _message(field: str, e: dict[str, Any]) -> str:
    kind, ctx = e["type"], e.get("ctx") or {}
    got = describe(e.get("input"))
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
        name = field.split("[")[0].rsplit(".", 1)[-1]
        if name in _MATRICES and ctx.get("min_length") == 1:
            what = "a row of at least one number" if field.endswith("]") else "a matrix with at least one row"
            return f"{field} must be {what}, got {got}"
        return f"{field} must have at least {ctx.get('min_length')} item(s), got {got}"
    if kind == "greater_than_equal":
        hint = " (null means full BPTT)" if field == "bptt_truncate" else ""
        return f"{field} must be >= {ctx.get('ge')}, got {got}{hint}"
    return f"{field}: {e['msg']}, got {got}"
