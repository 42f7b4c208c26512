"""ASGI middleware that acts before the app runs: body size, gzip, API keys, trailing slashes, request ids.

- ``BodyLimit``: 413 before the body is read when Content-Length is over
  ``max_bytes``, or as soon as a chunked body passes it; the bytes of every
  body held count in ``Bodies`` (503 past BPTT_MAX_BYTES_IN_FLIGHT), with gRPC's messages.
- ``GzipRequest``: ``Content-Encoding: gzip`` bodies decompressed as they
  arrive, the limits applied to the compressed and the decompressed bytes.
- ``BearerAuth``: with ``BPTT_API_KEY`` set, every route but the probes and
  metrics needs ``Authorization: Bearer <key>``.
- ``RateLimit``: with ``BPTT_RATE_LIMIT_PER_KEY`` set, each key's requests
  take a token from its bucket (``service.quota``): 429 when it is empty.
- ``TrailingSlash``: ``/bptt/`` is served as ``/bptt`` (plain curl prints
  nothing for a redirect).
- ``RequestId``: ``X-Request-Id`` echoed in every answer.

Pure ASGI (no ``BaseHTTPMiddleware``): nothing is buffered or copied.
"""

from __future__ import annotations

import hmac
import uuid
import zlib
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import BodyTooLarge, BrokenBody, Busy, Unauthorised
from .handlers import send_error
from .quota import Quotas, key_id

__all__ = [
    "OPEN_PATHS",
    "BearerAuth",
    "Bodies",
    "BodyLimit",
    "GzipRequest",
    "RateLimit",
    "RequestId",
    "TrailingSlash",
    "authorised",
    "request_id_of",
]

# Reachable without a key: probes and the metrics scraper.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class Bodies:
    """The bytes of request bodies one worker holds at once, HTTP bodies and gRPC messages together.

    Each counts from its first byte until its answer is sent (it stays in memory while it
    waits and computes); past ``limit`` (BPTT_MAX_BYTES_IN_FLIGHT), 503 / UNAVAILABLE.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def busy(self) -> Busy:
        return Busy(
            f"the server holds {self.held:,} bytes of request bodies, near its limit of "
            f"{self.limit:,} (setting BPTT_MAX_BYTES_IN_FLIGHT); retry shortly"
        )

    def take(self, n: int) -> None:
        """Count ``n`` more bytes, or raise ``Busy`` (counting nothing) when they would pass the limit."""
        if self.held + n > self.limit:
            raise self.busy()
        self.held += n

    def give(self, n: int) -> None:
        self.held -= n


class BodyLimit:
    """Refuse bodies over ``max_bytes`` without reading them, and count the bytes held in ``bodies``.

    A Content-Length over the limit is answered at once; a body without one
    (chunked) is counted as it is read, and ``receive`` raises ``BodyTooLarge``
    past the limit, which the app's handler answers with its 413. Every request's
    body counts in ``bodies`` from its first byte until its answer is sent: past its limit, 503.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, bodies: Bodies) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.bodies = bodies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = 0
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                declared = int(value)
        if declared > self.max_bytes:
            await send_error(scope, send, BodyTooLarge(self.max_bytes))
            return
        # Reserved before the first byte: uploads cannot pile up past the bound. The price: a few
        # slow clients that declare large bodies hold the reservation (up to BPTT_BODY_TIMEOUT).
        try:
            self.bodies.take(declared)
        except Busy as exc:
            await send_error(scope, send, exc)
            return
        held = declared
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen, held
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            if seen > held:  # chunked (or longer than declared): count as it arrives
                self.bodies.take(seen - held)
                held = seen
            return message

        try:
            await self.app(scope, counting_receive, send)
        finally:
            self.bodies.give(held)


class BearerAuth:
    """``Authorization: Bearer <key>`` on every path but ``OPEN_PATHS``.

    Keys are compared with ``hmac.compare_digest`` against every configured key
    (no early exit), so the time taken says nothing about how much of a key was right.
    The key's id (``service.quota.key_id``, never the key) goes in the scope's
    state as ``api_key_id``, for the rate limit.
    """

    def __init__(self, app: ASGIApp, *, keys: Sequence[str]) -> None:
        self.app = app
        self.keys = [(k.encode(), key_id(k.encode())) for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        found = self._key_id(scope)
        if found is None:
            await send_error(scope, send, Unauthorised())
            return
        scope.setdefault("state", {})["api_key_id"] = found
        await self.app(scope, receive, send)

    def _key_id(self, scope: Scope) -> str | None:
        """The id of the request's key, or None when it has none or a wrong one."""
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = token.strip()
                break
        found = None
        for key, kid in self.keys:
            if hmac.compare_digest(given, key):
                found = kid
        return found


class RateLimit:
    """A request rate per API key (a token bucket each, ``service.quota``): 429 with Retry-After past it.

    Inside ``BearerAuth`` (it reads the key's id from the scope) and outside the body's
    middlewares: a refused request is answered before its body is read. Requests without
    a key (the probes and metrics) are not counted.
    """

    def __init__(self, app: ASGIApp, *, quotas: Quotas) -> None:
        self.app = app
        self.quotas = quotas  # the app's, shared with the gRPC servicer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kid = (scope.get("state") or {}).get("api_key_id") if scope["type"] == "http" else None
        error = self.quotas.refusal(kid) if kid else None
        if error is None:
            await self.app(scope, receive, send)
            return
        await send_error(scope, send, error)


def authorised(header: bytes, keys: Sequence[bytes]) -> bool:
    """Whether an ``Authorization`` value (``Bearer <key>``) holds one of ``keys``, compared in constant time."""
    scheme, _, token = header.partition(b" ")
    given = token.strip() if scheme.lower() == b"bearer" else b""
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key)
    return ok


class TrailingSlash:
    """Serve ``/route/`` as ``/route`` (every route of this service is written without the slash)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope = dict(scope, path=path.rstrip("/") or "/", raw_path=path.rstrip("/").encode() or b"/")
        await self.app(scope, receive, send)


class RequestId:
    """``X-Request-Id``: the client's (printable, at most 128 characters) or a new one, echoed in the
    answer's headers; the access log and every error body carry it too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode("latin-1"))
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", rid.encode("latin-1"))]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class GzipRequest:
    """``Content-Encoding: gzip`` request bodies, decompressed as they arrive.

    At most ``CHUNK`` decompressed bytes come out per ``receive``, the rest of the
    compressed input kept for the next one: the body limits inside (``BodyLimit``)
    count the decompressed bytes, so a zip bomb is refused with 413 after at most
    the limit was produced, whatever its ratio. The Content-Length of the
    compressed body is dropped (the app reads until the end).
    """

    CHUNK = 1 << 16

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes  # the compressed bytes too: a stream that inflates to nothing still costs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope.get("headers", []) if scope["type"] == "http" else []
        encoding = next((v for k, v in headers if k == b"content-encoding"), None)
        if encoding is None or encoding.strip().lower() not in (b"gzip", b"x-gzip"):
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in headers if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await send_error(scope, send, BodyTooLarge(self.max_bytes))
            return
        kept = [(k, v) for k, v in headers if k not in (b"content-encoding", b"content-length")]
        scope = dict(scope, headers=kept)
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing
        pending = b""  # compressed bytes not yet decompressed
        more = True  # the client has more to send
        compressed = 0  # compressed bytes received
        done = False  # the whole body was handed on: later reads wait for the disconnect

        async def inflating_receive() -> Message:
            nonlocal pending, more, done, compressed
            if done:
                return await receive()
            while True:
                if pending:
                    if inflate.eof:
                        raise _broken("the gzip body has data after its gzip stream ends")
                    try:
                        out = inflate.decompress(pending, self.CHUNK)
                    except zlib.error as exc:
                        raise _broken(f"the gzip body is not valid gzip: {exc}") from None
                    pending = inflate.unconsumed_tail
                    if inflate.unused_data:  # bytes past the end of the stream
                        raise _broken("the gzip body has data after its gzip stream ends")
                    if out:
                        return {"type": "http.request", "body": out, "more_body": True}
                if not more:
                    rest = inflate.flush()  # output zlib still holds (at most its window)
                    if not inflate.eof:
                        raise _broken("the gzip body ends before its gzip stream does")
                    done = True
                    return {"type": "http.request", "body": rest, "more_body": False}
                message = await receive()
                if message["type"] != "http.request":
                    return message
                chunk = message.get("body", b"")
                compressed += len(chunk)
                if compressed > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                pending += chunk
                more = message.get("more_body", False)

        await self.app(scope, inflating_receive, send)


def request_id_of(given: str) -> str:
    """The client's request id when it is printable, without spaces and at most 128 characters; else a new one."""
    return given if 0 < len(given) <= 128 and given.isprintable() and " " not in given else uuid.uuid4().hex


def _broken(message: str) -> BrokenBody:
    """A gzip body that does not decompress: a 400, like JSON that does not parse."""
    return BrokenBody([{"field": "body", "message": message, "type": "gzip_invalid"}])
