"""HTTP end to end at C = 8000, H = 100: JSON, base64, against a plain implementation,
the transport floor and local PyTorch. Client-side encoding and decoding included.

    python benchmarks/bench_http.py [--quick]
"""

from __future__ import annotations

import argparse

import httpx
import numpy as np
import orjson
from common import median_time, problem, serve, table
from peers import torch_bptt

from service import engine
from service.client import Client
from service.runtime import tune_malloc


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-T", type=int, default=20)
    args = parser.parse_args(argv)
    C, H, T = 8000, 100, args.T
    repeat = 5 if args.quick else 15
    U, V, W, x, y = problem(C, H, T)
    tune_malloc()
    local = engine.bptt(U, V, W, x, y)
    t_engine = median_time(lambda: engine.bptt(U, V, W, x, y), repeat=repeat)
    times: dict[str, float] = {}
    sizes: dict[str, tuple[int, int]] = {}

    with serve("service.app:create_app") as url:
        for encoding in ("json", "base64"):
            with Client(url, encoding=encoding) as client:
                g = client.bptt(U, V, W, x, y)
                assert np.array_equal(g.dLdU, local.dLdU), "the service must answer exactly"
                times[encoding] = median_time(lambda: client.bptt(U, V, W, x, y), repeat=repeat)
                body = client._wire.bptt_body(U, V, W, x, y)
                answer = client._http.post("/bptt", content=body, headers={"content-type": "application/json"})
                sizes[encoding] = (len(body), len(answer.content))

        # The Open Inference Protocol with binary tensors both ways, over plain httpx.
        with httpx.Client(base_url=url, timeout=120) as http:

            def v2_binary():
                header, data = _v2_request(U, V, W, x, y)
                r = http.post(
                    "/v2/models/bptt/infer",
                    content=header + data,  # bytes + bytearray: one more copy
                    headers={"Inference-Header-Content-Length": str(len(header))},
                )
                return _v2_outputs(r)

            assert np.array_equal(v2_binary()["dLdU"], local.dLdU)
            times["v2"] = median_time(v2_binary, repeat=repeat)
            header, data = _v2_request(U, V, W, x, y)
            sizes["v2"] = (
                len(header) + len(data),
                len(
                    http.post(
                        "/v2/models/bptt/infer",
                        content=header + data,
                        headers={"Inference-Header-Content-Length": str(len(header))},
                    ).content
                ),
            )

    up, down = sizes["base64"]
    with serve("servers:echo") as url, httpx.Client(base_url=url, timeout=120) as http:
        payload = b"x" * up

        def echo():
            return http.post("/echo", params={"size": down}, content=payload).content

        times["floor"] = median_time(echo, repeat=repeat)

    with serve("servers:plain") as url, httpx.Client(base_url=url, timeout=300) as http:

        def plain():
            body = orjson.dumps({"U": U, "V": V, "W": W, "x": x, "y": y}, option=orjson.OPT_SERIALIZE_NUMPY)
            data = orjson.loads(http.post("/bptt", content=body, headers={"content-type": "application/json"}).content)
            return [np.array(data[k]) for k in ("dLdU", "dLdV", "dLdW")]

        assert np.allclose(plain()[0], local.dLdU, rtol=1e-10, atol=1e-15)
        times["plain"] = median_time(plain, repeat=max(3, repeat // 3), budget=60)

    v2_up, v2_down = sizes["v2"]
    with serve("servers:echo") as url, httpx.Client(base_url=url, timeout=120) as http:
        payload = b"x" * v2_up
        times["v2 floor"] = median_time(
            lambda: http.post("/echo", params={"size": v2_down}, content=payload).content, repeat=repeat
        )

    torch_fn = torch_bptt(U, V, W, x, y)
    if torch_fn is not None:
        times["torch"] = median_time(torch_fn, repeat=repeat)

    rows = [
        [
            "plain implementation (lists in, FastAPI JSON out, seed loop)",
            times["plain"] * 1e3,
            times["plain"] / times["json"],
            "",
        ],
        [
            "this service, JSON",
            times["json"] * 1e3,
            1.0,
            f"{sizes['json'][0] / 1e6:.1f} MB up, {sizes['json'][1] / 1e6:.1f} MB down",
        ],
        [
            "this service, base64",
            times["base64"] * 1e3,
            times["base64"] / times["json"],
            f"{up / 1e6:.1f} MB up, {down / 1e6:.1f} MB down",
        ],
        ["transport floor (echo the base64 sizes)", times["floor"] * 1e3, times["floor"] / times["json"], ""],
        [
            "Open Inference Protocol, binary tensors",
            times["v2"] * 1e3,
            times["v2"] / times["json"],
            f"{v2_up / 1e6:.1f} MB up, {v2_down / 1e6:.1f} MB down",
        ],
        ["transport floor (echo the binary sizes)", times["v2 floor"] * 1e3, times["v2 floor"] / times["json"], ""],
        ["engine alone (in process)", t_engine * 1e3, t_engine / times["json"], ""],
    ]
    if "torch" in times:
        rows.append(["local PyTorch, no HTTP", times["torch"] * 1e3, times["torch"] / times["json"], ""])
    else:
        print("PyTorch is not installed: local PyTorch skipped (pip install -e '.[bench]')")
    text = table(
        f"HTTP end to end, C = {C}, H = {H}, T = {T}, full BPTT (medians)",
        ["path", "ms", "time / JSON path", "bytes"],
        rows,
    )
    summary = table(
        "HTTP targets",
        ["ratio", "measured", "target"],
        [
            ["plain / JSON path", times["plain"] / times["json"], ">= 2.5"],
            ["JSON path / base64 path", times["json"] / times["base64"], ">= 3"],
            ["base64 path / (floor + engine)", times["base64"] / (times["floor"] + t_engine), "<= 3"],
            ["V2 binary / (its floor + engine)", times["v2"] / (times["v2 floor"] + t_engine), "<= 1.5"],
        ],
    )
    return text + "\n" + summary


def _v2_request(U, V, W, x, y) -> tuple[bytes, bytes]:
    """A V2 infer request with every input and output in binary."""
    arrays = {"U": U, "V": V, "W": W, "x": np.asarray(x, np.int64), "y": np.asarray(y, np.int64)}
    inputs = [
        {
            "name": n,
            "datatype": "FP64" if a.dtype.kind == "f" else "INT64",
            "shape": list(a.shape),
            "parameters": {"binary_data_size": a.nbytes},
        }
        for n, a in arrays.items()
    ]
    header = orjson.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}})
    data = bytearray(sum(a.nbytes for a in arrays.values()))  # one copy of each array
    offset = 0
    for a in arrays.values():
        np.frombuffer(data, dtype=a.dtype, count=a.size, offset=offset)[:] = a.ravel()
        offset += a.nbytes
    return header, data


def _v2_outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    n = int(response.headers["Inference-Header-Content-Length"])
    head = orjson.loads(response.content[:n])
    out, offset = {}, n
    for o in head["outputs"]:
        size = o["parameters"]["binary_data_size"]
        dtype = "<f8" if o["datatype"] == "FP64" else "<i8"
        out[o["name"]] = np.frombuffer(response.content[offset : offset + size], dtype=dtype).reshape(o["shape"])
        offset += size
    return out


if __name__ == "__main__":
    main()
