"""tritonclient.grpc calls, made in a process of their own for tests/test_grpc*.py (the ``triton`` fixture).

tritonclient.grpc and the KServe SDK each register the protocol's messages
(package ``inference``) in protobuf's one default descriptor pool, under
different file names: whichever is imported second in a process fails with
"duplicate symbol". tests/test_v2.py uses the KServe SDK in the pytest process,
so the gRPC client lives here, imported only in a worker process. Everything
that crosses back is plain Python and numpy: answers as dicts and arrays,
errors as ``Failure``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

DATATYPES = {"float64": "FP64", "float32": "FP32", "int64": "INT64", "int32": "INT32"}


class Failure(NamedTuple):
    """A call answered with an error: the gRPC status code's name and the message."""

    code: str
    message: str


def _client(target: str) -> Any:
    import tritonclient.grpc as triton

    return triton.InferenceServerClient(target)


def _failure(exc: Exception) -> Failure:
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        return Failure(str(exc.status()).removeprefix("StatusCode."), exc.message())
    raise exc


def call(target: str, method: str, *args: Any, **kwargs: Any) -> Any:
    """``InferenceServerClient(target).<method>(*args, **kwargs)``, answers as JSON dicts."""
    try:
        return getattr(_client(target), method)(*args, **kwargs)
    except Exception as exc:
        return _failure(exc)


def infer(
    target: str,
    arrays: dict[str, np.ndarray],
    *,
    datatypes: dict[str, str] | None = None,
    outputs: list[str] | None = None,
    model: str = "bptt",
    **kwargs: Any,
) -> dict[str, np.ndarray] | Failure:
    """``infer(model, ...)`` with every array sent as raw bytes; the outputs by name."""
    import tritonclient.grpc as triton

    inputs = []
    for name, a in arrays.items():
        t = triton.InferInput(name, list(a.shape), (datatypes or {}).get(name, DATATYPES[a.dtype.name]))
        t.set_data_from_numpy(a)
        inputs.append(t)
    asked = [triton.InferRequestedOutput(n) for n in outputs] if outputs else None
    try:
        result = _client(target).infer(model, inputs, outputs=asked, **kwargs)
    except Exception as exc:
        return _failure(exc)
    response = result.get_response()
    return {o.name: result.as_numpy(o.name) for o in response.outputs}


def infer_message(
    target: str, message: dict[str, Any], raw: list[bytes] | None = None, metadata: tuple[tuple[str, str], ...] = ()
) -> dict[str, Any] | Failure:
    """A ModelInferRequest written by hand (``message`` in protobuf's JSON form, ``raw`` its
    raw_input_contents), for requests tritonclient would not build; the response as a dict."""
    import grpc
    from google.protobuf import json_format
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = json_format.ParseDict(message, service_pb2.ModelInferRequest())
    request.raw_input_contents.extend(raw or [])
    with grpc.insecure_channel(target) as channel:
        try:
            response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=metadata)
        except grpc.RpcError as exc:
            return Failure(exc.code().name, exc.details())
    out = json_format.MessageToDict(response, preserving_proto_field_name=True)
    out["raw_output_contents"] = list(response.raw_output_contents)
    return out


def request_id(target: str, message: dict[str, Any], raw: list[bytes], given: str) -> tuple[str, str]:
    """``infer_message`` with the metadata ``x-request-id: given``: the status code's name and the
    x-request-id of the answer's trailing metadata."""
    import grpc
    from google.protobuf import json_format
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = json_format.ParseDict(message, service_pb2.ModelInferRequest())
    request.raw_input_contents.extend(raw)
    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            _, answer = stub.ModelInfer.with_call(request, metadata=(("x-request-id", given),))
        except grpc.RpcError as exc:
            answer = exc
        return answer.code().name, dict(answer.trailing_metadata())["x-request-id"]


def protocol_fields() -> dict[str, Any]:
    """Triton's own definition of the protocol (tritonclient's grpc_service.proto): every message's
    fields as {name: (number, type, label)}, and every RPC as (input type, output type)."""
    from tritonclient.grpc import service_pb2

    messages: dict[str, dict[str, tuple[int, int, int]]] = {}

    def walk(descriptor: Any) -> None:
        messages[descriptor.full_name] = {f.name: (f.number, f.type, f.label) for f in descriptor.fields}
        for nested in descriptor.nested_types:
            walk(nested)

    for descriptor in service_pb2.DESCRIPTOR.message_types_by_name.values():
        walk(descriptor)
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    rpcs = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
    return {"package": service_pb2.DESCRIPTOR.package, "messages": messages, "rpcs": rpcs}
