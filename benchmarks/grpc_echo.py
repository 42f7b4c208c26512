"""The gRPC transport floor: a server that answers any request with ``size`` bytes, doing nothing else.

    python benchmarks/grpc_echo.py PORT

One unary method, ``/echo.Echo/Echo``, on raw bytes (no protobuf parsing), the
answer's size from the ``size`` metadata: what moving a request and an answer
of those sizes through grpcio costs, with the same message limits as the service.
"""

from __future__ import annotations

import asyncio
import sys

import grpc

LIMITS = [("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)]


async def serve(port: int) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        size = int(dict(context.invocation_metadata())["size"])
        return b"x" * size

    handler = grpc.method_handlers_generic_handler("echo.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server = grpc.aio.server(options=LIMITS)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
