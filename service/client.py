"""An httpx client that speaks numpy: arrays in, ``Gradients`` out.

    from service.client import Client

    with Client("http://127.0.0.1:8000") as client:
        g = client.bptt(U, V, W, x, y)          # full BPTT
        g.loss, g.dLdU, g.dLdV, g.dLdW          # float, (H, C), (C, H), (H, H)

``AsyncClient`` has the same methods, awaited. An error answer raises
``ServerError`` carrying the service's message.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import orjson

from .engine import Gradients
from .errors import BpttError

__all__ = ["Client", "AsyncClient", "ServerError"]

DEFAULT_URL = "http://127.0.0.1:8000"


class ServerError(BpttError):
    """The service answered with an error status; ``detail`` is its message."""

    def __init__(self, status: int, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.errors = errors or []


def _bptt_body(U, V, W, x, y, bptt_truncate: int | None, s0) -> bytes:
    body: dict[str, Any] = {
        "U": np.ascontiguousarray(U, dtype=np.float64),
        "V": np.ascontiguousarray(V, dtype=np.float64),
        "W": np.ascontiguousarray(W, dtype=np.float64),
        "x": np.ascontiguousarray(x, dtype=np.int64),
        "y": np.ascontiguousarray(y, dtype=np.int64),
        "bptt_truncate": bptt_truncate,
    }
    if s0 is not None:
        body["s0"] = np.ascontiguousarray(s0, dtype=np.float64)
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _gradients(response: httpx.Response) -> Gradients:
    data = _json(response)
    return Gradients(
        loss=float(data["loss"]),
        dLdU=np.array(data["dLdU"], dtype=np.float64),
        dLdV=np.array(data["dLdV"], dtype=np.float64),
        dLdW=np.array(data["dLdW"], dtype=np.float64),
        dLds0=np.array(data["dLds0"], dtype=np.float64),
        final_state=np.array(data["final_state"], dtype=np.float64),
        tokens=int(data["tokens"]),
    )


def _json(response: httpx.Response) -> Any:
    """The decoded body of a success, or ServerError with the service's message."""
    if response.is_success:
        return orjson.loads(response.content)
    try:
        err = orjson.loads(response.content)
        raise ServerError(response.status_code, err["detail"], err.get("errors"))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise ServerError(response.status_code, response.text[:500] or response.reason_phrase) from None


_HEADERS = {"content-type": "application/json"}


class Client:
    """Synchronous client. Use as a context manager, or call ``close()``."""

    def __init__(self, base_url: str = DEFAULT_URL, *, timeout: float = 120.0, **httpx_options: Any) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout, **httpx_options)

    def bptt(self, U, V, W, x, y, *, bptt_truncate: int | None = None, s0=None) -> Gradients:
        """Loss and gradients of one sequence (``POST /bptt``); arrays as for ``engine.bptt``."""
        body = _bptt_body(U, V, W, x, y, bptt_truncate, s0)
        return _gradients(self._http.post("/bptt", content=body, headers=_HEADERS))

    def health(self) -> bool:
        """True when ``GET /healthz`` answers 200."""
        return self._http.get("/healthz").status_code == 200

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """Asynchronous client. Use with ``async with``, or await ``aclose()``."""

    def __init__(self, base_url: str = DEFAULT_URL, *, timeout: float = 120.0, **httpx_options: Any) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, **httpx_options)

    async def bptt(self, U, V, W, x, y, *, bptt_truncate: int | None = None, s0=None) -> Gradients:
        """Loss and gradients of one sequence (``POST /bptt``); arrays as for ``engine.bptt``."""
        body = _bptt_body(U, V, W, x, y, bptt_truncate, s0)
        return _gradients(await self._http.post("/bptt", content=body, headers=_HEADERS))

    async def health(self) -> bool:
        """True when ``GET /healthz`` answers 200."""
        return (await self._http.get("/healthz")).status_code == 200

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
