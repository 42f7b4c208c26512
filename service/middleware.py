"""ASGI middleware that answers before the app runs: body size, API keys, trailing slashes.

- ``BodyLimit``: 413 before the body is read when Content-Length is over
  ``max_bytes``, or as soon as a chunked body passes it.
- ``BearerAuth``: with ``BPTT_API_KEY`` set, every route but the probes and
  metrics needs ``Authorization: Bearer <key>``.
- ``TrailingSlash``: ``/bptt/`` is served as ``/bptt`` (plain curl prints
  nothing for a redirect).

Pure ASGI (no ``BaseHTTPMiddleware``): nothing is buffered or copied.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import BodyTooLarge, Unauthorised
from .handlers import send_error

__all__ = ["OPEN_PATHS", "BearerAuth", "BodyLimit", "TrailingSlash"]

# Reachable without a key: probes and the metrics scraper.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class BodyLimit:
    """Refuse bodies over ``max_bytes`` without reading them.

    A Content-Length over the limit is answered at once; a body without one
    (chunked) is counted as it is read, and ``receive`` raises ``BodyTooLarge``
    past the limit, which the app's handler answers with its 413.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await send_error(scope, send, BodyTooLarge(self.max_bytes))
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


class BearerAuth:
    """``Authorization: Bearer <key>`` on every path but ``OPEN_PATHS``.

    Keys are compared with ``hmac.compare_digest`` against every configured key
    (no early exit), so the time taken says nothing about how much of a key was right.
    """

    def __init__(self, app: ASGIApp, *, keys: Sequence[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._authorised(scope):
            await self.app(scope, receive, send)
            return
        await send_error(scope, send, Unauthorised())

    def _authorised(self, scope: Scope) -> bool:
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = token.strip()
                break
        ok = False
        for key in self.keys:
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
