"""The gated models of the Open Inference Protocol over HTTP: ``bptt-gru`` and ``bptt-lstm``.

The same engine as ``POST /bptt`` with ``cell``: answers are compared with it bit for bit,
through Triton's own HTTP client (binary tensors in and out) and through JSON forms.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from service.client import Client

GATES = {"gru": 3, "lstm": 4}


@pytest.fixture(scope="module")
def triton_client(live_server) -> Iterator[Any]:
    client = triton.InferenceServerClient(url=live_server.url.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


def problem(cell: str, *, H: int = 4, C: int = 7, T: int = 6, seed: int = 41) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    G = GATES[cell]
    arrays = {"U": rng.normal(0, 0.5, (G, H, C)), "V": rng.normal(0, 0.5, (C, H)), "W": rng.normal(0, 0.5, (G, H, H))}
    arrays |= {"x": rng.integers(0, C, T), "y": rng.integers(0, C, T)}
    arrays |= {"b": rng.normal(0, 0.5, (G, H)), "b_hh": rng.normal(0, 0.5, (G, H)), "c": rng.normal(0, 0.5, C)}
    arrays |= {"s0": rng.normal(0, 0.5, H)}
    if cell == "lstm":
        arrays["c0"] = rng.normal(0, 0.5, H)
    return arrays


def v2_inputs(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """JSON tensors (nested data) for the HTTP V2 route."""
    return [
        {
            "name": n,
            "shape": list(a.shape),
            "datatype": "FP64" if a.dtype.kind == "f" else "INT64",
            "data": a.tolist(),
        }
        for n, a in arrays.items()
    ]


@pytest.mark.parametrize(("cell", "reset_after", "K"), [("gru", False, None), ("gru", True, 2), ("lstm", False, 3)])
def test_triton_http_client_gated_model_equals_bptt_with_cell(triton_client, live_server, cell, reset_after, K):
    """Binary tensors in and out through tritonclient.http: every output of bptt-gru / bptt-lstm equal to
    POST /bptt with the same cell, bit for bit."""
    arrays = problem(cell)
    inputs = []
    for name, a in arrays.items():
        t = triton.InferInput(name, list(a.shape), "FP64" if a.dtype.kind == "f" else "INT64")
        t.set_data_from_numpy(a, binary_data=True)
        inputs.append(t)
    parameters = ({} if K is None else {"bptt_truncate": K}) | ({"reset_after": True} if reset_after else {})
    result = triton_client.infer(f"bptt-{cell}", inputs, parameters=parameters)
    assert result.get_response()["model_name"] == f"bptt-{cell}"
    with Client(live_server.url) as client:
        weights = {k: arrays[k] for k in ("U", "V", "W", "b", "b_hh", "c", "s0")}
        expected = client.bptt(**weights, x=arrays["x"], y=arrays["y"], c0=arrays.get("c0"), bptt_truncate=K,
                               cell=cell, reset_after=reset_after)  # fmt: skip
    names = ["dLdU", "dLdV", "dLdW", "dLds0", "final_state", "dLdb", "dLdb_hh", "dLdc"]
    names += ["dLdc0", "final_cell"] if cell == "lstm" else []
    assert {o["name"] for o in result.get_response()["outputs"]} == {"loss", "mean_loss", "tokens", "losses", *names}
    for name in names:
        np.testing.assert_array_equal(result.as_numpy(name), getattr(expected, name), err_msg=name)
    assert result.as_numpy("loss")[0] == expected.loss


def test_gated_model_metadata_lists_its_own_inputs_and_outputs(client):
    lstm = client.get("/v2/models/bptt-lstm").json()
    assert lstm["name"] == "bptt-lstm"
    inputs = {t["name"]: t for t in lstm["inputs"]}
    assert list(inputs) == ["U", "V", "W", "x", "y", "s0", "lengths", "b", "b_hh", "c", "c0"]
    assert inputs["U"]["shape"] == [4, -1, -1] and inputs["b"]["shape"] == [4, -1]
    assert {t["name"] for t in lstm["outputs"]} >= {"dLdb_hh", "dLdc0", "final_cell"}
    gru = client.get("/v2/models/bptt-gru/versions/1").json()
    assert "c0" not in {t["name"] for t in gru["inputs"]}
    assert "final_cell" not in {t["name"] for t in gru["outputs"]}
    assert "reset_after" in gru["description"]
    vanilla = client.get("/v2/models/bptt").json()
    assert [t["name"] for t in vanilla["inputs"]] == ["U", "V", "W", "x", "y", "s0", "lengths"]
    assert client.get("/v2/models/bptt-gru/ready").json() == {"name": "bptt-gru", "ready": True}


def test_outputs_default_to_what_the_inputs_give(client):
    """Without biases, a gated model answers no bias gradients; asking for one names the missing input."""
    arrays = {k: v for k, v in problem("gru").items() if k not in ("b", "b_hh", "c")}
    r = client.post("/v2/models/bptt-gru/infer", json={"inputs": v2_inputs(arrays)})
    assert r.status_code == 200, r.text
    assert {o["name"] for o in r.json()["outputs"]} == {
        "loss", "mean_loss", "tokens", "losses", "dLdU", "dLdV", "dLdW", "dLds0", "final_state"
    }  # fmt: skip
    asked = {"inputs": v2_inputs(arrays), "outputs": [{"name": "dLdb"}]}
    r = client.post("/v2/models/bptt-gru/infer", json=asked)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "output dLdb is the gradient of the input b, which the request does not give"


BAD = {
    "c0 to the GRU": (
        "bptt-gru",
        {"c0": np.zeros(4)},
        {},
        "unknown input 'c0'; the model bptt-gru takes U, V, W, x, y, s0, lengths, b, b_hh, c",
    ),
    "reset_after to the LSTM": (
        "bptt-lstm",
        {},
        {"reset_after": True},
        "parameters.reset_after is a parameter of the model bptt-gru; this is bptt-lstm",
    ),
    "reset_after not a boolean": (
        "bptt-gru",
        {},
        {"reset_after": 1},
        "parameters.reset_after must be true or false, got 1",
    ),
    "a vanilla U to the GRU": (
        "bptt-gru",
        {"U": np.zeros((4, 7))},
        {},
        "U must be G x H x C with G = 3 gates (r, z, n) for cell 'gru', got 4 x 7",
    ),
    "biases to the vanilla model": ("bptt", {"b": np.zeros(4)}, {}, "unknown input 'b'; the model bptt takes"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_gated_model_errors_name_the_model_and_the_field(client, case):
    model, change, parameters, words = BAD[case]
    arrays = problem("gru" if model == "bptt-gru" else "lstm")
    if model == "bptt":
        arrays = {k: v for k, v in arrays.items() if k in ("V", "x", "y")}
        arrays |= {"U": np.zeros((4, 7)), "W": np.zeros((4, 4))}
    arrays |= change
    r = client.post(f"/v2/models/{model}/infer", json={"inputs": v2_inputs(arrays), "parameters": parameters})
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]


def test_batch_c0_rows_on_the_lstm(client):
    """[B, T] x with lengths and c0 [B, H]: equal to /bptt/batch with each sequence's c0."""
    arrays = problem("lstm", T=5)
    rng = np.random.default_rng(42)
    x, y = rng.integers(0, 7, (2, 5)), rng.integers(0, 7, (2, 5))
    s0, c0 = rng.normal(0, 0.5, (2, 4)), rng.normal(0, 0.5, (2, 4))
    batch = {k: arrays[k] for k in ("U", "V", "W")} | {"x": x, "y": y, "s0": s0, "c0": c0, "lengths": np.array([5, 3])}
    r = client.post("/v2/models/bptt-lstm/infer", json={"inputs": v2_inputs(batch)})
    assert r.status_code == 200, r.text
    out = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in r.json()["outputs"]}
    seqs = [{"x": x[0].tolist(), "y": y[0].tolist(), "s0": s0[0].tolist(), "c0": c0[0].tolist()}]
    seqs.append({"x": x[1, :3].tolist(), "y": y[1, :3].tolist(), "s0": s0[1].tolist(), "c0": c0[1].tolist()})
    weights = {k: arrays[k].tolist() for k in ("U", "V", "W")}
    want = client.post("/bptt/batch", json={"cell": "lstm", **weights, "sequences": seqs}).json()
    for name in ("dLdU", "dLdV", "dLdW", "dLds0", "final_state", "dLdc0", "final_cell"):
        np.testing.assert_array_equal(out[name], np.array(want[name]), err_msg=name)
    assert out["losses"].tolist() == want["losses"]
