"""The committed gRPC modules against their proto, and the proto against the protocol's.

``service/v2/proto/inference.proto`` is written in this project; protoc's output
from it is committed. The first test regenerates it (``make proto`` runs the
same command) and fails when the committed files drift; the second holds every
message, field number and RPC of the proto against Triton's own definition of
the protocol (tritonclient's, read in the worker process: tests/grpc_calls.py).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import pathlib
import subprocess
import sys

from google.protobuf import descriptor_pb2
from grpc_calls import protocol_fields

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO = "service/v2/proto/inference.proto"
GENERATED = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")


def protoc(*args: str) -> None:
    command = [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", *args, PROTO]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)


def test_committed_modules_are_protocs_output_of_the_proto(tmp_path):
    protoc(f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}")
    for name in GENERATED:
        fresh = (tmp_path / "service/v2/proto" / name).read_text()
        committed = (ROOT / "service/v2/proto" / name).read_text()
        assert committed == fresh, f"service/v2/proto/{name} drifted from inference.proto: run `make proto`"


def test_proto_matches_the_protocols_field_numbers(tmp_path):
    protoc(f"--descriptor_set_out={tmp_path / 'set.pb'}")
    ours = descriptor_pb2.FileDescriptorSet.FromString((tmp_path / "set.pb").read_bytes()).file[0]
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        triton = pool.submit(protocol_fields).result(timeout=60)
    assert ours.package == triton["package"] == "inference"

    def walk(message: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        name = f"{prefix}.{message.name}"
        assert name in triton["messages"], f"{name} is not a message of the protocol"
        fields = {f.name: (f.number, f.type, f.label) for f in message.field}
        assert fields == triton["messages"][name], name
        for nested in message.nested_type:
            walk(nested, name)

    for message in ours.message_type:
        walk(message, "inference")
    (service,) = ours.service
    assert service.name == "GRPCInferenceService"
    for method in service.method:
        assert (method.input_type.lstrip("."), method.output_type.lstrip(".")) == triton["rpcs"][method.name]
    assert {m.name for m in service.method} == {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
    }  # fmt: skip
