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

from . import tensors
from .engine import BatchGradients, Gradients, Trace
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


class _Wire:
    """Request bodies and answers of both clients: arrays out, arrays back."""

    def __init__(self, encoding: Encoding, dtype: str) -> None:
        if encoding not in ("json", "base64"):
            raise ValueError(f"encoding must be 'json' or 'base64', got {encoding!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        self.encoding = encoding
        self.dtype = dtype

    def _array(self, a: Any) -> Any:
        a = np.asarray(a)
        wire = np.float32 if self.dtype == "float32" else np.float64
        return tensors.to_wire(a.astype(wire, copy=False), self.encoding)

    def _common(self, U, V, W, options: dict[str, Any]) -> dict[str, Any]:
        body = {
            "U": self._array(U),
            "V": self._array(V),
            "W": self._array(W),
            "encoding": self.encoding,
            "dtype": self.dtype,
            "bptt_truncate": options.get("bptt_truncate"),
        }
        for name in ("b", "c"):
            if options.get(name) is not None:
                body[name] = self._array(options[name])
        if options.get("clip") is not None:
            body["clip"] = float(options["clip"])
        return body

    def bptt_body(self, U, V, W, x, y, s0=None, *, trace: bool = False, **options: Any) -> bytes:
        body = self._common(U, V, W, options) | _sequence(x, y, s0, self._array)
        if trace:
            body["trace"] = True
        return tensors.dumps(body)

    def batch_body(self, U, V, W, xs, ys, s0s=None, **options: Any) -> bytes:
        if len(xs) != len(ys):
            raise ValueError(f"need one y per x: {len(xs)} x, got {len(ys)} y")
        s0s = [None] * len(xs) if s0s is None else s0s
        body = self._common(U, V, W, options)
        body["sequences"] = [_sequence(x, y, s0, self._array) for x, y, s0 in zip(xs, ys, s0s)]
        return tensors.dumps(body)

    @staticmethod
    def gradients(response: httpx.Response) -> Gradients:
        data = _json(response)
        return Gradients(loss=float(data["loss"]), tokens=int(data["tokens"]), **_arrays(data))

    @staticmethod
    def batch_gradients(response: httpx.Response, xs) -> BatchGradients:
        data = _json(response)
        return BatchGradients(
            loss=float(data["loss"]),
            losses=np.array(data["losses"], dtype=np.float64),
            lengths=np.array([len(x) for x in xs]),
            **_arrays(data),
        )

    @staticmethod
    def trace(response: httpx.Response) -> Trace:
        data = _json(response)["trace"]
        deltas = [_array(d, "deltas") for d in data["deltas"]]
        lags = max(len(d) for d in deltas)
        norms = np.full((len(deltas), lags), np.nan)
        for t, row in enumerate(data["delta_norms"]):
            norms[t, : len(row)] = row
        delta_o = None if data["delta_o"] is None else _array(data["delta_o"], "delta_o")
        return Trace(delta_o=delta_o, deltas=deltas, norms=norms)


def _arrays(data: dict[str, Any]) -> dict[str, Any]:
    """The answer's arrays (optional ones None when absent) and ``clipped``."""
    out: dict[str, Any] = {name: _array(data[name], name) for name in ("dLdU", "dLdV", "dLdW", "dLds0", "final_state")}
    for name in ("dLdb", "dLdc"):
        out[name] = None if data.get(name) is None else _array(data[name], name)
    out["clipped"] = data.get("clipped")
    return out


def _sequence(x, y, s0, encode) -> dict[str, Any]:
    seq: dict[str, Any] = {"x": np.asarray(x, dtype=np.int64), "y": np.asarray(y, dtype=np.int64)}
    if s0 is not None:
        seq["s0"] = encode(s0)
    return seq


def _array(value: Any, name: str) -> np.ndarray:
    """An answer's array, from nested lists or a base64 tensor object."""
    if isinstance(value, dict):
        return tensors.from_base64(value["dtype"], value["shape"], value["data"], name)
    return np.array(value, dtype=np.float64)


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


def _auth(api_key: str | None) -> dict[str, str]:
    return {} if api_key is None else {"authorization": f"Bearer {api_key}"}
Encoding = tensors.Encoding
DTYPES = tensors.DTYPES


class Client:
    """Synchronous client. Use as a context manager, or call ``close()``.

    ``encoding`` is how arrays travel both ways ("base64", the default, or
    "json" for nested lists); ``dtype`` the precision the service computes in;
    ``api_key`` is sent as ``Authorization: Bearer <key>``.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        encoding: Encoding = "base64",
        dtype: str = "float64",
        api_key: str | None = None,
        timeout: float = 120.0,
        **httpx_options: Any,
    ) -> None:
        self._wire = _Wire(encoding, dtype)
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=_auth(api_key), **httpx_options)

    def bptt(self, U, V, W, x, y, *, s0=None, **options: Any) -> Gradients:
        """Loss and gradients of one sequence (``POST /bptt``).

        Arrays and options (``bptt_truncate``, ``b``, ``c``, ``clip``) as for ``engine.bptt``.
        """
        body = self._wire.bptt_body(U, V, W, x, y, s0, **options)
        return self._wire.gradients(self._http.post("/bptt", content=body, headers=_HEADERS))

    def bptt_batch(self, U, V, W, xs, ys, *, s0=None, **options: Any) -> BatchGradients:
        """Losses and summed gradients of several sequences (``POST /bptt/batch``)."""
        body = self._wire.batch_body(U, V, W, xs, ys, s0, **options)
        return self._wire.batch_gradients(self._http.post("/bptt/batch", content=body, headers=_HEADERS), xs)

    def trace(self, U, V, W, x, y, *, s0=None, **options: Any) -> Trace:
        """The seed's deltas for one sequence (``POST /bptt`` with ``trace``), as ``engine.trace`` returns them."""
        body = self._wire.bptt_body(U, V, W, x, y, s0, trace=True, **options)
        return self._wire.trace(self._http.post("/bptt", content=body, headers=_HEADERS))

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
    """Asynchronous client, the options of ``Client``. Use with ``async with``, or await ``aclose()``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        encoding: Encoding = "base64",
        dtype: str = "float64",
        api_key: str | None = None,
        timeout: float = 120.0,
        **httpx_options: Any,
    ) -> None:
        self._wire = _Wire(encoding, dtype)
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=_auth(api_key), **httpx_options)

    async def bptt(self, U, V, W, x, y, *, s0=None, **options: Any) -> Gradients:
        """Loss and gradients of one sequence (``POST /bptt``); as ``Client.bptt``."""
        body = self._wire.bptt_body(U, V, W, x, y, s0, **options)
        return self._wire.gradients(await self._http.post("/bptt", content=body, headers=_HEADERS))

    async def bptt_batch(self, U, V, W, xs, ys, *, s0=None, **options: Any) -> BatchGradients:
        """Losses and summed gradients of several sequences (``POST /bptt/batch``)."""
        body = self._wire.batch_body(U, V, W, xs, ys, s0, **options)
        return self._wire.batch_gradients(await self._http.post("/bptt/batch", content=body, headers=_HEADERS), xs)

    async def trace(self, U, V, W, x, y, *, s0=None, **options: Any) -> Trace:
        """The seed's deltas for one sequence; as ``Client.trace``."""
        body = self._wire.bptt_body(U, V, W, x, y, s0, trace=True, **options)
        return self._wire.trace(await self._http.post("/bptt", content=body, headers=_HEADERS))

    async def health(self) -> bool:
        """True when ``GET /healthz`` answers 200."""
        return (await self._http.get("/healthz")).status_code == 200

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
