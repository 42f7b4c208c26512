"""The Open Inference Protocol over gRPC (service/v2/servicer.py), against live servers.

tritonclient.grpc makes the calls in a worker process (``triton``; tests/grpc_calls.py
says why); answers are compared bit for bit with ``POST /bptt`` and ``/bptt/batch``
of the same server, and errors with the HTTP V2 route's messages.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from grpc_calls import Failure, call, infer, infer_message, request_id
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import LocalServer, free_port, make_problem

from service.client import Client

KEY = "grpc-test-key"
BEARER = (("authorization", f"Bearer {KEY}"),)
GRADIENTS = ("dLdU", "dLdV", "dLdW", "dLds0", "final_state")


class Served:
    """A live server with gRPC: its HTTP url and its gRPC target."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.grpc_port = free_port()
        self.target = f"127.0.0.1:{self.grpc_port}"
        self.server = LocalServer(args=["--grpc-port", str(self.grpc_port), *args], env=env)
        self.url = self.server.url


@pytest.fixture(scope="module")
def triton() -> Iterator[Callable[..., Any]]:
    """``triton(function, *args, **kwargs)``: a function of grpc_calls, run in the worker process."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield lambda function, *args, **kwargs: pool.submit(function, *args, **kwargs).result(timeout=120)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """Default settings, gRPC on."""
    s = Served([])
    with s.server:
        yield s


@pytest.fixture(scope="module")
def guarded() -> Iterator[Served]:
    """An API key, and small limits: 4 sequences a batch, 64 KiB a body."""
    s = Served(["--api-key", KEY, "--max-batch", "4", "--max-body-bytes", "65536"])
    with s.server:
        yield s


def arrays_of(p: Any, dtype: str = "float64") -> dict[str, np.ndarray]:
    return {"U": p.U.astype(dtype), "V": p.V.astype(dtype), "W": p.W.astype(dtype), "x": p.x, "y": p.y}


def v2_post(url: str, arrays: dict[str, np.ndarray], *, key: str | None = None, **parameters: Any) -> httpx.Response:
    """The same tensors (as JSON data) to the HTTP V2 route."""
    inputs = []
    for name, a in arrays.items():
        datatype = {"f": "FP64", "i": "INT64"}[a.dtype.kind]
        inputs.append({"name": name, "shape": list(a.shape), "datatype": datatype, "data": a.ravel().tolist()})
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = {"inputs": inputs, "parameters": parameters}
    return httpx.post(f"{url}/v2/models/bptt/infer", json=body, headers=headers, timeout=30)


def v2_error(url: str, arrays: dict[str, np.ndarray], **parameters: Any) -> str:
    """The HTTP V2 route's error message for the same tensors."""
    r = v2_post(url, arrays, **parameters)
    assert r.status_code >= 400, r.text
    message: str = r.json()["error"]
    return message


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("K", [None, 3])
def test_grpc_infer_equals_bptt_bit_for_bit(served, triton, rng, dtype, K):
    p = make_problem(rng, H=6, C=11, T=9)
    parameters = {} if K is None else {"bptt_truncate": K}
    out = triton(infer, served.target, arrays_of(p, dtype), parameters=parameters)
    with Client(served.url, dtype=dtype) as client:
        expected = client.bptt(p.U, p.V, p.W, p.x, p.y, bptt_truncate=K)
    for name in GRADIENTS:
        assert out[name].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(out[name], getattr(expected, name), err_msg=name)
    assert out["loss"][0] == expected.loss
    assert out["mean_loss"][0] == expected.mean_loss
    assert out["tokens"][0] == 9


def test_grpc_infer_at_the_tutorial_size_passes_grpcs_4_mib_default(served, triton, rng):
    """C = 8000, H = 100: 13 MB of weights, over grpcio's default message limit."""
    p = make_problem(rng, H=100, C=8000, T=20)
    out = triton(infer, served.target, arrays_of(p), parameters={"bptt_truncate": 4}, outputs=["loss", "dLdU"])
    with Client(served.url) as client:
        expected = client.bptt(p.U, p.V, p.W, p.x, p.y, bptt_truncate=4)
    assert set(out) == {"loss", "dLdU"}
    np.testing.assert_array_equal(out["dLdU"], expected.dLdU)
    assert out["loss"][0] == expected.loss


@pytest.mark.parametrize("K", [None, 2])
def test_grpc_batch_with_lengths_equals_bptt_batch(served, triton, rng, K):
    H, C, lengths = 5, 9, [7, 3, 5]
    p = make_problem(rng, H=H, C=C, T=max(lengths))
    x = rng.integers(0, C, (3, 7))
    y = rng.integers(0, C, (3, 7))
    s0 = rng.uniform(-1, 1, (3, H))
    arrays = {**arrays_of(p), "x": x, "y": y, "s0": s0, "lengths": np.array(lengths)}
    out = triton(infer, served.target, arrays, parameters={} if K is None else {"bptt_truncate": K})
    xs = [x[b, :n] for b, n in enumerate(lengths)]
    ys = [y[b, :n] for b, n in enumerate(lengths)]
    with Client(served.url) as client:
        expected = client.bptt_batch(p.U, p.V, p.W, xs, ys, s0=list(s0), bptt_truncate=K)
    for name in GRADIENTS:
        np.testing.assert_array_equal(out[name], getattr(expected, name), err_msg=name)
    np.testing.assert_array_equal(out["losses"], expected.losses)
    assert out["loss"][0] == expected.loss
    assert out["tokens"][0] == sum(lengths)


def test_grpc_typed_contents_equal_raw_contents(served, triton, rng):
    """Tensors in InferTensorContents (fp64_contents, int64_contents) instead of raw bytes."""
    p = make_problem(rng, H=3, C=4, T=5)
    inputs = [
        {"name": n, "datatype": "FP64", "shape": list(a.shape), "contents": {"fp64_contents": a.ravel().tolist()}}
        for n, a in (("U", p.U), ("V", p.V), ("W", p.W))
    ] + [
        {"name": n, "datatype": "INT64", "shape": [5], "contents": {"int64_contents": [str(v) for v in a]}}
        for n, a in (("x", p.x), ("y", p.y))
    ]
    out = triton(infer_message, served.target, {"model_name": "bptt", "inputs": inputs, "outputs": [{"name": "dLdW"}]})
    assert [o["name"] for o in out["outputs"]] == ["dLdW"]
    dLdW = np.frombuffer(out["raw_output_contents"][0], "<f8").reshape(3, 3)
    with Client(served.url) as client:
        np.testing.assert_array_equal(dLdW, client.bptt(p.U, p.V, p.W, p.x, p.y).dLdW)
    assert out["model_name"] == "bptt" and out["model_version"] == "1"


def test_grpc_health_metadata_and_readiness(served, triton):
    assert triton(call, served.target, "is_server_live") is True
    assert triton(call, served.target, "is_server_ready") is True
    assert triton(call, served.target, "is_model_ready", "bptt") is True
    assert triton(call, served.target, "is_model_ready", "bptt", "1") is True
    server = triton(call, served.target, "get_server_metadata", as_json=True)
    assert server["name"] == "bptt-service"
    assert server["extensions"] == ["binary_tensor_data"]
    model = triton(call, served.target, "get_model_metadata", "bptt", as_json=True)
    http = httpx.get(f"{served.url}/v2/models/bptt").json()
    assert model["name"] == "bptt" and model["versions"] == ["1"] and model["platform"] == http["platform"]
    for side in ("inputs", "outputs"):
        grpc_side = [(t["name"], t["datatype"], [int(n) for n in t["shape"]]) for t in model[side]]
        assert grpc_side == [(t["name"], t["datatype"], t["shape"]) for t in http[side]]


def test_grpc_health_service(served):
    """grpc.health.v1, as Kubernetes' gRPC probe calls it: SERVING for the server and the service."""
    with grpc.insecure_channel(served.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="nothing"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_unknown_model_is_not_found_with_the_http_message(served, triton):
    for version, path in ((None, "/v2/models/nope"), ("7", "/v2/models/bptt/versions/7")):
        name = "bptt" if version else "nope"
        http = httpx.get(served.url + path).json()["error"]
        failure = triton(call, served.target, "get_model_metadata", name, version or "")
        assert failure == Failure("NOT_FOUND", http)
        assert triton(call, served.target, "is_model_ready", name, version or "") == Failure("NOT_FOUND", http)
    inputs = [{"name": "U", "datatype": "FP64", "shape": [1], "contents": {"fp64_contents": [1.0]}}]
    failure = triton(infer_message, served.target, {"model_name": "nope", "inputs": inputs})
    assert failure == Failure(
        "NOT_FOUND", "unknown model 'nope': this server serves 'bptt', 'bptt-gru', 'bptt-lstm', version 1"
    )


def test_grpc_malformed_tensors_are_invalid_argument_with_the_http_message(served, triton, rng):
    p = make_problem(rng, H=3, C=4, T=5)
    good = arrays_of(p)
    cases = {
        "wrong datatype": {**good, "U": (p.U * 10).astype(np.int64)},
        "wrong shape": {**good, "W": p.W[:2]},
        "missing input": {k: v for k, v in good.items() if k != "y"},
        "token out of range": {**good, "x": np.array([0, 1, 2, 3, 4])},
        "unknown input": {**good, "z": np.zeros(2)},
    }
    for case, arrays in cases.items():
        failure = triton(infer, served.target, arrays)
        assert failure == Failure("INVALID_ARGUMENT", v2_error(served.url, arrays)), case
    failure = triton(infer, served.target, good, parameters={"bptt_truncate": -1})
    assert failure == Failure("INVALID_ARGUMENT", v2_error(served.url, good, bptt_truncate=-1))
    failure = triton(infer, served.target, good, outputs=["dLdQ"])
    assert failure.code == "INVALID_ARGUMENT" and failure.message.startswith("unknown output 'dLdQ'")


def test_grpc_malformed_raw_contents_are_invalid_argument(served, triton, rng):
    p = make_problem(rng, H=3, C=4, T=5)
    names = ["U", "V", "W", "x", "y"]
    arrays = [p.U, p.V, p.W, p.x, p.y]
    inputs = [
        {"name": n, "datatype": "FP64" if a.dtype.kind == "f" else "INT64", "shape": list(a.shape)}
        for n, a in zip(names, arrays, strict=True)
    ]
    raw = [np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes() for a in arrays]
    request = {"model_name": "bptt", "inputs": inputs}
    assert "raw_output_contents" in triton(infer_message, served.target, request, raw)
    nan = p.W.copy()
    nan[1, 2] = np.nan
    cases = {
        "short bytes": ([*raw[:1], raw[1][:-8], *raw[2:]], "V (raw_input_contents[1]) holds 88 bytes, but shape"),
        "one entry missing": (raw[:4], "raw_input_contents has 4 entries but the request has 5 inputs"),
        "NaN": ([*raw[:2], nan.tobytes(), *raw[3:]], "W[1][2] must be a finite number, got NaN"),
    }
    for case, (contents, message) in cases.items():
        failure = triton(infer_message, served.target, request, contents)
        assert failure.code == "INVALID_ARGUMENT" and failure.message.startswith(message), (case, failure)
    both = {**request, "inputs": [{**inputs[0], "contents": {"fp64_contents": [0.0] * 12}}, *inputs[1:]]}
    failure = triton(infer_message, served.target, both, raw)
    assert failure == Failure(
        "INVALID_ARGUMENT", "U has contents, but the request sends raw_input_contents: send one or the other"
    )
    negative = {**request, "inputs": [{**inputs[0], "shape": [-3, 4]}, *inputs[1:]]}
    failure = triton(infer_message, served.target, negative, raw)
    assert failure.code == "INVALID_ARGUMENT" and "U.shape must hold integers >= 0" in failure.message


def test_grpc_api_key_is_required_as_bearer_metadata(guarded, triton, rng):
    p = make_problem(rng, H=2, C=3, T=4)
    message = "missing or wrong API key: send the header Authorization: Bearer <key>"
    assert triton(call, guarded.target, "is_server_live") == Failure("UNAUTHENTICATED", message)
    assert triton(infer, guarded.target, arrays_of(p)) == Failure("UNAUTHENTICATED", message)
    wrong = {"authorization": "Bearer not-the-key"}
    assert triton(infer, guarded.target, arrays_of(p), headers=wrong) == Failure("UNAUTHENTICATED", message)
    headers = dict(BEARER)
    assert triton(call, guarded.target, "is_server_live", headers=headers) is True
    out = triton(infer, guarded.target, arrays_of(p), headers=headers)
    with Client(guarded.url, api_key=KEY) as client:
        np.testing.assert_array_equal(out["dLdU"], client.bptt(p.U, p.V, p.W, p.x, p.y).dLdU)
    with grpc.insecure_channel(guarded.target) as channel:  # the probes need no key
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_over_the_limits_is_resource_exhausted(guarded, triton, rng):
    """The shape limits, with the HTTP route's message; and a message over the body limit."""
    p = make_problem(rng, H=2, C=3, T=4)
    x = rng.integers(0, 3, (5, 4))
    arrays = {**arrays_of(p), "x": x, "y": x}
    failure = triton(infer, guarded.target, arrays, headers=dict(BEARER))
    http = v2_post(guarded.url, arrays, key=KEY)
    assert http.status_code == 413
    assert failure == Failure("RESOURCE_EXHAUSTED", http.json()["error"])
    assert "setting BPTT_MAX_BATCH" in failure.message
    big = make_problem(rng, H=30, C=300, T=4)  # 144 KB of weights, over the 64 KiB limit
    failure = triton(infer, guarded.target, arrays_of(big), headers=dict(BEARER))
    assert failure.code == "RESOURCE_EXHAUSTED" and "larger than max" in failure.message


def test_grpc_request_id_is_echoed(served, triton, rng):
    """x-request-id in, the same in the trailing metadata; a malformed one replaced by a new one."""
    p = make_problem(rng, H=2, C=3, T=2)
    arrays = {"U": p.U, "V": p.V, "W": p.W, "x": p.x, "y": p.y}
    inputs = [
        {"name": n, "datatype": "FP64" if a.dtype.kind == "f" else "INT64", "shape": list(a.shape)}
        for n, a in arrays.items()
    ]
    raw = [a.astype(a.dtype.newbyteorder("<")).tobytes() for a in arrays.values()]
    request = {"model_name": "bptt", "inputs": inputs}
    assert triton(request_id, served.target, request, raw, "abc-123") == ("OK", "abc-123")
    code, rid = triton(request_id, served.target, request, raw[:3], "bad id")
    assert code == "INVALID_ARGUMENT" and len(rid) == 32 and rid != "bad id"


def call_while_http_computes(triton: Callable[..., Any], s: Served, long: Any, arrays: dict) -> tuple[Any, list]:
    """Send ``long`` as an HTTP request, and make the gRPC call of ``arrays`` until it is refused or the HTTP
    request has answered (not a fixed sleep: the call must meet what the HTTP request holds); the call's last
    answer, and the HTTP request's seconds (empty if it failed), once it has answered."""
    done: list[float] = []

    def slow_http() -> None:
        start = time.perf_counter()
        with Client(s.url) as client:
            client.bptt(long.U, long.V, long.W, long.x, long.y)
        done.append(time.perf_counter() - start)

    thread = threading.Thread(target=slow_http)
    thread.start()
    answer = triton(infer, s.target, arrays)
    while not isinstance(answer, Failure) and thread.is_alive():
        time.sleep(0.02)
        answer = triton(infer, s.target, arrays)
    thread.join()
    return answer, done


@pytest.mark.slow
def test_grpc_and_http_share_one_queue_bound(triton, rng):
    """One compute thread, no queue: while an HTTP request computes, a gRPC call is refused
    UNAVAILABLE with the HTTP 503's message; and a call past its client deadline is stopped."""
    s = Served(["--threads", "1", "--max-queue", "0"])
    with s.server:
        long = make_problem(rng, H=500, C=2, T=10_000)  # about 0.8 s of work here with the compiled loops
        small = make_problem(rng, H=2, C=3, T=2)
        failure, done = call_while_http_computes(triton, s, long, arrays_of(small))
        assert isinstance(failure, Failure), "the HTTP request ended before a gRPC call found the thread taken"
        assert failure.code == "UNAVAILABLE"
        assert failure.message.startswith("the server is at capacity: 1 requests computing and 0 waiting")
        assert done and done[0] > 0.6, "the HTTP request was too quick to hold the thread"
        # A deadline of 0.3 s: the client gives up, the server stops the work (the thread is free at once).
        failure = triton(infer, s.target, arrays_of(long), client_timeout=0.3)
        assert failure.code == "DEADLINE_EXCEEDED"
        time.sleep(0.3)
        start = time.perf_counter()
        assert "dLdU" in triton(infer, s.target, arrays_of(small))
        assert time.perf_counter() - start < done[0] / 2


@pytest.mark.slow
def test_grpc_messages_count_with_http_bodies_against_the_bytes_in_flight(triton, rng):
    """BPTT_MAX_BYTES_IN_FLIGHT bounds gRPC messages and HTTP bodies together: while an HTTP request of
    about 1.8 MB computes, a 0.64 MB gRPC call is refused UNAVAILABLE with the HTTP 503's message, not
    queued (the queue bound alone would let max_queue messages of max_body_bytes each wait in memory);
    once the HTTP request has answered, the same call is served."""
    mb2 = "2000000"
    s = Served(["--threads", "1", "--max-queue", "4", "--max-body-bytes", mb2, "--max-bytes-in-flight", mb2])
    with s.server:
        long = make_problem(rng, H=400, C=2, T=10_000)  # W alone is 1.7 MB of base64; about 0.5 s of work
        wide = make_problem(rng, H=2, C=20_000, T=2)  # U and V: 640,000 bytes raw
        failure, done = call_while_http_computes(triton, s, long, arrays_of(wide))
        assert isinstance(failure, Failure), "the HTTP request ended before a gRPC call found its bytes held"
        assert failure.code == "UNAVAILABLE", failure
        assert failure.message.startswith("the server holds 1,"), failure
        assert "near its limit of 2,000,000 (setting BPTT_MAX_BYTES_IN_FLIGHT)" in failure.message
        assert done, "the HTTP request did not complete"  # it held its bytes: the call above was refused
        assert "dLdU" in triton(infer, s.target, arrays_of(wide))


@pytest.mark.parametrize(("model", "reset_after"), [("bptt-gru", False), ("bptt-gru", True), ("bptt-lstm", False)])
def test_grpc_gated_models_equal_bptt_with_cell_bit_for_bit(served, triton, model, reset_after):
    """bptt-gru and bptt-lstm over gRPC, a batch with lengths, biases and initial states: every output
    equal to POST /bptt/batch with the same cell."""
    cell = model.removeprefix("bptt-")
    rng = np.random.default_rng(31)
    G, H, C, lengths = (3 if cell == "gru" else 4), 4, 6, [5, 2]
    weights = {"U": rng.normal(0, 0.5, (G, H, C)), "V": rng.normal(0, 0.5, (C, H)), "W": rng.normal(0, 0.5, (G, H, H))}
    biases = {"b": rng.normal(0, 0.5, (G, H)), "b_hh": rng.normal(0, 0.5, (G, H)), "c": rng.normal(0, 0.5, C)}
    x, y = rng.integers(0, C, (2, 5)), rng.integers(0, C, (2, 5))
    states = {"s0": rng.normal(0, 0.5, (2, H))} | ({"c0": rng.normal(0, 0.5, (2, H))} if cell == "lstm" else {})
    arrays = weights | biases | states | {"x": x, "y": y, "lengths": np.array(lengths)}
    parameters = {"bptt_truncate": 3} | ({"reset_after": True} if reset_after else {})
    out = triton(infer, served.target, arrays, model=model, parameters=parameters)
    xs = [x[b, :n] for b, n in enumerate(lengths)]
    ys = [y[b, :n] for b, n in enumerate(lengths)]
    with Client(served.url) as client:
        c0 = list(states["c0"]) if cell == "lstm" else None
        expected = client.bptt_batch(**weights, xs=xs, ys=ys, s0=list(states["s0"]), c0=c0, bptt_truncate=3,
                                     cell=cell, reset_after=reset_after, **biases)  # fmt: skip
    names = [*GRADIENTS, "dLdb", "dLdb_hh", "dLdc"] + (["dLdc0", "final_cell"] if cell == "lstm" else [])
    assert set(out) == {"loss", "mean_loss", "tokens", "losses", *names}
    for name in names:
        np.testing.assert_array_equal(out[name], getattr(expected, name), err_msg=name)
    assert out["dLdU"].shape == (G, H, C)
    np.testing.assert_array_equal(out["losses"], expected.losses)


@pytest.mark.slow  # a server process of its own, drained
def test_sigterm_turns_grpc_health_not_serving_then_refuses_calls_as_unavailable(triton, rng):
    """The drain reaches gRPC: health NOT_SERVING at once (Kubernetes' gRPC probe), calls answered during the
    grace, then UNAVAILABLE with the HTTP route's message, and the process exits 0."""
    s = Served([], env={"BPTT_DRAIN_GRACE_SECONDS": "1"})
    p = make_problem(rng, H=3, C=4, T=3)
    with s.server, grpc.insecure_channel(s.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        s.server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        while not isinstance(out := triton(infer, s.target, arrays_of(p)), Failure):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert out.code == "UNAVAILABLE"
        assert out.message.startswith("the server is shutting down and takes no new work")
        assert s.server.proc.wait(timeout=15) == 0


@pytest.mark.slow  # a server process of its own
def test_grpc_calls_share_the_keys_rate_limit_with_http(triton, rng):
    """BPTT_RATE_LIMIT_PER_KEY counts a key's gRPC calls and HTTP requests in one bucket: past the burst,
    RESOURCE_EXHAUSTED with the HTTP 429's message; another key is not affected."""
    s = Served(["--api-key", f"{KEY},other", "--rate-limit-per-key", "0.01", "--rate-limit-burst", "2"])
    p = make_problem(rng, H=2, C=3, T=2)
    with s.server:
        assert httpx.get(f"{s.url}/v2/models/bptt", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        ok = triton(infer, s.target, arrays_of(p), headers=dict(BEARER))
        assert not isinstance(ok, Failure), ok
        refused = triton(infer, s.target, arrays_of(p), headers=dict(BEARER))
        assert isinstance(refused, Failure) and refused.code == "RESOURCE_EXHAUSTED"
        assert "is over its rate of 0.01 requests a second (burst 2" in refused.message
        http = httpx.get(f"{s.url}/v2/models/bptt", headers={"authorization": f"Bearer {KEY}"})
        assert http.status_code == 429  # the same message, up to the seconds to wait
        assert http.json()["detail"].split(": retry after")[0] == refused.message.split(": retry after")[0]
        other = triton(infer, s.target, arrays_of(p), headers={"authorization": "Bearer other"})
        assert not isinstance(other, Failure), other
