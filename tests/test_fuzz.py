"""Schemathesis against the app's own OpenAPI spec, in-process, with all its default checks.

Every operation, hundreds of examples each, derandomised (the same cases on
every run). Checks: no server errors, responses (status, headers, body) as the
spec says, schema-invalid data rejected, schema-valid data accepted.

One thing the spec cannot say: the arrays of a request must agree with each
other (V is C x H when U is H x C; ids below C; one target per input). For
*positive* cases of the compute routes, ``agree`` rebuilds the generated
request so that its shapes agree, keeping what it can of the generated values
(numbers clipped to +-3 so that float32 cannot overflow); then "valid data
accepted" asserts a 200. Negative cases are sent as generated.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from service.app import create_app
from service.settings import Settings

app = create_app(Settings())
schema = schemathesis.openapi.from_asgi("/openapi.json", app)

EXAMPLES = 300


def _numbers(value: Any) -> list[float]:
    """The finite numbers in a generated value, flattened; never empty."""
    out: list[float] = []

    def walk(v: Any) -> None:
        if isinstance(v, bool):
            return
        if isinstance(v, (int, float)) and math.isfinite(v):
            out.append(max(-3.0, min(3.0, float(v))))
        elif isinstance(v, list):
            for item in v:
                walk(item)

    walk(value)
    return out or [0.5, -0.25]


def _ids(value: Any) -> list[int]:
    return [v for v in value if isinstance(v, int) and not isinstance(v, bool)] if isinstance(value, list) else []


def _matrix(pool: itertools.cycle, rows: int, cols: int) -> list[list[float]]:
    return [[next(pool) for _ in range(cols)] for _ in range(rows)]


GATES = {"rnn": 0, "gru": 3, "lstm": 4}  # 0: no gate axis


def _weights(body: dict, cell: str = "rnn") -> tuple[int, int, itertools.cycle, dict]:
    """U, V, W of the cell's shapes (a gated cell's U and W stacked by gate), from the generated numbers."""
    U = body.get("U")
    H = max(1, min(len(U), 5)) if isinstance(U, list) else 2
    C = max(1, min(len(U[0]), 7)) if isinstance(U, list) and U and isinstance(U[0], list) else 3
    pool = itertools.cycle(_numbers([body.get(k) for k in ("U", "V", "W")]))
    G = GATES[cell]
    if G:
        stacked = {"U": [_matrix(pool, H, C) for _ in range(G)], "W": [_matrix(pool, H, H) for _ in range(G)]}
        return H, C, pool, stacked | {"V": _matrix(pool, C, H)}
    return H, C, pool, {"U": _matrix(pool, H, C), "V": _matrix(pool, C, H), "W": _matrix(pool, H, H)}


def _sequence(seq: dict, C: int, H: int, pool: itertools.cycle, cell: str = "rnn") -> dict:
    x, y = _ids(seq.get("x")) or [0], _ids(seq.get("y")) or [0]
    T = max(1, min(len(x), len(y), 20))
    out = {"x": [v % C for v in (x * T)[:T]], "y": [v % C for v in (y * T)[:T]]}
    for name in ("s0", "c0") if cell == "lstm" else ("s0",):
        if seq.get(name) is not None:
            out[name] = [next(pool) for _ in range(H)]
    return out


def _cell_options(body: dict, cell: str, H: int, C: int, pool: itertools.cycle, *, biases: bool) -> None:
    """The options that belong to the body's cell kept (shaped), the others dropped."""
    G = GATES[cell]
    for name in ("b", "b_hh"):
        if body.get(name) is None or not biases or (name == "b_hh" and not G):
            body.pop(name, None)
        else:
            body[name] = [_matrix(pool, 1, H)[0] for _ in range(G)] if G else [next(pool) for _ in range(H)]
    if body.get("c") is not None and biases:
        body["c"] = [next(pool) for _ in range(C)]
    else:
        body.pop("c", None)
    if cell != "gru":
        body.pop("reset_after", None)
    if cell != "lstm":
        body.pop("c0", None)


def agree(case: schemathesis.Case) -> None:
    """Make a positive case's arrays agree with each other (see the module docstring)."""
    path, body = case.operation.path.removesuffix("/cost"), case.body  # a dry run takes its route's body
    if path.endswith("/infer") and case.media_type == "application/octet-stream":
        # Any bytes match {type: string, format: binary}; a valid one is a JSON
        # header and the tensors' bytes, as the route's description says.
        model = (case.path_parameters or {}).get("model_name", "bptt")
        case.body, length = _binary_infer(body if isinstance(body, bytes) else b"", GATES.get(model[5:], 0))
        case.headers = {**(case.headers or {}), "Inference-Header-Content-Length": str(length)}
        return
    if not isinstance(body, dict):
        return
    if path in ("/vjp", "/vjp/compare"):
        _agree_vjp(body, compare=path == "/vjp/compare")
        return
    if path in ("/bptt", "/bptt/batch", "/gradient-check", "/bptt/compare", "/bptt/flow"):
        cell = body.get("cell") if body.get("cell") in GATES else "rnn"
        H, C, pool, weights = _weights(body, cell)
        body.update(weights)
        # /bptt/compare diagnoses the tutorial's vanilla model, which has no biases.
        _cell_options(body, cell, H, C, pool, biases=path != "/bptt/compare" or cell != "rnn")
        if path == "/bptt/compare":
            body.update({f"dLd{k}": np.array(w).tolist() for k, w in weights.items()})
        if path != "/bptt/batch":
            body.update(_sequence(body, C, H, pool, cell))
        else:
            seqs = body.get("sequences") or [{}]
            body["sequences"] = [_sequence(s if isinstance(s, dict) else {}, C, H, pool, cell) for s in seqs[:8]]
    elif path.endswith("/infer"):
        model = (case.path_parameters or {}).get("model_name", "bptt")
        H, C, pool, weights = _weights({}, {"bptt-gru": "gru", "bptt-lstm": "lstm"}.get(model, "rnn"))
        sizes = [(i.get("shape") or [0])[0] for i in body.get("inputs", []) if isinstance(i, dict)]
        x = [v % C for v in (_ids(sizes) or [1, 2])][:20]
        arrays = {**weights, "x": x, "y": list(reversed(x))}
        body.clear()
        body["inputs"] = [
            {
                "name": name,
                "datatype": "FP64" if name in "UVW" else "INT64",
                "shape": list(np.shape(a)),
                "data": np.ravel(a).tolist() if name in "UVW" else a,
            }
            for name, a in arrays.items()
        ]


def _agree_vjp(body: dict, *, compare: bool) -> None:
    """A /vjp body whose arrays fit its layout and cell (keeping the generated numbers where it can)."""
    pool = itertools.cycle(_numbers([body.get(k) for k in ("x", "h0", "dh", "Wx", "Wh", "b")]))
    layout = body.get("layout") if body.get("layout") in ("cs231n", "coursera") else "cs231n"
    cell = "rnn" if compare or body.get("cell") not in ("rnn", "lstm") else body["cell"]
    N, T, D, H = 2, 3, 2, 2

    def arr(*shape: int) -> list:
        return np.array([next(pool) for _ in range(int(np.prod(shape)))]).reshape(shape).tolist()

    cs = layout == "cs231n"
    for name in ("Wx", "Wh", "b", "Wf", "Wi", "Wc", "Wo", "bf", "bi", "bc", "bo", "c0"):
        body.pop(name, None)
    body.update(layout=layout, cell=cell)
    body["x"] = arr(N, T, D) if cs else arr(D, N, T)
    body["h0"] = arr(N, H) if cs else arr(H, N)
    body["dh"] = arr(N, T, H) if cs else arr(H, N, T)
    if cell == "rnn":
        body.update(Wx=arr(D, H) if cs else arr(H, D), Wh=arr(H, H), b=arr(H) if cs else arr(H, 1))
    elif cs:
        body.update(Wx=arr(D, 4 * H), Wh=arr(H, 4 * H), b=arr(4 * H))
    else:
        body.update(
            {w: arr(H, H + D) for w in ("Wf", "Wi", "Wc", "Wo")} | {g: arr(H, 1) for g in ("bf", "bi", "bc", "bo")}
        )
    if compare:
        for name in ("dx", "dh0", "dWx", "dWh", "db"):
            body.pop(name, None)
        body["dx"] = arr(N, T, D) if cs else arr(D, N, T)


def _binary_infer(seed: bytes, G: int = 0) -> tuple[bytes, int]:
    """A binary-tensor infer request whose sizes come from the generated bytes (G gates stacked, if any)."""
    H, C = 1 + len(seed) % 4, 2 + len(seed) % 5
    T = 1 + len(seed) % 7
    rng = np.random.default_rng(list(seed[:16]) or 0)
    gates = (G,) if G else ()
    arrays = {
        "U": rng.uniform(-1, 1, (*gates, H, C)),
        "V": rng.uniform(-1, 1, (C, H)),
        "W": rng.uniform(-1, 1, (*gates, H, H)),
        "x": rng.integers(0, C, T),
        "y": rng.integers(0, C, T),
    }
    inputs = [
        {
            "name": n,
            "datatype": "FP64" if a.dtype.kind == "f" else "INT64",
            "shape": list(a.shape),
            "parameters": {"binary_data_size": a.nbytes},
        }
        for n, a in arrays.items()
    ]
    header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return header + b"".join(a.astype("<f8" if a.dtype.kind == "f" else "<i8").tobytes() for a in arrays.values()), len(
        header
    )


@pytest.mark.slow  # 300 cases per operation: minutes; `make test` runs it
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_api_conforms_to_its_spec(case):
    if case.meta is not None and case.meta.generation.mode.is_positive:
        agree(case)
    case.call_and_validate()
