"""Small-model throughput under concurrent load from wrk: POST /bptt and the V2 binary infer route
against GET /healthz.

C = 65, H = 32, T = 25 (a character model), base64 body as the client sends it
(and the V2 binary tensor extension, every input and output raw bytes), 16
connections, the same server and settings for every route. Bounded: each run
lasts --seconds. Needs wrk (Debian: apt-get install wrk).

    python benchmarks/bench_throughput.py [--seconds 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import numpy as np
from bench_http import _v2_outputs, _v2_request
from common import problem, serve, table

from service import engine
from service.client import Client, Wire

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "{content_type}"
{headers}
local f = io.open("{body}", "rb")
wrk.body = f:read("*all")
f:close()
"""


def lua(directory: Path, name: str, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> str:
    """A wrk script that POSTs ``body`` (kept in a file next to it); its path."""
    (directory / f"{name}.body").write_bytes(body)
    extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
    script = directory / f"{name}.lua"
    script.write_text(LUA.format(content_type=content_type, headers=extra, body=directory / f"{name}.body"))
    return str(script)


def wrk(url: str, *, seconds: int, connections: int, script: str | None = None) -> dict[str, float]:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"50%\s+([\d.]+)(\w+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p50.group(2)]
    return {"rps": rps, "p50_ms": float(p50.group(1)) * scale, "errors": int(non2xx.group(1)) if non2xx else 0}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--encoding", choices=["base64", "json"], default="base64")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: throughput skipped (apt-get install wrk)")
        return ""
    C, H, T = 65, 32, 25
    U, V, W, x, y = problem(C, H, T)
    body = Wire(args.encoding, "float64").bptt_body(U, V, W, x, y)
    header, data = _v2_request(U, V, W, x, y)
    v2_headers = {"Inference-Header-Content-Length": str(len(header))}
    results = {}
    with tempfile.TemporaryDirectory() as tmp, serve("service.app:create_app") as url:
        with Client(url) as client:  # the answer is right before it is fast
            assert np.array_equal(client.bptt(U, V, W, x, y).dLdW, engine.bptt(U, V, W, x, y).dLdW)
        v2 = httpx.post(f"{url}/v2/models/bptt/infer", content=header + data, headers=v2_headers)
        assert np.array_equal(_v2_outputs(v2)["dLdW"], engine.bptt(U, V, W, x, y).dLdW)
        scripts = {
            "/healthz": None,
            "/bptt": lua(Path(tmp), "bptt", body, "application/json"),
            "/v2/models/bptt/infer": lua(Path(tmp), "v2", header + data, "application/octet-stream", v2_headers),
        }
        for route, script in scripts.items():
            wrk(url + route, seconds=2, connections=args.connections, script=script)  # warm up
            results[route] = wrk(url + route, seconds=args.seconds, connections=args.connections, script=script)
    rows = [[route, r["rps"], r["p50_ms"], r["errors"]] for route, r in results.items()]
    for route in ("/bptt", "/v2/models/bptt/infer"):
        ratio = results[route]["rps"] / results["/healthz"]["rps"]
        rows.append([f"{route} / /healthz", ratio, "", "target >= 0.40"])
    return table(
        f"Throughput, C = {C}, H = {H}, T = {T}, {args.encoding} body of {len(body)} bytes "
        f"(V2 binary: {len(header) + len(data)} bytes), "
        f"wrk {args.connections} connections, {args.seconds} s, 1 worker",
        ["route", "requests/s", "median latency ms", "non-2xx"],
        rows,
    )


if __name__ == "__main__":
    main()
