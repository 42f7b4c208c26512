"""An attacker's catalogue against a real server with default settings: requests at the edge of every
limit of every route, each answered with a 2xx or a 4xx within the deadline, /healthz answering within
1 s throughout, the process's peak memory under the budget its settings promise, and the server serving
afterwards. Loopback only; bounded in count and time."""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Callable

import httpx
import numpy as np
import orjson
import pytest
from helpers import LocalServer, make_problem

from service import admission
from service.client import Wire
from service.settings import Settings

pytestmark = pytest.mark.slow

JSON = {"content-type": "application/json"}
B64 = Wire("base64", "float64")


def tensor(a: np.ndarray) -> object:
    return B64.array(a)


def catalogue(rng: np.random.Generator, limits: dict) -> list[tuple[str, str, Callable[[], bytes], set[int]]]:
    """(what, route, body, statuses allowed): the classes of the issue, and the shapes the limits admit."""
    p = make_problem(rng, H=100, C=8000, T=50)
    admits = {a["shape"]: a["value"] for a in limits["admits"]}
    T_max = admits["the tutorial's model, C = 8000, H = 100, full BPTT"]
    B_max = admits["a batch of sequences of T = 50, C = 8000, H = 100"]
    K_max = admits["T = 1000, C = 65, H = 100 (characters)"]
    H_max = admits["C = 1, T = 1000, full BPTT"]
    small = make_problem(rng, H=100, C=65, T=1000)
    out: list[tuple[str, str, Callable[[], bytes], set[int]]] = []

    def add(what: str, route: str, body: Callable[[], bytes], ok: set[int]) -> None:
        out.append((what, route, body, ok))

    # The tutorial's request as plain JSON (34 MB of number text) is served.
    add("seed request as JSON lists", "/bptt", lambda: orjson.dumps(p.body()), {200})
    # The largest shapes the limits admit are served within the deadline...
    x = rng.integers(0, 8000, T_max)
    add(f"largest admitted T = {T_max}", "/bptt", lambda: B64.bptt_body(p.U, p.V, p.W, x, x), {200})
    xs = [rng.integers(0, 8000, 50) for _ in range(B_max)]
    add(f"largest admitted batch B = {B_max}", "/bptt/batch", lambda: B64.batch_body(p.U, p.V, p.W, xs, xs), {200})
    add(
        f"largest admitted truncation K = {K_max} at T = 1000",
        "/bptt",
        lambda: B64.bptt_body(small.U, small.V, small.W, small.x, small.y, bptt_truncate=K_max),
        {200},
    )
    tall = make_problem(rng, H=H_max, C=1, T=1000)
    add(
        f"largest admitted H = {H_max} at C = 1",
        "/bptt",
        lambda: B64.bptt_body(tall.U, tall.V, tall.W, tall.x, tall.y),
        {200},
    )
    # ... and one step past each is refused before any work.
    add("one token past the admitted T", "/bptt", lambda: B64.bptt_body(p.U, p.V, p.W, np.r_[x, 1], np.r_[x, 1]), {413})
    # 1. Padding: one long sequence among a thousand one-token ones.
    long_x = rng.integers(0, 65, 10_000)
    padded = [long_x] + [np.array([1])] * 1000
    add("padding: T = 10,000 among 1,000 one-token sequences", "/bptt/batch",
        lambda: Wire("base64", "float64").batch_body(small.U, small.V, small.W, padded, padded), {413})  # fmt: skip
    # 2. Truncation close to T.
    add("truncation K = T - 2 at T = 10,000", "/bptt",
        lambda: B64.bptt_body(small.U, small.V, small.W, long_x, long_x, bptt_truncate=9_998), {413})  # fmt: skip
    # 3. W counted: H large, C tiny.
    wide = make_problem(rng, H=2000, C=1, T=10_000)
    add("H = 2,000, C = 1, T = 10,000", "/bptt", lambda: B64.bptt_body(wide.U, wide.V, wide.W, wide.x, wide.y), {413})
    # 4. The learning routes' Python loops.
    tiny = make_problem(rng, H=4, C=3, T=10_000)
    body = tiny.body(dLdU=tiny.U.tolist(), dLdV=tiny.V.tolist(), dLdW=tiny.W.tolist())
    add("compare at T = 10,000", "/bptt/compare", lambda: orjson.dumps(body), {200, 413})
    add("gradient check at T = 10,000, 1000 samples", "/gradient-check",
        lambda: orjson.dumps(tiny.body(samples=1000)), {200, 413})  # fmt: skip
    # 5. Parsing before limits: millions of one-element rows (cheap to send, dear to parse).
    rows = b"[" + b",".join([b"[0]"] * 4_000_000) + b"]"
    add(
        "4 million one-element rows", "/bptt", lambda: b'{"U":' + rows + b',"V":[[0]],"W":[[0]],"x":[0],"y":[0]}', {413}
    )
    # 6. The gated cells: G times the weights and the recurrence, at the tutorial's size and past it.
    for cell, G in (("gru", 3), ("lstm", 4)):
        U = rng.uniform(-0.01, 0.01, (G, 100, 8000))
        W = rng.uniform(-0.1, 0.1, (G, 100, 100))
        for T in (2_000, 4_000):
            xg = rng.integers(0, 8000, T)
            add(f"{cell} at C = 8000, H = 100, T = {T:,}", "/bptt",
                lambda U=U, W=W, xg=xg, cell=cell: B64.bptt_body(U, p.V, W, xg, xg, cell=cell), {200, 413})  # fmt: skip
    lstm_small = rng.uniform(-0.1, 0.1, (4, 100, 65))
    lstm_W = rng.uniform(-0.1, 0.1, (4, 100, 100))
    add("lstm trace at T = 100, H = 100", "/bptt",
        lambda: B64.bptt_body(lstm_small, small.V, lstm_W, small.x[:100], small.y[:100], cell="lstm", trace=True),
        {200, 413})  # fmt: skip
    gru_tiny = {"cell": "gru", "U": rng.uniform(-1, 1, (3, 4, 3)).tolist(), "V": tiny.V.tolist(),
                "W": rng.uniform(-1, 1, (3, 4, 4)).tolist(), "x": tiny.x.tolist(), "y": tiny.y.tolist()}  # fmt: skip
    gru_compare = gru_tiny | {"dLdU": gru_tiny["U"], "dLdV": gru_tiny["V"], "dLdW": gru_tiny["W"]}
    add("gru compare at T = 10,000", "/bptt/compare", lambda: orjson.dumps(gru_compare), {200, 413})
    # The body limit, by Content-Length.
    add("a body over BPTT_MAX_BODY_BYTES", "/bptt", lambda: b"[" * (Settings().max_body_bytes + 1), {413})
    # V2 at its edges: a batch with one long row among short ones, and a huge length.
    X = np.zeros((200, 10_000), dtype=np.int64)
    lengths = np.ones(200, dtype=np.int64)
    lengths[0] = 10_000
    v2 = {"inputs": [
        {"name": n, "shape": list(a.shape), "datatype": "FP64" if a.dtype.kind == "f" else "INT64",
         "parameters": {"binary_data_size": a.nbytes}}
        for n, a in (("U", small.U), ("V", small.V), ("W", small.W), ("x", X), ("y", X), ("lengths", lengths))
    ]}  # fmt: skip
    header = orjson.dumps(v2)
    blob = b"".join(a.tobytes() for a in (small.U, small.V, small.W, X, X, lengths))
    add("V2 padded batch, binary", f"/v2/models/bptt/infer?header={len(header)}", lambda: header + blob, {200, 413})
    return out


def test_every_edge_is_answered_within_bounds():
    settings = Settings()
    budget = sum(admission.pod_memory(settings).values())
    with LocalServer(args=["--log-level", "warning"]) as server:
        limits = httpx.get(f"{server.url}/limits").json()
        worst = [0.0]
        stop = threading.Event()

        def watch() -> None:  # /healthz every 100 ms, its slowest answer kept
            with httpx.Client(timeout=5) as http:
                while not stop.is_set():
                    start = time.monotonic()
                    assert http.get(f"{server.url}/healthz").status_code == 200
                    worst[0] = max(worst[0], time.monotonic() - start)
                    stop.wait(0.1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        problems = []
        rng = np.random.default_rng(11)
        with httpx.Client(timeout=settings.request_timeout + 30) as http:
            for what, route, make, allowed in catalogue(rng, limits):
                body = make()
                headers = dict(JSON)
                route, _, header = route.partition("?header=")
                if header:
                    headers["Inference-Header-Content-Length"] = header
                start = time.monotonic()
                r = http.post(f"{server.url}{route}", content=body, headers=headers)
                took = time.monotonic() - start
                print(f"{what}: {r.status_code} in {took:.2f} s")  # the table in the closing note (pytest -s)
                if r.status_code not in allowed or took > settings.request_timeout + 5:
                    problems.append(f"{what}: {r.status_code} in {took:.1f} s: {r.text[:200]}")
        stop.set()
        watcher.join(timeout=10)
        status = pathlib.Path(f"/proc/{server.proc.pid}/status").read_text()
        peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
        # Still serving.
        p = make_problem(rng, H=3, C=4, T=3)
        assert httpx.post(f"{server.url}/bptt", json=p.body()).status_code == 200
    print(f"/healthz slowest {worst[0]:.3f} s; peak RSS {peak / 2**20:.0f} MiB of a {budget / 2**20:.0f} MiB budget")
    assert not problems, problems
    assert worst[0] < 1.0, f"/healthz took {worst[0]:.2f} s"
    assert peak < budget, f"peak RSS {peak / 2**20:.0f} MiB over the budget {budget / 2**20:.0f} MiB"
