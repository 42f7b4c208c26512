"""Every error this package raises, the one table of what each becomes, and the one error body.

The tree (each class carries its HTTP status, a machine-readable ``type`` and
the ``field`` it blames)::

    BpttError                      base; status 500, "internal"
    +-- InputError (ValueError)    a field malformed or inconsistent       422 (V2: 400)
    |   +-- RequestInvalid         pydantic's findings, several at once    422
    |       +-- BrokenBody         JSON that does not parse, bad gzip      400
    +-- ComputeError               the computation overflowed              422 (V2: 400)
    +-- LimitError                 over a limit, refused at admission      413
    |   +-- BodyTooLarge           the body, before or while reading it    413
    +-- UnsupportedMediaType       Content-Type is not JSON                415
    +-- Unauthorised               missing or wrong API key                401
    +-- RateLimited                a key over its request rate             429 + Retry-After
    +-- NotFound                   no such route, model or version         404
    +-- MethodNotAllowed           the route takes another method          405
    +-- Busy                       the queue or the bytes in flight full   503 + Retry-After
    +-- Draining                   shutting down: no new work              503 + Retry-After
    +-- NotReady                   starting, self-check failed, stopping   503
    +-- DeadlineExceeded           the request's deadline passed           504
    +-- BodyTimeout                the body did not arrive in time         408
    +-- Cancelled                  the client disconnected (nothing sent)  499 in logs
    +-- ServerError                (client side) the service answered an error

``TABLE`` maps each class to its HTTP status, its status on the Open Inference
Protocol (V2) routes and its gRPC status code; ``body`` builds the one error body
every answer carries: ``{"detail": ..., "errors": [{"field", "message", "type"}]}``,
plus the protocol's ``"error"`` on V2 routes. Messages name the field, say what
was expected and what arrived: ``"W must be H x H = 100 x 100, got 100 x 99"``.

No web framework is imported here: the client uses this module too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypedDict

__all__ = [
    "TABLE",
    "BodyTimeout",
    "BodyTooLarge",
    "BpttError",
    "BrokenBody",
    "Busy",
    "Cancelled",
    "ComputeError",
    "DeadlineExceeded",
    "Draining",
    "ErrorItem",
    "InputError",
    "LimitError",
    "MethodNotAllowed",
    "NotFound",
    "NotReady",
    "Outcome",
    "RateLimited",
    "RequestInvalid",
    "ServerError",
    "Unauthorised",
    "UnsupportedMediaType",
    "body",
    "outcome",
    "status_table",
]

# No error body grows with the request: messages are cut to this many characters,
# and at most MAX_ITEMS problems are listed.
MAX_MESSAGE = 600
MAX_ITEMS = 20


class ErrorItem(TypedDict):
    """One problem with a request, as the error body lists it."""

    field: str
    message: str
    type: str


class BpttError(Exception):
    """Base class of every error raised by this package."""

    type: ClassVar[str] = "internal"

    def __init__(self, message: str, *, field: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}

    @property
    def items(self) -> list[ErrorItem]:
        """The problems this error reports (one, unless it gathers several)."""
        return [{"field": self.field, "message": self.message, "type": self.type}]


class InputError(BpttError, ValueError):
    """An input is malformed, of the wrong shape, or inconsistent with another."""

    type = "shape"

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message, field=field)


class RequestInvalid(InputError):
    """The body failed validation: several problems at once, or JSON that does not parse."""

    type = "value_error"

    def __init__(self, problems: Sequence[ErrorItem]) -> None:
        shown = list(problems[:MAX_ITEMS])
        detail = "; ".join(p["message"] for p in shown[:3])
        if len(problems) > 3:
            detail += f"; and {len(problems) - 3} more"
        super().__init__(detail, field=shown[0]["field"] if shown else "body")
        self.problems = shown

    @property
    def items(self) -> list[ErrorItem]:
        return self.problems


class BrokenBody(RequestInvalid):
    """The body does not decode: JSON that does not parse, gzip that does not inflate."""

    type = "json_invalid"


class ComputeError(BpttError, ArithmeticError):
    """The computation overflowed: the inputs are too large for the dtype."""

    type = "overflow"


class LimitError(BpttError):
    """A request asks for more than the service's limits allow, refused before the work."""

    type = "limit"


class BodyTooLarge(LimitError):
    """The request body is over BPTT_MAX_BODY_BYTES (or the JSON body limit)."""

    def __init__(self, limit: int, *, setting: str = "BPTT_MAX_BODY_BYTES", advice: str = "") -> None:
        super().__init__(
            f"the request body is larger than the limit of {limit:,} bytes (setting {setting})"
            + (advice or "; send base64 tensors, or split the batch"),
            field="body",
        )


class UnsupportedMediaType(BpttError):
    """The body is not sent as JSON."""

    type = "media_type"


class Unauthorised(BpttError):
    """The API key is missing or wrong."""

    type = "auth"

    def __init__(self) -> None:
        super().__init__(
            "missing or wrong API key: send the header Authorization: Bearer <key>",
            field="Authorization",
            headers={"www-authenticate": 'Bearer realm="bptt-service"'},
        )


class RateLimited(BpttError):
    """An API key sent more requests than its rate (BPTT_RATE_LIMIT_PER_KEY): retry after Retry-After."""

    type = "rate_limited"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, field="Authorization", headers={"retry-after": str(retry_after)})


class NotFound(BpttError):
    """No such route, model or model version."""

    type = "not_found"


class MethodNotAllowed(BpttError):
    """The route exists but takes another method."""

    type = "method"


class Busy(BpttError):
    """At capacity (queue full, or request bytes held at their limit): retry after Retry-After."""

    type = "busy"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"retry-after": str(retry_after)})


class Draining(BpttError):
    """The server is shutting down and takes no new work: retry after Retry-After, another replica answers."""

    type = "draining"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"retry-after": str(retry_after)})


class NotReady(BpttError):
    """The service is starting, its self-check failed, or it is stopping."""

    type = "not_ready"


class DeadlineExceeded(BpttError):
    """The request's deadline passed (queue wait and compute); the work was stopped."""

    type = "deadline"


class BodyTimeout(BpttError):
    """The request body did not arrive within BPTT_BODY_TIMEOUT."""

    type = "body_timeout"


class Cancelled(BpttError):
    """The client disconnected; its work was stopped and nothing is sent."""

    type = "cancelled"


class ServerError(BpttError):
    """(Client side.) The service answered with an error status; ``detail`` is its message."""

    def __init__(self, status: int, detail: str, errors: Sequence[ErrorItem] | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.errors = list(errors or [])


@dataclass(frozen=True)
class Outcome:
    """What one kind of error becomes on each protocol."""

    http: int  # the REST routes' status
    v2: int  # the Open Inference Protocol's HTTP status
    grpc: str  # the gRPC status code's name


# The one table. Looked up along the class's MRO, so a subclass answers as its
# nearest listed ancestor unless it has a row of its own.
TABLE: dict[type[BpttError], Outcome] = {
    InputError: Outcome(422, 400, "INVALID_ARGUMENT"),
    BrokenBody: Outcome(400, 400, "INVALID_ARGUMENT"),
    ComputeError: Outcome(422, 400, "INVALID_ARGUMENT"),
    LimitError: Outcome(413, 413, "RESOURCE_EXHAUSTED"),
    UnsupportedMediaType: Outcome(415, 415, "INVALID_ARGUMENT"),
    Unauthorised: Outcome(401, 401, "UNAUTHENTICATED"),
    RateLimited: Outcome(429, 429, "RESOURCE_EXHAUSTED"),
    NotFound: Outcome(404, 404, "NOT_FOUND"),
    MethodNotAllowed: Outcome(405, 405, "UNIMPLEMENTED"),
    Busy: Outcome(503, 503, "UNAVAILABLE"),
    Draining: Outcome(503, 503, "UNAVAILABLE"),
    NotReady: Outcome(503, 503, "UNAVAILABLE"),
    DeadlineExceeded: Outcome(504, 504, "DEADLINE_EXCEEDED"),
    BodyTimeout: Outcome(408, 408, "DEADLINE_EXCEEDED"),
    Cancelled: Outcome(499, 499, "CANCELLED"),
    BpttError: Outcome(500, 500, "INTERNAL"),
}


def outcome(exc: BpttError) -> Outcome:
    """The row of ``TABLE`` for ``exc``: its class's, or its nearest listed ancestor's."""
    for cls in type(exc).__mro__:
        if cls in TABLE:
            return TABLE[cls]
    return TABLE[BpttError]


def status_table() -> str:
    """README's table of error answers, generated from ``TABLE`` and the classes' docstrings."""
    lines = ["| error | type | REST | V2 | gRPC | when |", "|---|---|---|---|---|---|"]
    for cls, row in TABLE.items():
        when = (cls.__doc__ or "").strip().splitlines()[0].rstrip(".")
        if cls is BpttError:
            when = "A fault of the service: a generic message with a request id, the traceback only in the log"
        lines.append(f"| `{cls.__name__}` | `{cls.type}` | {row.http} | {row.v2} | `{row.grpc}` | {when} |")
    return "\n".join(lines) + "\n"


def _cut(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def body(exc: BpttError, *, v2: bool = False, request_id: str | None = None) -> dict[str, Any]:
    """The error body of ``exc``: ``detail`` for a person, ``errors`` for programs.

    On the V2 routes the protocol's ``error`` comes first, the same sentence.
    Never larger than a few KB, whatever the request held.
    """
    detail = _cut(exc.message)
    items = [
        {"field": _cut(i["field"]), "message": _cut(i["message"]), "type": i["type"]} for i in exc.items[:MAX_ITEMS]
    ]
    out: dict[str, Any] = {"error": detail} if v2 else {}
    out |= {"detail": detail, "errors": items}
    if request_id is not None:
        out["request_id"] = request_id
    return out
