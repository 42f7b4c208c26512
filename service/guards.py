"""What keeps one request from hurting the others: work limits, the compute queue, and API keys.

- Body size: 413 before the body is read when Content-Length is over
  ``BPTT_MAX_BODY_BYTES``, or as soon as a chunked body passes it.
- Work limits: a request's size (T per sequence, C x H weights, the T x C
  probability matrix, batch size and tokens) is checked before the engine
  runs; over a limit is 413, naming the limit, its value and its setting.
- The queue: at most ``BPTT_THREADS`` requests compute at once; past
  ``BPTT_MAX_QUEUE`` waiting ones, new requests get 503 with Retry-After.
- API keys: with ``BPTT_API_KEY`` set, every route but the probes and metrics
  needs ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

from .errors import BpttError
from .settings import Settings

__all__ = ["LimitError", "BodyTooLarge", "check_work", "check_trace", "check_flops", "BodyLimit", "BearerAuth", "OPEN_PATHS"]

# Reachable without a key: probes and the metrics scraper.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class LimitError(BpttError):
    """A request asks for more work than the service's limits allow (HTTP 413)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class BodyTooLarge(LimitError):
    """The request body is over BPTT_MAX_BODY_BYTES (HTTP 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the request body is larger than the limit of {limit:,} bytes (setting BPTT_MAX_BODY_BYTES); "
            "send base64 tensors, or split the batch",
            field="body",
        )


def check_work(settings: Settings, *, H: int, C: int, lengths: Sequence[int]) -> None:
    """Refuse work over the configured limits, before any of it is done.

    ``lengths`` are the sequences' T (one for ``/bptt``).
    """
    def refuse(what: str, value: int, limit: int, setting: str, field: str) -> None:
        raise LimitError(
            f"{what} is {value:,}, over the limit of {limit:,} (setting BPTT_{setting.upper()})",
            field=field,
        )

    if C * H > settings.max_weights:
        refuse(f"C x H = {C:,} x {H:,}", C * H, settings.max_weights, "max_weights", "U")
    B = len(lengths)
    if B > settings.max_batch:
        refuse("the number of sequences", B, settings.max_batch, "max_batch", "sequences")
    longest = max(lengths)
    if longest > settings.max_tokens:
        field = "x" if B == 1 else f"sequences[{list(lengths).index(longest)}].x"
        refuse("T (tokens in one sequence)", longest, settings.max_tokens, "max_tokens", field)
    N = sum(lengths)
    if B > 1 and N > settings.max_batch_tokens:
        refuse("the batch's total tokens", N, settings.max_batch_tokens, "max_batch_tokens", "sequences")
    if N * C > settings.max_probabilities:
        refuse(
            f"the probability matrix (tokens x C = {N:,} x {C:,})",
            N * C,
            settings.max_probabilities,
            "max_probabilities",
            "x" if B == 1 else "sequences",
        )


def check_trace(settings: Settings, *, H: int, T: int, K: int | None) -> None:
    """A trace holds T x L x H numbers (L = lags kept); refuse it over BPTT_MAX_TRACE_VALUES."""
    lags = T if K is None else min(T, K + 1)
    values = T * lags * H
    if values > settings.max_trace_values:
        raise LimitError(
            f"the trace (T x lags x H = {T:,} x {lags:,} x {H:,}) is {values:,} numbers, over the limit "
            f"of {settings.max_trace_values:,} (setting BPTT_MAX_TRACE_VALUES); shorten the sequence "
            "or set bptt_truncate",
            field="trace",
        )


def check_flops(settings: Settings, flops: float, what: str) -> None:
    """Refuse a check whose estimated arithmetic is over BPTT_MAX_CHECK_FLOPS."""
    if flops > settings.max_check_flops:
        raise LimitError(
            f"{what} would take about {flops:.3g} floating-point operations, over the limit of "
            f"{settings.max_check_flops:.3g} (setting BPTT_MAX_CHECK_FLOPS); use a smaller model, "
            "shorter sequence or fewer samples",
            field="body",
        )


class BodyLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` without reading them.

    A Content-Length over the limit is answered at once (``reject``); a body
    without one (chunked) is counted as it is read, and ``receive`` raises
    ``BodyTooLarge`` past the limit, which the app answers with its 413.
    """

    def __init__(self, app: Any, *, max_bytes: int, reject: Any) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.reject = reject  # async (scope, send, BodyTooLarge) -> None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self.reject(scope, send, BodyTooLarge(self.max_bytes))
                return
        seen = 0

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


class BearerAuth:
    """ASGI middleware: ``Authorization: Bearer <key>`` on every path but OPEN_PATHS.

    Keys are compared with ``hmac.compare_digest`` against every configured key,
    so the time taken says nothing about how much of a key was right.
    """

    def __init__(self, app: Any, *, keys: Sequence[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._authorised(scope):
            await self.app(scope, receive, send)
            return
        from .tensors import dumps  # local: tensors imports the schemas, not needed otherwise

        message = "missing or wrong API key: send the header Authorization: Bearer <key>"
        body = dumps({"detail": message, "errors": [{"field": "Authorization", "message": message, "type": "auth"}]})
        await send({
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="bptt-service"'),
            ],
        })
        await send({"type": "http.response.body", "body": body})

    def _authorised(self, scope: dict) -> bool:
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = token.strip()
                break
        ok = False
        for key in self.keys:  # no early exit
            ok |= hmac.compare_digest(given, key)
        return ok
