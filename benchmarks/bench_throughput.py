"""Small-model throughput under concurrent load from wrk: POST /bptt against GET /healthz.

C = 65, H = 32, T = 25 (a character model), base64 body as the client sends it,
16 connections, the same server and settings for both routes. Bounded: each
run lasts --seconds. Needs wrk (Debian: apt-get install wrk).

    python benchmarks/bench_throughput.py [--seconds 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from common import problem, serve, table

from service import engine
from service.client import Client, Wire

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{body}", "rb")
wrk.body = f:read("*all")
f:close()
"""


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
    results = {}
    with tempfile.TemporaryDirectory() as tmp, serve("service.app:create_app") as url:
        with Client(url) as client:  # the answer is right before it is fast
            assert np.array_equal(client.bptt(U, V, W, x, y).dLdW, engine.bptt(U, V, W, x, y).dLdW)
        path = Path(tmp) / "bptt.lua"
        (Path(tmp) / "body.json").write_bytes(body)
        path.write_text(LUA.format(body=Path(tmp) / "body.json"))
        wrk(url + "/healthz", seconds=2, connections=args.connections)  # warm up
        results["healthz"] = wrk(url + "/healthz", seconds=args.seconds, connections=args.connections)
        wrk(url + "/bptt", seconds=2, connections=args.connections, script=str(path))
        results["bptt"] = wrk(url + "/bptt", seconds=args.seconds, connections=args.connections, script=str(path))
    rows = [[route, r["rps"], r["p50_ms"], r["errors"]] for route, r in results.items()]
    rows.append(["/bptt / /healthz", results["bptt"]["rps"] / results["healthz"]["rps"], "", "target >= 0.40"])
    return table(
        f"Throughput, C = {C}, H = {H}, T = {T}, {args.encoding} body of {len(body)} bytes, "
        f"wrk {args.connections} connections, {args.seconds} s, 1 worker",
        ["route", "requests/s", "median latency ms", "non-2xx"],
        rows,
    )


if __name__ == "__main__":
    main()
