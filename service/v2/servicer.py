"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` and ``grpc.health.v1``.

Started by the app's lifespan when BPTT_GRPC_PORT is set (``start``), in uvicorn's
event loop: every call takes a slot of the app's one compute pool, so a single
queue bound holds for HTTP and gRPC together, and its message counts with the
HTTP bodies against BPTT_MAX_BYTES_IN_FLIGHT until its answer is sent (the queue
bound alone would let max_queue messages of max_body_bytes wait in memory).
``ModelInfer`` decodes its message
into the ``protocol.Call`` that the HTTP route builds from JSON (``decode``), and
``dataplane.infer`` admits and computes it in a compute thread, within the
client's gRPC deadline capped by BPTT_REQUEST_TIMEOUT; a call the client cancels
is stopped like an HTTP request whose client disconnects. Outputs come back as
little-endian bytes in ``raw_output_contents``.

Errors are the status codes of ``errors.TABLE``'s gRPC column with the messages
the HTTP routes give; ``x-request-id`` (the client's, or a new one) is in the
trailing metadata. With BPTT_API_KEY set, every call but the health service's
needs the metadata ``authorization: Bearer <key>``. The health service answers
SERVING once the engine's self-check passed (``""`` and the service's name).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
from fastapi import FastAPI
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .. import admission, errors
from ..codec import Array, check_finite, element_count, from_bytes
from ..compute import Pool
from ..errors import BpttError, InputError, LimitError, Unauthorised
from ..middleware import Bodies, authorised, request_id_of
from ..quota import Quotas, key_id
from ..settings import Settings
from . import dataplane, protocol
from .proto import inference_pb2 as pb
from .proto import inference_pb2_grpc as pb_grpc

__all__ = ["SERVICE", "GrpcServer", "Servicer", "decode", "encode", "start"]

log = logging.getLogger("service")
access_log = logging.getLogger("service.access")

SERVICE = "inference.GRPCInferenceService"

Reply = TypeVar("Reply")
Context = Any  # grpc.aio.ServicerContext (grpc ships no type information)

# The typed field of InferTensorContents that carries each numpy dtype.
CONTENTS = {"float64": "fp64_contents", "float32": "fp32_contents", "int64": "int64_contents", "int32": "int_contents"}


@dataclass(frozen=True)
class Received:
    """A ``ModelInferRequest`` and the size of its serialized bytes (``len``, where ``ByteSize()`` would
    walk a message of tens of megabytes in the event loop)."""

    size: int
    message: pb.ModelInferRequest

    @classmethod
    def parse(cls, data: bytes) -> Received:
        return cls(len(data), pb.ModelInferRequest.FromString(data))


class Servicer:
    """The RPCs of ``inference.GRPCInferenceService``, for the one model ``bptt``."""

    def __init__(self, app: FastAPI) -> None:
        self.state = app.state
        self.settings: Settings = app.state.settings
        self.keys = [k.encode() for k in self.settings.api_keys]

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        async def answer() -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self._call(context, "ServerLive", answer)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        async def answer() -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=bool(self.state.ready))

        return await self._call(context, "ServerReady", answer)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        async def answer() -> pb.ModelReadyResponse:
            protocol.check_model(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=bool(self.state.ready))

        return await self._call(context, "ModelReady", answer)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        async def answer() -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(**protocol.server_metadata())

        return await self._call(context, "ServerMetadata", answer)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        async def answer() -> pb.ModelMetadataResponse:
            meta = protocol.model_metadata(protocol.check_model(request.name, request.version or None).name)
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=meta["name"],
                versions=meta["versions"],
                platform=meta["platform"],
                inputs=[tensor(**t) for t in meta["inputs"]],
                outputs=[tensor(**t) for t in meta["outputs"]],
            )

        return await self._call(context, "ModelMetadata", answer)

    async def ModelInfer(self, received: Received, context: Context) -> pb.ModelInferResponse:
        request = received.message

        async def answer() -> pb.ModelInferResponse:
            model = protocol.check_model(request.model_name, request.model_version or None)

            def work() -> pb.ModelInferResponse:  # in a compute thread
                call = decode(request, self.settings, model)
                return encode(call, dataplane.infer(call, self.settings))

            return await self._compute(context, work, held=received.size)

        return await self._call(context, "ModelInfer", answer)

    async def _call(self, context: Context, method: str, answer: Callable[[], Awaitable[Reply]]) -> Reply:
        """Authenticate, answer, and turn an error into its status code; one access-log line."""
        start = time.perf_counter()
        metadata = dict(context.invocation_metadata() or ())
        rid = request_id_of(str(metadata.get("x-request-id", "")))
        context.set_trailing_metadata((("x-request-id", rid),))
        code, message = "OK", ""
        try:
            header = str(metadata.get("authorization", "")).encode("latin-1")
            if self.keys and not authorised(header, self.keys):
                raise Unauthorised()
            quotas: Quotas | None = self.state.quotas
            if quotas is not None:  # keys are required with a quota: this one is valid
                refused = quotas.refusal(key_id(header.partition(b" ")[2].strip()))
                if refused is not None:
                    raise refused
            return await answer()
        except BpttError as exc:
            code, message = errors.outcome(exc).grpc, errors.body(exc)["detail"]
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            log.exception("unhandled error, request id %s", rid)
            code, message = "INTERNAL", f"internal server error; report request id {rid}"
        finally:
            elapsed = time.perf_counter() - start
            access_log.info(
                "GRPC %s %s %.1fms id=%s",
                method,
                code,
                elapsed * 1e3,
                rid,
                extra={"request_id": rid, "method": "GRPC", "path": f"/{SERVICE}/{method}", "status": code,
                       "duration_ms": round(elapsed * 1e3, 3)},
            )  # fmt: skip
        await context.abort(grpc.StatusCode[code], message)  # raises
        raise AssertionError("unreachable: abort raises")

    async def _compute(self, context: Context, work: Callable[[], Reply], *, held: int = 0) -> Reply:
        """Run ``work`` in the compute pool, within the client's deadline capped by the server's.

        The slot and the thread run in a task of their own, shielded from grpc's
        cancellation of the handler: a call the client cancels (or whose deadline
        passes) ends the RPC, and its done-callback stops the work at its next
        checkpoint, as an HTTP client's disconnect does. The slot is held until
        the thread has stopped, so the queue bound counts it until then; so are
        the ``held`` bytes of the message (BPTT_MAX_BYTES_IN_FLIGHT, with the HTTP
        bodies), which the work holds until it ends.
        """
        pool: Pool = self.state.pool
        seconds = context.time_remaining()  # None without a client deadline
        ended = asyncio.Event()
        context.add_done_callback(lambda _: ended.set())

        async def gone() -> None:
            await ended.wait()

        bodies: Bodies = self.state.bodies

        async def run() -> Reply:
            bodies.take(held)  # Busy (UNAVAILABLE) past the limit, counting nothing
            try:
                async with pool.slot(seconds) as slot:
                    return await slot.run(work, disconnected=gone)
            finally:
                bodies.give(held)

        task = asyncio.ensure_future(run())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            ended.set()
            task.add_done_callback(_retrieve)
            raise


def _retrieve(task: asyncio.Future[Any]) -> None:
    """The outcome of work whose call was cancelled: nobody is waiting for it."""
    if not task.cancelled():
        task.exception()


def decode(request: pb.ModelInferRequest, settings: Settings, model: protocol.Model) -> protocol.Call:
    """A ``ModelInferRequest`` as the ``protocol.Call`` the HTTP route builds from JSON, with the same checks.

    Tensors come from ``raw_input_contents`` (one entry per input, little-endian
    bytes) or from each input's typed ``contents``; not both.
    """
    params = {key: _value(p) for key, p in request.parameters.items()}
    truncate = protocol.truncation(params.get("bptt_truncate"))
    reset_after = protocol.reset_after(model, params.get("reset_after"))
    raw = request.raw_input_contents
    inputs = request.inputs
    if raw and len(raw) != len(inputs):
        raise InputError(
            f"raw_input_contents has {len(raw)} entries but the request has {len(inputs)} inputs: "
            "send one entry per input, in the order of inputs",
            field="raw_input_contents",
        )
    _price_contents(request, settings)
    arrays: dict[str, Array] = {}
    for i, tensor in enumerate(inputs):
        name = tensor.name
        dtype = protocol.input_dtype(model, name, tensor.datatype, arrays)
        shape = list(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise InputError(
                    f"{name} has contents, but the request sends raw_input_contents: send one or the other",
                    field=f"{name}.contents",
                )
            arrays[name] = from_bytes(raw[i], dtype, shape, name, where=f"{name} (raw_input_contents[{i}])")
        elif tensor.HasField("contents"):
            arrays[name] = _from_contents(tensor, dtype, shape)
        else:
            raise InputError(f"{name} has neither contents nor an entry in raw_input_contents", field=name)
    protocol.check_required(model, arrays)
    outputs = protocol.output_names(model, [o.name for o in request.outputs], arrays)
    return protocol.Call(
        arrays=arrays,
        bptt_truncate=truncate,
        request_id=request.id or None,
        outputs=outputs,
        binary=dict.fromkeys(outputs, True),
        model=model.name,
        reset_after=reset_after,
    )


def _value(p: pb.InferParameter) -> bool | int | float | str | None:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _price_contents(request: pb.ModelInferRequest, settings: Settings) -> None:
    """Typed contents become Python numbers one by one, holding the GIL, like JSON number text:
    priced the same way (BPTT_MAX_PARSE_SECONDS) before they are read."""
    numbers = 0
    for tensor in request.inputs:
        if tensor.HasField("contents"):
            numbers += sum(len(getattr(tensor.contents, f)) for f in CONTENTS.values())
    seconds = numbers * admission.PARSE_SECONDS_PER_NUMBER
    if seconds > settings.max_parse_seconds:
        raise LimitError(
            f"the inputs' contents hold {numbers:,} numbers: reading them would take about {seconds:.2g} s, over "
            f"the limit of {settings.max_parse_seconds:g} s (setting BPTT_MAX_PARSE_SECONDS); send the tensors "
            "as raw_input_contents, which are read in milliseconds",
            field="contents",
        )


def _from_contents(tensor: pb.ModelInferRequest.InferInputTensor, dtype: str, shape: list[int]) -> Array:
    name = tensor.name
    field = CONTENTS[dtype]
    values = getattr(tensor.contents, field)
    count = element_count(shape, name)
    if len(values) != count:
        raise InputError(
            f"{name}.contents.{field} holds {len(values)} elements, but shape {shape} of {tensor.datatype} "
            f"needs {count}",
            field=f"{name}.contents.{field}",
        )
    a = np.array(values, dtype=dtype).reshape(shape)
    if a.dtype.kind == "f":
        check_finite(a, name)
    return a


def encode(call: protocol.Call, results: dict[str, Array]) -> pb.ModelInferResponse:
    """The outputs asked for, each as little-endian bytes in ``raw_output_contents``."""
    response = pb.ModelInferResponse(
        model_name=call.model, model_version=protocol.MODEL_VERSION, id=call.request_id or ""
    )
    for name in call.outputs:
        a = np.ascontiguousarray(results[name])
        response.outputs.add(name=name, datatype=protocol.datatype_of(a), shape=a.shape)
        response.raw_output_contents.append(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    return response


class GrpcServer:
    """The running gRPC server of an app, and its health service."""

    def __init__(self, server: Any, health_servicer: Any, port: int) -> None:
        self.server = server
        self.health = health_servicer
        self.port = port

    async def not_serving(self) -> None:
        """Answer NOT_SERVING from now on (a drain has begun), calls still taken."""
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self, grace: float) -> None:
        """Answer NOT_SERVING, refuse new calls (UNAVAILABLE), and give calls in flight ``grace`` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


class _Handlers:
    """Stands in for a server to take the method handlers the generated code registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers = handlers


def _add_servicer(servicer: Servicer, server: Any) -> None:
    """The generated registration, but ``ModelInfer`` takes a ``Received``: its message and its size."""
    taken = _Handlers()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, taken)  # type: ignore[no-untyped-call]
    handlers = taken.handlers | {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            servicer.ModelInfer,
            request_deserializer=Received.parse,
            response_serializer=pb.ModelInferResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


async def start(app: FastAPI) -> GrpcServer:
    """Serve gRPC on BPTT_HOST:BPTT_GRPC_PORT in the running event loop, with the app's pool and settings.

    grpcio's message limits follow the service's: a request up to BPTT_MAX_BODY_BYTES
    (grpcio's default of 4 MiB would refuse the tutorial's model), an answer up to
    BPTT_MAX_REQUEST_BYTES (an admitted request's answer is within its predicted memory).
    """
    settings: Settings = app.state.settings
    assert settings.grpc_port is not None
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", settings.max_request_bytes),
            # Worker processes share the port; a single process must own it (a second
            # server started on the same port fails instead of sharing its calls).
            ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        ]
    )
    _add_servicer(Servicer(app), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    port: int = server.add_insecure_port(f"{host}:{settings.grpc_port}")
    await server.start()
    status = health_pb2.HealthCheckResponse.SERVING if app.state.ready else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE):
        await health_servicer.set(name, status)
    log.info("gRPC (Open Inference Protocol) on %s:%d", host, port)
    running = GrpcServer(server, health_servicer, port)
    app.state.lifecycle.on_drain.append(running.not_serving)  # readiness of gRPC probes, like /readyz
    return running
