"""service.v2: the Open Inference Protocol, with NVIDIA's tritonclient against a real server,
and malformed requests in-process."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from helpers import make_problem
from tritonclient.utils import InferenceServerException

from service import engine
from service.v2 import protocol as v2

GRADIENTS = ("dLdU", "dLdV", "dLdW", "dLds0", "final_state")


@pytest.fixture(scope="module")
def triton_client(live_server):
    client = triton.InferenceServerClient(url=live_server.url.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


def triton_inputs(arrays: dict[str, np.ndarray], binary: bool) -> list[triton.InferInput]:
    inputs = []
    for name, a in arrays.items():
        t = triton.InferInput(
            name,
            list(a.shape),
            {np.float64: "FP64", np.float32: "FP32", np.int64: "INT64", np.int32: "INT32"}[a.dtype.type],
        )
        t.set_data_from_numpy(a, binary_data=binary)
        inputs.append(t)
    return inputs


def test_triton_health_and_metadata(triton_client):
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("bptt")
    assert not triton_client.is_model_ready("nope")
    meta = triton_client.get_server_metadata()
    assert "binary_tensor_data" in meta["extensions"]
    model = triton_client.get_model_metadata("bptt")
    assert {i["name"] for i in model["inputs"]} == {"U", "V", "W", "x", "y", "s0", "lengths"}
    assert {o["name"] for o in model["outputs"]} >= {"loss", *GRADIENTS}
    assert [i["shape"] for i in model["inputs"] if i["name"] == "U"] == [[-1, -1]]


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
@pytest.mark.parametrize("K", [None, 2])
def test_triton_infer_equals_bptt(triton_client, live_server, rng, binary_in, binary_out, K):
    p = make_problem(rng, H=5, C=9, T=11, s0=True)
    arrays = {"U": p.U, "V": p.V, "W": p.W, "x": p.x.astype(np.int64), "y": p.y.astype(np.int64), "s0": p.s0}
    outputs = [triton.InferRequestedOutput(n, binary_data=binary_out) for n in ("loss", "tokens", *GRADIENTS)]
    params = {} if K is None else {"bptt_truncate": K}
    result = triton_client.infer("bptt", triton_inputs(arrays, binary_in), outputs=outputs, parameters=params)
    # The same request through POST /bptt.
    import httpx

    ref = httpx.post(f"{live_server.url}/bptt", json=p.body(bptt_truncate=K), timeout=30).json()
    for name in GRADIENTS:
        np.testing.assert_array_equal(result.as_numpy(name), np.array(ref[name]))
    assert result.as_numpy("loss")[0] == ref["loss"]
    assert result.as_numpy("tokens")[0] == 11


def test_triton_infer_all_outputs_binary_by_default(triton_client, rng):
    p = make_problem(rng, H=4, C=6, T=7)
    arrays = {"U": p.U, "V": p.V, "W": p.W, "x": p.x.astype(np.int32), "y": p.y.astype(np.int32)}
    result = triton_client.infer("bptt", triton_inputs(arrays, True))  # no outputs: binary_data_output
    g = engine.bptt(p.U, p.V, p.W, p.x, p.y)
    np.testing.assert_array_equal(result.as_numpy("dLdU"), g.dLdU)
    assert result.get_output("dLdU")["parameters"]["binary_data_size"] == g.dLdU.nbytes


def test_triton_infer_float32(triton_client, rng):
    p = make_problem(rng, H=4, C=6, T=7)
    arrays = {
        "U": p.U.astype(np.float32),
        "V": p.V.astype(np.float32),
        "W": p.W.astype(np.float32),
        "x": p.x.astype(np.int64),
        "y": p.y.astype(np.int64),
    }
    result = triton_client.infer("bptt", triton_inputs(arrays, True))
    assert result.as_numpy("dLdW").dtype == np.float32
    g = engine.bptt(*(arrays[k] for k in ("U", "V", "W", "x", "y")))
    np.testing.assert_array_equal(result.as_numpy("dLdW"), g.dLdW)


def test_triton_batch_with_lengths_equals_batch(triton_client, rng):
    p = make_problem(rng, H=5, C=8, T=1)
    lengths = np.array([3, 6, 1])
    X = np.zeros((3, 6), dtype=np.int64)
    Y = np.zeros((3, 6), dtype=np.int64)
    xs, ys = [], []
    for b, T in enumerate(lengths):
        xs.append(rng.integers(0, 8, T))
        ys.append(rng.integers(0, 8, T))
        X[b, :T], Y[b, :T] = xs[-1], ys[-1]
    arrays = {"U": p.U, "V": p.V, "W": p.W, "x": X, "y": Y, "lengths": lengths}
    result = triton_client.infer("bptt", triton_inputs(arrays, True), parameters={"bptt_truncate": 1})
    g = engine.bptt_batch(p.U, p.V, p.W, xs, ys, bptt_truncate=1)
    for name in ("dLdU", "dLdV", "dLdW", "dLds0", "final_state", "losses"):
        np.testing.assert_array_equal(result.as_numpy(name), getattr(g, name))
    assert result.as_numpy("tokens")[0] == 10


def test_triton_errors_are_400_with_message(triton_client, rng):
    p = make_problem(rng, H=4, C=6, T=5)
    arrays = {"U": p.U, "V": p.V, "W": p.W[:, :3], "x": p.x.astype(np.int64), "y": p.y.astype(np.int64)}
    with pytest.raises(InferenceServerException) as info:
        triton_client.infer("bptt", triton_inputs(arrays, True))
    assert info.value.status() == "400"
    assert info.value.message() == "W must be H x H = 4 x 4, got 4 x 3"
    with pytest.raises(InferenceServerException, match="unknown model 'other'"):
        triton_client.infer("other", triton_inputs(arrays, True))


# -- malformed requests, in-process -------------------------------------------


def json_input(name, a, datatype=None):
    datatype = datatype or {"f": "FP64", "i": "INT64"}[a.dtype.kind]
    return {"name": name, "shape": list(a.shape), "datatype": datatype, "data": a.ravel().tolist()}


def valid_inputs(p):
    return [json_input(n, getattr(p, n)) for n in ("U", "V", "W", "x", "y")]


def binary_request(p, *, header_extra=None, sizes=None):
    """A request with every input binary; ``sizes`` overrides binary_data_size per input."""
    inputs, chunks = [], []
    for n in ("U", "V", "W", "x", "y"):
        a = getattr(p, n)
        raw = a.astype("<f8" if a.dtype.kind == "f" else "<i8").tobytes()
        inputs.append(
            {
                "name": n,
                "shape": list(a.shape),
                "datatype": "FP64" if a.dtype.kind == "f" else "INT64",
                "parameters": {"binary_data_size": (sizes or {}).get(n, len(raw))},
            }
        )
        chunks.append(raw)
    header = orjson.dumps({"inputs": inputs, **(header_extra or {})})
    return header, b"".join(chunks)


def infer(client, body, headers=None):
    return client.post("/v2/models/bptt/infer", content=body, headers=headers or {})


@pytest.fixture
def problem(rng):
    return make_problem(rng, H=3, C=5, T=4)


BAD_JSON = {
    "missing input": (lambda p: {"inputs": valid_inputs(p)[:-1]}, "input y is required but missing"),
    "unknown input": (lambda p: {"inputs": [*valid_inputs(p), json_input("z", p.x)]}, "unknown input 'z'"),
    "duplicate input": (
        lambda p: {"inputs": [*valid_inputs(p), json_input("x", p.x)]},
        "input x is given more than once",
    ),
    "wrong datatype": (
        lambda p: {"inputs": [json_input("U", p.U, "INT64"), *valid_inputs(p)[1:]]},
        "U must have datatype FP64 or FP32, got 'INT64'",
    ),
    "float tokens": (
        lambda p: {"inputs": [*valid_inputs(p)[:3], json_input("x", p.x.astype(float), "INT64"), valid_inputs(p)[4]]},
        "x.data must hold integers (INT64)",
    ),
    "bool weight": (
        lambda p: {"inputs": [{**json_input("U", p.U), "data": [True] * 15}, *valid_inputs(p)[1:]]},
        "U.data must hold finite numbers (FP64), got true at U[0]",
    ),
    "string weight": (
        lambda p: {"inputs": [{**json_input("U", p.U), "data": ["1"] * 15}, *valid_inputs(p)[1:]]},
        "U.data must hold finite numbers (FP64)",
    ),
    "count vs shape": (
        lambda p: {"inputs": [{**json_input("U", p.U), "shape": [3, 4]}, *valid_inputs(p)[1:]]},
        "U.data holds 15 elements, but shape [3, 4] needs 12",
    ),
    "shapes disagree": (
        lambda p: {"inputs": [*valid_inputs(p)[:2], json_input("W", p.W[:2]), *valid_inputs(p)[3:]]},
        "W must be H x H = 3 x 3, got 2 x 3",
    ),
    "token range": (
        lambda p: {"inputs": [*valid_inputs(p)[:3], json_input("x", np.array([0, 1, 2, 5])), valid_inputs(p)[4]]},
        "x[3] = 5 is out of range",
    ),
    "bad truncate": (
        lambda p: {"inputs": valid_inputs(p), "parameters": {"bptt_truncate": -2}},
        "parameters.bptt_truncate must be an integer >= 0 or null, got -2",
    ),
    "unknown output": (
        lambda p: {"inputs": valid_inputs(p), "outputs": [{"name": "gradient"}]},
        "unknown output 'gradient'",
    ),
    "no data": (
        lambda p: {"inputs": [{k: v for k, v in json_input("U", p.U).items() if k != "data"}, *valid_inputs(p)[1:]]},
        "U has neither data nor parameters.binary_data_size",
    ),
    "not an object": (lambda p: [1, 2], "the body must be a JSON object"),
    "no inputs": (lambda p: {"inputs": []}, "inputs must have at least 1 item(s)"),
}


@pytest.mark.parametrize("case", list(BAD_JSON), ids=list(BAD_JSON))
def test_v2_bad_json_request_is_400(client, problem, case):
    make, words = BAD_JSON[case]
    r = infer(client, orjson.dumps(make(problem)))
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]
    assert r.json()["detail"] == r.json()["error"]


def test_v2_nan_in_binary_is_named(client, problem):
    problem.V[1, 2] = np.nan
    header, data = binary_request(problem)
    r = infer(client, header + data, {v2.HEADER_LENGTH: str(len(header))})
    assert r.status_code == 400
    assert r.json()["error"] == "V[1][2] must be a finite number, got NaN"


BAD_BINARY = {
    "header beyond body": (lambda h, d: (h + d, str(len(h + d) + 1)), "Inference-Header-Content-Length is"),
    "header not a number": (
        lambda h, d: (h + d, "ten"),
        "Inference-Header-Content-Length must be a byte count, got 'ten'",
    ),
    "header too short": (lambda h, d: (h + d, str(len(h) - 3)), "the body is not valid JSON"),
    "missing bytes": (lambda h, d: (h + d[:-8], str(len(h))), "only 24 bytes of binary data remain"),
    "extra bytes": (lambda h, d: (h + d + b"\0" * 8, str(len(h))), "8 bytes after the binary inputs"),
    "no header length": (lambda h, d: (h + d, None), "the body is not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_BINARY), ids=list(BAD_BINARY))
def test_v2_bad_binary_request_is_400(client, problem, case):
    header, data = binary_request(problem)
    body, length = BAD_BINARY[case][0](header, data)
    r = infer(client, body, {} if length is None else {v2.HEADER_LENGTH: length})
    assert r.status_code == 400, r.text
    assert BAD_BINARY[case][1] in r.json()["error"]


def test_v2_size_that_does_not_match_datatype_is_400(client, problem):
    header, data = binary_request(problem, sizes={"U": 15 * 4})
    r = infer(client, header + data, {v2.HEADER_LENGTH: str(len(header))})
    assert r.status_code == 400
    assert r.json()["error"] == "U (binary_data_size) holds 60 bytes, but shape [3, 5] of float64 needs 15 x 8 = 120"


def test_v2_binary_round_trip_in_process(client, problem):
    header, data = binary_request(problem, header_extra={"parameters": {"binary_data_output": True}, "id": "r1"})
    r = infer(client, header + data, {v2.HEADER_LENGTH: str(len(header))})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers[v2.HEADER_LENGTH])
    head = orjson.loads(r.content[:n])
    assert head["id"] == "r1"
    offset = n
    g = engine.bptt(problem.U, problem.V, problem.W, problem.x, problem.y)
    for out in head["outputs"]:
        size = out["parameters"]["binary_data_size"]
        a = np.frombuffer(r.content[offset : offset + size], dtype="<f8" if out["datatype"] == "FP64" else "<i8")
        offset += size
        if out["name"] == "dLdV":
            np.testing.assert_array_equal(a.reshape(out["shape"]), g.dLdV)
    assert offset == len(r.content)


def test_v2_unknown_version_is_404(client):
    r = client.get("/v2/models/bptt/versions/7")
    assert r.status_code == 404
    assert (
        r.json()["error"]
        == "unknown model 'bptt' version '7': this server serves 'bptt', 'bptt-gru', 'bptt-lstm', version 1"
    )
    assert client.get("/v2/models/bptt/versions/1/ready").status_code == 200


def test_kserve_rest_client_equals_bptt(live_server, rng):
    """The KServe SDK's REST client (V2 protocol), binary inputs, one output binary and one JSON."""
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
    from kserve.protocol.infer_type import RequestedOutput

    p = make_problem(rng, H=4, C=7, T=6)

    async def run():
        async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as client:
            assert await client.is_server_live(live_server.url)
            assert await client.is_model_ready(live_server.url, "bptt")
            inputs = []
            for name in ("U", "V", "W", "x", "y"):
                a = getattr(p, name)
                t = InferInput(name, list(a.shape), "FP64" if a.dtype.kind == "f" else "INT64")
                t.set_data_from_numpy(a, binary_data=True)
                inputs.append(t)
            request = InferRequest(
                model_name="bptt",
                infer_inputs=inputs,
                parameters={"bptt_truncate": 3},
                request_outputs=[
                    RequestedOutput("dLdU", parameters={"binary_data": True}),
                    RequestedOutput("loss", parameters={"binary_data": False}),
                ],
            )
            response = await client.infer(live_server.url, request, model_name="bptt")
            return {o.name: o.as_numpy() for o in response.outputs}

    out = asyncio.run(run())
    g = engine.bptt(p.U, p.V, p.W, p.x, p.y, bptt_truncate=3)
    np.testing.assert_array_equal(out["dLdU"], g.dLdU)
    assert out["loss"][0] == g.loss
