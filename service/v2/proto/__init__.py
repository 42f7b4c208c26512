"""The Open Inference Protocol's gRPC messages and service: ``inference.proto`` and protoc's output from it.

Regenerate with ``make proto``; ``tests/test_grpc_proto.py`` fails when the committed modules drift from the proto.
"""
