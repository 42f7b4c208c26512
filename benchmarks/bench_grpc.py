"""The Open Inference Protocol over gRPC at C = 8000, H = 100: binary gRPC (tritonclient.grpc, raw
tensor contents) against the HTTP binary path (V2 binary tensor extension, httpx), each with its
transport floor, and the engine alone. Client-side encoding and decoding included.

    python benchmarks/bench_grpc.py [--quick] [-T 20]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import tritonclient.grpc as triton
from bench_http import _v2_outputs, _v2_request
from common import ROOT, interleaved, problem, serve, table

from service import engine
from service.local import free_port
from service.runtime import limit_blas, tune_malloc

LIMITS = [("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)]


@contextlib.contextmanager
def grpc_echo() -> Iterator[str]:
    """benchmarks/grpc_echo.py on a free loopback port; its target."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "grpc_echo.py"), str(port)])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-T", type=int, default=20)
    args = parser.parse_args(argv)
    C, H, T = 8000, 100, args.T
    repeat = 5 if args.quick else 15
    U, V, W, x, y = problem(C, H, T)
    arrays = {"U": U, "V": V, "W": W, "x": np.asarray(x, np.int64), "y": np.asarray(y, np.int64)}
    tune_malloc()
    limit_blas(1)  # as the server computes (BPTT_BLAS_THREADS): spinning BLAS threads would slow the servers
    local = engine.bptt(U, V, W, x, y)
    grpc_port = free_port()
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(serve("service.app:create_app", env={"BPTT_GRPC_PORT": str(grpc_port)}))
        echo_url = stack.enter_context(serve("servers:echo"))
        echo_target = stack.enter_context(grpc_echo())
        client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        stack.callback(client.close)
        http = stack.enter_context(httpx.Client(timeout=120))
        channel = stack.enter_context(grpc.insecure_channel(echo_target, options=LIMITS))

        def grpc_binary() -> dict[str, np.ndarray]:
            inputs = []
            for name, a in arrays.items():
                t = triton.InferInput(name, list(a.shape), "FP64" if a.dtype.kind == "f" else "INT64")
                t.set_data_from_numpy(a)
                inputs.append(t)
            result = client.infer("bptt", inputs)
            return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}

        def v2_binary() -> dict[str, np.ndarray]:
            header, data = _v2_request(U, V, W, x, y)
            r = http.post(
                f"{url}/v2/models/bptt/infer",
                content=header + data,
                headers={"Inference-Header-Content-Length": str(len(header))},
            )
            return _v2_outputs(r)

        out = grpc_binary()
        assert np.array_equal(out["dLdU"], local.dLdU), "the service must answer exactly"
        assert np.array_equal(v2_binary()["dLdU"], local.dLdU)
        grpc_up = sum(a.nbytes for a in arrays.values())
        grpc_down = sum(a.nbytes for a in out.values())
        header, data = _v2_request(U, V, W, x, y)
        v2_up = len(header) + len(data)
        v2_down = len(
            http.post(
                f"{url}/v2/models/bptt/infer",
                content=header + data,
                headers={"Inference-Header-Content-Length": str(len(header))},
            ).content
        )
        echo = channel.unary_unary("/echo.Echo/Echo")
        grpc_payload, grpc_size = b"x" * grpc_up, (("size", str(grpc_down)),)
        v2_payload = b"x" * v2_up
        assert len(echo(grpc_payload, metadata=grpc_size)) == grpc_down
        times = interleaved(
            {
                "grpc": grpc_binary,
                "grpc floor": lambda: echo(grpc_payload, metadata=grpc_size),
                "v2": v2_binary,
                "v2 floor": lambda: http.post(f"{echo_url}/echo", params={"size": v2_down}, content=v2_payload).content,
                "engine": lambda: engine.bptt(U, V, W, x, y),
            },
            repeat=repeat,
        )
    t_engine = times["engine"]

    sizes = {
        "grpc": f"{grpc_up / 1e6:.1f} MB up, {grpc_down / 1e6:.1f} MB down (tensor bytes)",
        "v2": f"{v2_up / 1e6:.1f} MB up, {v2_down / 1e6:.1f} MB down",
    }

    def row(name: str, key: str, note: str = "") -> list[object]:
        return [name, times[key] * 1e3, times[key] / times["v2"], note]

    rows = [
        row("gRPC, raw tensor contents (tritonclient.grpc)", "grpc", sizes["grpc"]),
        row("gRPC transport floor (grpcio echo of those sizes)", "grpc floor"),
        row("HTTP, V2 binary tensors (httpx)", "v2", sizes["v2"]),
        row("HTTP transport floor (echo of those sizes)", "v2 floor"),
        row("engine alone (in process)", "engine"),
    ]
    text = table(
        f"gRPC end to end, C = {C}, H = {H}, T = {T}, full BPTT (medians of {repeat} interleaved rounds)",
        ["path", "ms", "time / HTTP binary", "bytes"],
        rows,
    )
    summary = table(
        "gRPC ratios",
        ["ratio", "measured"],
        [
            ["gRPC / (gRPC floor + engine)", times["grpc"] / (times["grpc floor"] + t_engine)],
            ["HTTP binary / (HTTP floor + engine)", times["v2"] / (times["v2 floor"] + t_engine)],
            ["gRPC / HTTP binary", times["grpc"] / times["v2"]],
        ],
    )
    return text + "\n" + summary


if __name__ == "__main__":
    main()
