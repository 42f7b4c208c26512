"""An httpx client that speaks numpy: arrays in, results with arrays out.

    from service.client import Client

    with Client("http://127.0.0.1:8000") as client:
        g = client.bptt(U, V, W, x, y)          # full BPTT
        g.loss, g.dLdU, g.dLdV, g.dLdW          # float, (H, C), (C, H), (H, H)

``AsyncClient`` has the same methods, awaited. An error answer raises
``ServerError`` carrying the service's message. The client refuses, with the
server's own message, what it could not send faithfully (token ids that are not
integers); every option is a named keyword, so a misspelt one is a TypeError.

This module imports no server code: ``pip install bptt-service`` (without the
``server`` extra) is enough to use it. Request bodies and answers are built by
``Wire``, free of I/O; ``Client`` and ``AsyncClient`` only send them.
"""

from __future__ import annotations

import asyncio
import functools
import gzip as zlib_gzip
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import numpy as np

from .codec import DTYPES, Array, Encoding, dumps, from_wire, loads, to_wire, token_ids
from .errors import ServerError

__all__ = ["AsyncClient", "BatchResult", "BpttResult", "Client", "ServerError", "TraceResult", "VjpResult", "Wire"]

DEFAULT_URL = "http://127.0.0.1:8000"
Dtype = Literal["float64", "float32"]


@dataclass(frozen=True, kw_only=True)
class BpttResult:
    """The answer of ``POST /bptt``: the loss of one sequence and its gradients.

    Attributes
    ----------
    loss, mean_loss : float
        Summed cross-entropy, and per token.
    tokens : int
        T.
    dLdU : (H, C) ndarray
    dLdV : (C, H) ndarray
    dLdW : (H, H) ndarray
    dLds0, final_state : (H,) ndarrays
    dLdb : (H,) ndarray or None
        Only when the request had the bias ``b``.
    dLdc : (C,) ndarray or None
        Only when the request had the bias ``c``.
    clipped : dict or None
        Only with ``clip``: entries clipped per gradient.
    dLdb_hh : (G, H) ndarray or None
        Gated cells, when the request had ``b_hh``.
    dLdc0, final_cell : (H,) ndarrays or None
        The LSTM's: the gradient of the initial cell state and the last cell state.

    With ``cell="gru"`` or ``"lstm"``, dLdU is (G, H, C), dLdW (G, H, H) and dLdb (G, H).
    """

    loss: float
    mean_loss: float
    tokens: int
    dLdU: Array
    dLdV: Array
    dLdW: Array
    dLds0: Array
    final_state: Array
    dLdb: Array | None = None
    dLdc: Array | None = None
    clipped: dict[str, int] | None = None
    dLdb_hh: Array | None = None
    dLdc0: Array | None = None
    final_cell: Array | None = None


@dataclass(frozen=True, kw_only=True)
class BatchResult(BpttResult):
    """The answer of ``POST /bptt/batch``: as ``BpttResult``, summed over B sequences.

    ``losses`` (B,) holds each sequence's loss; ``dLds0`` and ``final_state`` are (B, H).
    """

    losses: Array


@dataclass(frozen=True)
class TraceResult:
    """The tutorial's deltas for one sequence (``POST /bptt`` with ``trace``).

    Attributes
    ----------
    delta_o : (T, C) ndarray or None
        None when the server left it out (T x C over its BPTT_MAX_TRACE_DELTA_O), and for the gated cells.
    deltas : list of T ndarrays
        ``deltas[t]`` is (L_t, H): row j is dE_t/dz_{t-j}. The vanilla cell's; empty for the gated cells.
    norms : (T, L) ndarray
        ``norms[t, j]`` = ||deltas[t][j]||, NaN where output t does not reach back j steps.
    dLds : (T, H) ndarray
        Every cell: dL/ds_k, the gradient of the loss with respect to the hidden state after step k.
    dLdc : (T, H) ndarray or None
        The LSTM's dL/dc_k, with respect to the cell state.
    state_norms : (T, L) ndarray
        Every cell: ``state_norms[t, j]`` = ||dE_t/ds_{t-j}||, NaN where output t does not reach back j steps.
    """

    delta_o: Array | None
    deltas: list[Array]
    norms: Array
    dLds: Array
    dLdc: Array | None
    state_norms: Array


@dataclass(frozen=True)
class VjpResult:
    """The answer of ``POST /vjp``: states and gradients in the request's layout.

    ``gradients`` holds dx, dh0 and the weights' gradients by the request's names
    (dWx, dWh, db; for Coursera's LSTM dWf ... dbo), and dc0 for the LSTM.
    """

    cell: str
    layout: str
    h: Array
    c: Array | None
    gradients: dict[str, Array]


class Wire:
    """Request bodies and answers of both clients, without I/O: arrays out, arrays back."""

    def __init__(self, encoding: Encoding, dtype: Dtype) -> None:
        if encoding not in ("json", "base64"):
            raise ValueError(f"encoding must be 'json' or 'base64', got {encoding!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        self.encoding = encoding
        self.dtype = dtype

    def array(self, a: Any) -> Any:
        """An array as the wire carries it, in the client's dtype."""
        return to_wire(np.asarray(a, dtype=DTYPES[self.dtype]), self.encoding)

    def shape(self, a: Any) -> dict[str, Any]:
        """An array's tensor object without its data: what a ``/cost`` dry run needs to price it."""
        return {"dtype": self.dtype, "shape": list(np.shape(a))}

    def _common(
        self,
        U: Any,
        V: Any,
        W: Any,
        *,
        bptt_truncate: int | None,
        b: Any,
        c: Any,
        clip: float | None,
        cell: str = "rnn",
        b_hh: Any = None,
        reset_after: bool = False,
        shapes_only: bool = False,
    ) -> dict[str, Any]:
        """The fields every compute request has; with ``shapes_only`` the weights without their data."""
        array = self.shape if shapes_only else self.array
        body: dict[str, Any] = {} if cell == "rnn" else {"cell": cell}
        if reset_after:
            body["reset_after"] = True
        body |= {
            "U": array(U),
            "V": array(V),
            "W": array(W),
            "encoding": self.encoding,
            "dtype": self.dtype,
            "bptt_truncate": bptt_truncate,
        }
        for name, value in (("b", b), ("b_hh", b_hh), ("c", c)):
            if value is not None:
                body[name] = array(value)
        if clip is not None:
            body["clip"] = float(clip)
        return body

    def _sequence(self, x: Any, y: Any, s0: Any, where: str = "", c0: Any = None) -> dict[str, Any]:
        seq: dict[str, Any] = {"x": token_ids(x, f"{where}x"), "y": token_ids(y, f"{where}y")}
        for name, value in (("s0", s0), ("c0", c0)):
            if value is not None:
                seq[name] = self.array(value)
        return seq

    def bptt_body(
        self,
        U: Any,
        V: Any,
        W: Any,
        x: Any,
        y: Any,
        *,
        s0: Any = None,
        bptt_truncate: int | None = None,
        b: Any = None,
        c: Any = None,
        clip: float | None = None,
        trace: bool = False,
        **gated: Any,
    ) -> bytes:
        """The body of ``POST /bptt``; ``gated``: cell, b_hh, c0, reset_after."""
        c0 = gated.pop("c0", None)
        body = self._common(U, V, W, bptt_truncate=bptt_truncate, b=b, c=c, clip=clip, **gated)
        body |= self._sequence(x, y, s0, c0=c0)
        if trace:
            body["trace"] = True
        return dumps(body)

    def batch_body(
        self,
        U: Any,
        V: Any,
        W: Any,
        xs: Sequence[Any],
        ys: Sequence[Any],
        *,
        s0: Sequence[Any] | None = None,
        bptt_truncate: int | None = None,
        b: Any = None,
        c: Any = None,
        clip: float | None = None,
        **gated: Any,
    ) -> bytes:
        """The body of ``POST /bptt/batch``; ``gated``: cell, b_hh, c0 (one per sequence), reset_after."""
        body = self.batch_bodies(U, V, W, xs, ys, s0=s0, bptt_truncate=bptt_truncate, b=b, c=c, clip=clip, **gated)
        return body(range(len(xs)))

    def batch_bodies(
        self,
        U: Any,
        V: Any,
        W: Any,
        xs: Sequence[Any],
        ys: Sequence[Any],
        *,
        s0: Sequence[Any] | None = None,
        bptt_truncate: int | None = None,
        b: Any = None,
        c: Any = None,
        clip: float | None = None,
        shapes_only: bool = False,
        **gated: Any,
    ) -> Callable[[Iterable[int]], bytes]:
        """The body of ``POST /bptt/batch`` for any group of the sequences of one batch (by index), as
        ``batch_body`` builds it for all of them: the weights and sequences are encoded once, whatever the
        number of groups (``bptt_batch(..., shards=N)`` sends several). With ``shapes_only``, the weights
        are tensor objects without data: the body of a ``/bptt/batch/cost`` dry run, a few kilobytes."""
        if len(xs) != len(ys):
            raise ValueError(f"need one y per x: {len(xs)} x, got {len(ys)} y")
        c0 = gated.pop("c0", None)
        s0s = [None] * len(xs) if s0 is None else list(s0)
        c0s = [None] * len(xs) if c0 is None else list(c0)
        common = self._common(U, V, W, bptt_truncate=bptt_truncate, b=b, c=c, clip=clip, shapes_only=shapes_only,
                              **gated)  # fmt: skip
        sequences = [
            self._sequence(x, y, s, f"sequences[{i}].", c0=cs)
            for i, (x, y, s, cs) in enumerate(zip(xs, ys, s0s, c0s, strict=True))
        ]

        def body(group: Iterable[int]) -> bytes:
            return dumps(common | {"sequences": [sequences[i] for i in group]})

        return body

    def binary_bodies(
        self,
        U: Any,
        V: Any,
        W: Any,
        xs: Sequence[Any],
        ys: Sequence[Any],
        *,
        s0: Sequence[Any] | None = None,
        bptt_truncate: int | None = None,
        b: Any = None,
        c: Any = None,
        cell: str = "rnn",
        b_hh: Any = None,
        c0: Sequence[Any] | None = None,
        reset_after: bool = False,
    ) -> Callable[[Sequence[int]], tuple[str, bytes, dict[str, str]]]:
        """The request (path, body, headers) of ``POST /v2/models/{model}/infer`` for any group of the
        sequences of one batch (by index), every tensor and every answer in raw little-endian bytes (the
        Open Inference Protocol's binary tensor extension): no base64 and no JSON of numbers either way.
        x and y are padded to [B, T] with ``lengths``; a sequence without s0 (or c0) starts from zeros,
        as on ``/bptt/batch``. The weights are converted once, whatever the number of groups."""
        if len(xs) != len(ys):
            raise ValueError(f"need one y per x: {len(xs)} x, got {len(ys)} y")
        dtype = np.dtype(DTYPES[self.dtype]).newbyteorder("<")
        given = {"U": U, "V": V, "W": W, "b": b, "b_hh": b_hh, "c": c}
        weights = {n: np.ascontiguousarray(a, dtype=dtype) for n, a in given.items() if a is not None}
        tokens = [
            (token_ids(x, f"sequences[{i}].x"), token_ids(y, f"sequences[{i}].y"))
            for i, (x, y) in enumerate(zip(xs, ys, strict=True))
        ]
        H = weights["W"].shape[-1]
        parameters: dict[str, Any] = {"binary_data_output": True}
        if bptt_truncate is not None:
            parameters["bptt_truncate"] = bptt_truncate
        if reset_after:
            parameters["reset_after"] = True
        path = "/v2/models/" + ("bptt" if cell == "rnn" else f"bptt-{cell}") + "/infer"

        def request(group: Sequence[int]) -> tuple[str, bytes, dict[str, str]]:
            lengths = np.array([len(tokens[i][0]) for i in group], dtype="<i8")
            x = np.zeros((len(group), int(lengths.max())), dtype="<i8")  # (B, T), padded at the end
            y = np.zeros_like(x)
            for row, i in enumerate(group):
                x[row, : lengths[row]], y[row, : lengths[row]] = tokens[i]
            arrays = weights | {"x": x, "y": y, "lengths": lengths}
            for name, rows in (("s0", s0), ("c0", c0)):
                if rows is not None and any(rows[i] is not None for i in group):  # (B, H); else zeros, as absent
                    arrays[name] = np.stack([np.zeros(H) if rows[i] is None else np.asarray(rows[i]) for i in group])
                    arrays[name] = arrays[name].astype(dtype)
            inputs = [
                {"name": n, "datatype": _V2_TYPES[a.dtype.str], "shape": list(a.shape),
                 "parameters": {"binary_data_size": a.nbytes}}
                for n, a in arrays.items()
            ]  # fmt: skip
            header = dumps({"inputs": inputs, "parameters": parameters})
            body = b"".join([header, *(a.data for a in arrays.values())])  # one copy of each array
            return path, body, {"content-type": "application/octet-stream", _V2_HEADER: str(len(header))}

        return request

    @staticmethod
    def binary_batch_result(response: httpx.Response) -> BatchResult:
        """The ``BatchResult`` of an answer of ``binary_bodies``' request, or ``ServerError``."""
        if not response.is_success:
            try:
                detail = str(loads(response.content)["error"])
            except (ValueError, KeyError, TypeError):
                detail = response.text[:500] or response.reason_phrase
            raise ServerError(response.status_code, detail)
        if _V2_HEADER not in response.headers:
            raise ServerError(response.status_code, f"the answer has no {_V2_HEADER} header: not a binary answer")
        start = int(response.headers[_V2_HEADER])
        content = memoryview(response.content)
        out: dict[str, Array] = {}
        for o in loads(bytes(content[:start]))["outputs"]:
            size = o["parameters"]["binary_data_size"]
            out[o["name"]] = np.frombuffer(content[start : start + size], dtype=_V2_DTYPES[o["datatype"]])
            out[o["name"]] = out[o["name"]].reshape(o["shape"])
            start += size
        return BatchResult(
            loss=float(out["loss"][0]), mean_loss=float(out["mean_loss"][0]), tokens=int(out["tokens"][0]),
            losses=out["losses"], dLdU=out["dLdU"], dLdV=out["dLdV"], dLdW=out["dLdW"], dLds0=out["dLds0"],
            final_state=out["final_state"], dLdb=out.get("dLdb"), dLdc=out.get("dLdc"), dLdb_hh=out.get("dLdb_hh"),
            dLdc0=out.get("dLdc0"), final_cell=out.get("final_cell"),
        )  # fmt: skip

    @staticmethod
    def admitted(response: httpx.Response) -> str | None:
        """From an answer of ``POST /bptt/batch/cost``: None when admitted, else the service's refusal."""
        data = decode(response)
        return None if data["admitted"] else str(data["refusal"])

    def vjp_body(self, arrays: dict[str, Any], *, layout: str, cell: str, extra: dict[str, Any] | None = None) -> bytes:
        """The body of ``POST /vjp`` (or ``/vjp/compare`` with ``extra``); arrays of any rank."""
        body: dict[str, Any] = {"cell": cell, "layout": layout, "encoding": self.encoding}
        body |= {k: self.array(v) for k, v in arrays.items() if v is not None}
        return dumps(body | (extra or {}))

    @staticmethod
    def vjp_result(response: httpx.Response) -> VjpResult:
        """The ``VjpResult`` of an answer of ``POST /vjp``, or ``ServerError``."""
        data = decode(response)
        return VjpResult(
            cell=data["cell"],
            layout=data["layout"],
            h=from_wire(data["h"], "h"),
            c=None if data["c"] is None else from_wire(data["c"], "c"),
            gradients={k: from_wire(v, k) for k, v in data["gradients"].items()},
        )

    @staticmethod
    def result(response: httpx.Response) -> BpttResult:
        """The ``BpttResult`` of an answer of ``POST /bptt``, or ``ServerError``."""
        data = decode(response)
        return BpttResult(**_scalars(data), **_arrays(data))

    @staticmethod
    def batch_result(response: httpx.Response) -> BatchResult:
        """The ``BatchResult`` of an answer of ``POST /bptt/batch``, or ``ServerError``."""
        data = decode(response)
        return BatchResult(**_scalars(data), **_arrays(data), losses=np.array(data["losses"], dtype=np.float64))

    @staticmethod
    def trace(response: httpx.Response) -> TraceResult:
        """The ``TraceResult`` of an answer of ``POST /bptt`` with ``trace``, or ``ServerError``."""
        data = decode(response)["trace"]
        deltas = [from_wire(d, "deltas") for d in data.get("deltas") or []]
        delta_o = None if data.get("delta_o") is None else from_wire(data["delta_o"], "delta_o")
        return TraceResult(
            delta_o=delta_o,
            deltas=deltas,
            norms=_ragged_rows(data.get("delta_norms") or []),
            dLds=from_wire(data["dLds"], "dLds"),
            dLdc=None if data.get("dLdc") is None else from_wire(data["dLdc"], "dLdc"),
            state_norms=_ragged_rows(data["state_norms"]),
        )


def _ragged_rows(rows: list[list[float]]) -> Array:
    """Rows of different lengths as one array, NaN-padded on the right."""
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), np.nan)
    for t, row in enumerate(rows):
        out[t, : len(row)] = row
    return out


def _scalars(data: dict[str, Any]) -> dict[str, Any]:
    return {"loss": float(data["loss"]), "mean_loss": float(data["mean_loss"]), "tokens": int(data["tokens"])}


def _arrays(data: dict[str, Any]) -> dict[str, Any]:
    """The answer's arrays (the optional ones None when absent) and ``clipped``."""
    out: dict[str, Any] = {n: from_wire(data[n], n) for n in ("dLdU", "dLdV", "dLdW", "dLds0", "final_state")}
    for name in ("dLdb", "dLdc", "dLdb_hh", "dLdc0", "final_cell"):
        out[name] = None if data.get(name) is None else from_wire(data[name], name)
    out["clipped"] = data.get("clipped")
    return out


def decode(response: httpx.Response) -> Any:
    """The decoded body of a success, or ``ServerError`` with the service's message."""
    if response.is_success:
        return loads(response.content)
    try:
        err = loads(response.content)
        detail, errors = err["detail"], err.get("errors")
    except (ValueError, KeyError, TypeError):
        raise ServerError(response.status_code, response.text[:500] or response.reason_phrase) from None
    raise ServerError(response.status_code, detail, errors)


_HEADERS = {"content-type": "application/json"}
_V2_HEADER = "inference-header-content-length"
_V2_TYPES = {"<f8": "FP64", "<f4": "FP32", "<i8": "INT64"}
_V2_DTYPES = {"FP64": "<f8", "FP32": "<f4", "INT64": "<i8", "INT32": "<i4"}


def _compressed(body: bytes) -> tuple[bytes, dict[str, str]]:
    """A request body as gzip (level 1: number text compresses about 3x for little CPU)."""
    return zlib_gzip.compress(body, compresslevel=1), {**_HEADERS, "content-encoding": "gzip"}


def _auth(api_key: str | None) -> dict[str, str]:
    return {} if api_key is None else {"authorization": f"Bearer {api_key}"}


# --- One batch over several requests (``bptt_batch(..., shards=N)``) ---------------------------------------------

_SUMMED = ("dLdU", "dLdV", "dLdW", "dLdb", "dLdb_hh", "dLdc")  # gradients of the summed loss
_ROWS = ("dLds0", "final_state", "dLdc0", "final_cell")  # one row per sequence


def shard_groups(lengths: Sequence[int], shards: int) -> list[list[int]]:
    """The indices of B sequences in at most ``shards`` groups of about equal token counts.

    Longest first, each into the group with the fewest tokens so far; each group in request order.
    """
    if shards < 1:
        raise ValueError(f"shards must be an integer >= 1, got {shards}")
    groups: list[list[int]] = [[] for _ in range(min(shards, len(lengths)))]
    tokens = [0] * len(groups)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        lightest = tokens.index(min(tokens))
        groups[lightest].append(i)
        tokens[lightest] += lengths[i]
    return [sorted(g) for g in groups if g]


def merge_batches(parts: Sequence[tuple[list[int], BatchResult]], clip: float | None) -> BatchResult:
    """One ``BatchResult`` from the answers of the groups of ``shard_groups``: the summed gradients added,
    the per-sequence rows and losses put back in request order; ``clip`` applied to the sums (as the
    service clips the gradients of the whole batch, not of each part)."""
    B = sum(len(group) for group, _ in parts)
    order = np.concatenate([np.asarray(group, dtype=np.intp) for group, _ in parts])
    merged: dict[str, Any] = {}
    for name in _SUMMED:
        values = [getattr(r, name) for _, r in parts]
        if values[0] is None:
            merged[name] = None
            continue
        total = values[0].copy()  # added in place: np.sum(values) would first stack the B parts
        for value in values[1:]:
            total += value
        merged[name] = total
    for name in _ROWS:
        values = [getattr(r, name) for _, r in parts]
        if values[0] is None:
            merged[name] = None
            continue
        rows = np.empty((B, *values[0].shape[1:]), dtype=values[0].dtype)
        rows[order] = np.concatenate(values)
        merged[name] = rows
    losses = np.empty(B)
    losses[order] = np.concatenate([r.losses for _, r in parts])
    loss = float(losses.sum())
    tokens = sum(r.tokens for _, r in parts)
    clipped = None
    if clip is not None:
        clipped = {}
        for name in ("dLdU", "dLdV", "dLdW", "dLdb", "dLdb_hh", "dLdc"):
            grad = merged[name]
            if grad is not None:
                bound = min(clip, float(np.finfo(grad.dtype).max))
                clipped[name] = int(np.count_nonzero(np.abs(grad) > bound))
                np.clip(grad, -bound, bound, out=grad)
    return BatchResult(loss=loss, mean_loss=loss / tokens, tokens=tokens, losses=losses, clipped=clipped, **merged)


class _Shards:
    """``bptt_batch(..., shards=N)`` without I/O: which groups to price, then which to send.

    The groups of ``shard_groups``, every body built from one encoding of the weights
    (``Wire.batch_bodies``), without ``clip`` (``merge_batches`` clips the sums). The whole batch is
    priced first, by one dry run (``POST /bptt/batch/cost``: the service's own estimate, from a body
    that gives the weights' shapes without their data); a part costs no more than the whole in any
    term, so when the whole is admitted so is every group, and no shard is refused. Otherwise each
    group is priced in turn and a refused one split in two, until every group is admitted; a sequence
    refused alone is a ``ServerError``.
    """

    def __init__(self, wire: Wire, U: Any, V: Any, W: Any, xs: Sequence[Any], ys: Sequence[Any], *, shards: int,
                 clip: float | None = None, **options: Any) -> None:  # fmt: skip
        # The dry run carries clip, which the shards do not: the service checks it as it would in one request.
        self.dry_run = wire.batch_bodies(U, V, W, xs, ys, shapes_only=True, clip=clip, **options)
        # Shards travel as binary tensors, but for the vanilla cell's biases, which the model bptt does not take,
        # and for a group whose x and y padded to [B, T] would be over twice its tokens (one long sequence among
        # many short ones): the dry run priced the unpadded request, and its body limit is for that one.
        rnn_biases = options.get("cell", "rnn") == "rnn" and (
            options.get("b") is not None or options.get("c") is not None
        )
        self.binary = None if rnn_biases else wire.binary_bodies(U, V, W, xs, ys, **options)
        self._rest = functools.partial(wire.batch_bodies, U, V, W, xs, ys, **options)  # built at first need
        self._body: Callable[[Iterable[int]], bytes] | None = None
        self.lengths = [len(x) for x in xs]
        self.whole: list[int] | None = list(range(len(xs)))  # priced first, then None
        self.unpriced = shard_groups(self.lengths, shards)
        self.admitted: list[list[int]] = []

    def request(self, group: list[int]) -> tuple[str, bytes, dict[str, str] | None]:
        """Path, body and headers of ``group``'s request (None: JSON headers, the client's to choose)."""
        lengths = [self.lengths[i] for i in group]
        if self.binary is not None and len(group) * max(lengths) <= 2 * sum(lengths):
            return self.binary(group)
        if self._body is None:
            self._body = self._rest()  # the weights as base64, once
        return "/bptt/batch", self._body(group), None

    @staticmethod
    def answer(path: str, response: httpx.Response) -> BatchResult:
        """The ``BatchResult`` of the answer to a group's request to ``path``, or ``ServerError``."""
        return Wire.binary_batch_result(response) if path.startswith("/v2/") else Wire.batch_result(response)

    def next(self) -> list[int] | None:
        """The group to price next (the whole batch first), or None when every group is admitted."""
        if self.whole is not None:
            return self.whole
        return self.unpriced[-1] if self.unpriced else None

    def priced(self, group: list[int], answer: httpx.Response) -> None:
        """Take the dry run's answer for ``group`` (the one ``next`` gave)."""
        refusal = Wire.admitted(answer)
        if group is self.whole:
            self.whole = None
            if refusal is None:
                self.admitted, self.unpriced = self.unpriced, []
            return
        self.unpriced.pop()
        if refusal is None:
            self.admitted.append(group)
        elif len(group) == 1:
            raise ServerError(413, f"sequence {group[0]} alone is refused: {refusal}")
        else:
            self.unpriced += [[group[i] for i in half] for half in shard_groups([self.lengths[i] for i in group], 2)]


class Client:
    """Synchronous client. Use as a context manager, or call ``close()``.

    ``encoding`` is how arrays travel both ways ("base64", the default, or
    "json" for nested lists); ``dtype`` the precision the service computes in;
    ``api_key`` is sent as ``Authorization: Bearer <key>``; ``timeout`` in seconds;
    ``gzip`` compresses request bodies (worth it for ``encoding="json"``, about 3x).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        encoding: Encoding = "base64",
        dtype: Dtype = "float64",
        api_key: str | None = None,
        timeout: float = 120.0,
        gzip: bool = False,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.wire = Wire(encoding, dtype)
        self.gzip = gzip
        self._transport = transport
        # One TLS context for this client and its shards' connections: building one takes 20-40 ms.
        self._ssl = httpx.create_ssl_context()
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=_auth(api_key), transport=transport,
                                  verify=self._ssl)  # fmt: skip

    def _encoded(self, body: bytes) -> tuple[bytes, dict[str, str]]:
        return _compressed(body) if self.gzip else (body, _HEADERS)

    def _post(self, path: str, body: bytes) -> httpx.Response:
        content, headers = self._encoded(body)
        return self._http.post(path, content=content, headers=headers)

    def bptt(
        self,
        U: Any,
        V: Any,
        W: Any,
        x: Any,
        y: Any,
        *,
        s0: Any = None,
        bptt_truncate: int | None = None,
        b: Any = None,
        c: Any = None,
        clip: float | None = None,
        cell: str = "rnn",
        b_hh: Any = None,
        c0: Any = None,
        reset_after: bool = False,
    ) -> BpttResult:
        """Loss and gradients of one sequence (``POST /bptt``).

        U (H, C), V (C, H), W (H, H); x, y (T,) integer token ids; s0 (H,);
        biases b (H,), c (C,); ``bptt_truncate`` None (full BPTT) or K >= 0;
        ``clip`` > 0 clips every gradient entry. ``cell="gru"`` or ``"lstm"``: U (G, H, C),
        W (G, H, H), b and b_hh (G, H), c0 (H,) for the LSTM, ``reset_after`` for the GRU
        (README, "Gated cells").
        """
        gated = {"cell": cell, "b_hh": b_hh, "c0": c0, "reset_after": reset_after}
        body = self.wire.bptt_body(U, V, W, x, y, s0=s0, bptt_truncate=bptt_truncate, b=b, c=c, clip=clip, **gated)
        return Wire.result(self._post("/bptt", body))

    def bptt_batch(
        self,
        U: Any,
        V: Any,
        W: Any,
        xs: Sequence[Any],
        ys: Sequence[Any],
        *,
        s0: Sequence[Any] | None = None,
        bptt_truncate: int | None = None,
        b: Any = None,
        c: Any = None,
        clip: float | None = None,
        cell: str = "rnn",
        b_hh: Any = None,
        c0: Sequence[Any] | None = None,
        reset_after: bool = False,
        shards: int = 1,
    ) -> BatchResult:
        """Losses and summed gradients of several sequences (``POST /bptt/batch``); options as ``bptt``.

        ``shards=N`` spreads the batch over up to N concurrent requests, each on a connection of its
        own (so a load balancer spreads them over replicas despite keep-alive), groups of about equal
        token counts sized with the service's own cost estimate (``/bptt/batch/cost``: the whole batch
        once, each group only when the whole is refused) so that no shard is refused; the answers are
        summed into one ``BatchResult`` (clipping, if asked, applied to the sums). README, "Deploying:
        one batch over several replicas".
        """
        gated = {"cell": cell, "b_hh": b_hh, "c0": c0, "reset_after": reset_after}
        if shards == 1:
            body = self.wire.batch_body(U, V, W, xs, ys, s0=s0, bptt_truncate=bptt_truncate, b=b, c=c, clip=clip,
                                        **gated)  # fmt: skip
            return Wire.batch_result(self._post("/bptt/batch", body))
        plan = _Shards(self.wire, U, V, W, xs, ys, shards=shards, clip=clip, s0=s0, bptt_truncate=bptt_truncate,
                       b=b, c=c, **gated)  # fmt: skip
        while (group := plan.next()) is not None:
            plan.priced(group, self._post("/bptt/batch/cost", plan.dry_run(group)))

        def send(group: list[int]) -> tuple[list[int], BatchResult]:
            path, content, headers = plan.request(group)
            if headers is None:
                content, headers = self._encoded(content)
            with httpx.Client(base_url=self._http.base_url, headers=self._http.headers, timeout=self._http.timeout,
                              transport=self._transport, verify=self._ssl) as alone:  # fmt: skip
                return group, plan.answer(path, alone.post(path, content=content, headers=headers))

        with ThreadPoolExecutor(len(plan.admitted)) as pool:
            parts = list(pool.map(send, plan.admitted))
        return merge_batches(parts, clip)

    def trace(
        self,
        U: Any,
        V: Any,
        W: Any,
        x: Any,
        y: Any,
        *,
        s0: Any = None,
        bptt_truncate: int | None = None,
        b: Any = None,
        c: Any = None,
        **gated: Any,
    ) -> TraceResult:
        """The tutorial's deltas for one sequence (``POST /bptt`` with ``trace``); ``gated`` as in ``bptt``:
        cell, b_hh, c0, reset_after."""
        body = self.wire.bptt_body(U, V, W, x, y, s0=s0, bptt_truncate=bptt_truncate, b=b, c=c, trace=True, **gated)
        return Wire.trace(self._post("/bptt", body))

    def vjp(self, x: Any, h0: Any, Wx: Any, Wh: Any, b: Any, dh: Any, *, layout: str = "cs231n") -> VjpResult:
        """The vanilla recurrence's states and vector-Jacobian product (``POST /vjp``), as the course's
        ``rnn_backward`` computes them; arrays in the ``layout``'s shapes (README, "Checking a course assignment")."""
        arrays = {"x": x, "h0": h0, "Wx": Wx, "Wh": Wh, "b": b, "dh": dh}
        body = self.wire.vjp_body(arrays, layout=layout, cell="rnn")
        return Wire.vjp_result(self._post("/vjp", body))

    def lstm_vjp(
        self, x: Any, h0: Any, weights: dict[str, Any], dh: Any, *, layout: str = "cs231n", c0: Any = None
    ) -> VjpResult:
        """The LSTM's (``POST /vjp`` with cell "lstm"); ``weights`` by the layout's names (Wx, Wh, b, or Wf ... bo)."""
        body = self.wire.vjp_body({"x": x, "h0": h0, "dh": dh, "c0": c0, **weights}, layout=layout, cell="lstm")
        return Wire.vjp_result(self._post("/vjp", body))

    def vjp_compare(
        self,
        x: Any,
        h0: Any,
        Wx: Any,
        Wh: Any,
        b: Any,
        dh: Any,
        *,
        layout: str = "cs231n",
        dx: Any = None,
        dh0: Any = None,
        dWx: Any = None,
        dWh: Any = None,
        db: Any = None,
        tolerance: float = 1e-6,
    ) -> dict[str, Any]:
        """Your ``rnn_backward``'s gradients against the service's (``POST /vjp/compare``): each one's error,
        and the classic mistakes your answer matches."""
        arrays = {"x": x, "h0": h0, "Wx": Wx, "Wh": Wh, "b": b, "dh": dh}
        arrays |= {"dx": dx, "dh0": dh0, "dWx": dWx, "dWh": dWh, "db": db}
        body = self.wire.vjp_body(arrays, layout=layout, cell="rnn", extra={"tolerance": tolerance})
        result: dict[str, Any] = decode(self._post("/vjp/compare", body))
        return result

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
        dtype: Dtype = "float64",
        api_key: str | None = None,
        timeout: float = 120.0,
        gzip: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.wire = Wire(encoding, dtype)
        self.gzip = gzip
        self._transport = transport
        self._ssl = httpx.create_ssl_context()  # as Client's
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=_auth(api_key),
                                       transport=transport, verify=self._ssl)  # fmt: skip

    def _encoded(self, body: bytes) -> tuple[bytes, dict[str, str]]:
        return _compressed(body) if self.gzip else (body, _HEADERS)

    async def _post(self, path: str, body: bytes) -> httpx.Response:
        content, headers = self._encoded(body)
        return await self._http.post(path, content=content, headers=headers)

    async def bptt(
        self,
        U: Any,
        V: Any,
        W: Any,
        x: Any,
        y: Any,
        *,
        s0: Any = None,
        bptt_truncate: int | None = None,
        b: Any = None,
        c: Any = None,
        clip: float | None = None,
        cell: str = "rnn",
        b_hh: Any = None,
        c0: Any = None,
        reset_after: bool = False,
    ) -> BpttResult:
        """Loss and gradients of one sequence (``POST /bptt``); as ``Client.bptt``."""
        gated = {"cell": cell, "b_hh": b_hh, "c0": c0, "reset_after": reset_after}
        body = self.wire.bptt_body(U, V, W, x, y, s0=s0, bptt_truncate=bptt_truncate, b=b, c=c, clip=clip, **gated)
        return Wire.result(await self._post("/bptt", body))

    async def bptt_batch(
        self,
        U: Any,
        V: Any,
        W: Any,
        xs: Sequence[Any],
        ys: Sequence[Any],
        *,
        s0: Sequence[Any] | None = None,
        bptt_truncate: int | None = None,
        b: Any = None,
        c: Any = None,
        clip: float | None = None,
        cell: str = "rnn",
        b_hh: Any = None,
        c0: Sequence[Any] | None = None,
        reset_after: bool = False,
        shards: int = 1,
    ) -> BatchResult:
        """Losses and summed gradients of several sequences (``POST /bptt/batch``); ``shards`` as in
        ``Client.bptt_batch``."""
        gated = {"cell": cell, "b_hh": b_hh, "c0": c0, "reset_after": reset_after}
        if shards == 1:
            body = self.wire.batch_body(U, V, W, xs, ys, s0=s0, bptt_truncate=bptt_truncate, b=b, c=c, clip=clip,
                                        **gated)  # fmt: skip
            return Wire.batch_result(await self._post("/bptt/batch", body))
        plan = _Shards(self.wire, U, V, W, xs, ys, shards=shards, clip=clip, s0=s0, bptt_truncate=bptt_truncate,
                       b=b, c=c, **gated)  # fmt: skip
        while (group := plan.next()) is not None:
            plan.priced(group, await self._post("/bptt/batch/cost", plan.dry_run(group)))

        async def send(group: list[int]) -> tuple[list[int], BatchResult]:
            path, content, headers = plan.request(group)
            if headers is None:
                content, headers = self._encoded(content)
            async with httpx.AsyncClient(base_url=self._http.base_url, headers=self._http.headers,
                                         timeout=self._http.timeout, transport=self._transport,
                                         verify=self._ssl) as alone:  # fmt: skip
                return group, plan.answer(path, await alone.post(path, content=content, headers=headers))

        parts = await asyncio.gather(*(send(g) for g in plan.admitted))
        return merge_batches(parts, clip)

    async def trace(
        self,
        U: Any,
        V: Any,
        W: Any,
        x: Any,
        y: Any,
        *,
        s0: Any = None,
        bptt_truncate: int | None = None,
        b: Any = None,
        c: Any = None,
        **gated: Any,
    ) -> TraceResult:
        """The tutorial's deltas for one sequence; as ``Client.trace``."""
        body = self.wire.bptt_body(U, V, W, x, y, s0=s0, bptt_truncate=bptt_truncate, b=b, c=c, trace=True, **gated)
        return Wire.trace(await self._post("/bptt", body))

    async def vjp(self, x: Any, h0: Any, Wx: Any, Wh: Any, b: Any, dh: Any, *, layout: str = "cs231n") -> VjpResult:
        """The vanilla recurrence's states and vector-Jacobian product; as ``Client.vjp``."""
        arrays = {"x": x, "h0": h0, "Wx": Wx, "Wh": Wh, "b": b, "dh": dh}
        body = self.wire.vjp_body(arrays, layout=layout, cell="rnn")
        return Wire.vjp_result(await self._post("/vjp", body))

    async def lstm_vjp(
        self, x: Any, h0: Any, weights: dict[str, Any], dh: Any, *, layout: str = "cs231n", c0: Any = None
    ) -> VjpResult:
        """The LSTM's; as ``Client.lstm_vjp``."""
        body = self.wire.vjp_body({"x": x, "h0": h0, "dh": dh, "c0": c0, **weights}, layout=layout, cell="lstm")
        return Wire.vjp_result(await self._post("/vjp", body))

    async def health(self) -> bool:
        """True when ``GET /healthz`` answers 200."""
        return (await self._http.get("/healthz")).status_code == 200

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
