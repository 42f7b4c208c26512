"""The gated models of the Open Inference Protocol over HTTP: ``bptt-gru`` and ``bptt-lstm``.

The same engine as ``POST /bptt`` with ``cell``: answers are compared with it bit for bit,
through Triton's own HTTP client (binary tensors in and out) and through JSON forms.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from service import gated
from service.client import Client
from service.errors import InputError
from service.v2 import protocol

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
            "datatype": {"float64": "FP64", "float32": "FP32"}.get(a.dtype.name, "INT64"),
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


# -- the protocol in-process (service.v2.protocol): what the mutation tests run -----------------------------

FP = ["FP64", "FP32"]
INT = ["INT64", "INT32"]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gated_model_inputs_outputs_and_description_exactly(cell):
    G, gates = (3, "r, z, n") if cell == "gru" else (4, "i, f, g, o")
    m = protocol._gated(cell)
    assert (m.name, m.cell) == (f"bptt-{cell}", cell)
    inputs = {n: (list(t), s, r) for n, (t, s, r) in m.inputs.items()}
    want = {
        "U": (FP, [G, -1, -1], True),
        "V": (FP, [-1, -1], True),
        "W": (FP, [G, -1, -1], True),
        "x": (INT, [-1], True),
        "y": (INT, [-1], True),
        "s0": (FP, [-1], False),
        "lengths": (INT, [-1], False),
        "b": (FP, [G, -1], False),
        "b_hh": (FP, [G, -1], False),
        "c": (FP, [-1], False),
    } | ({"c0": (FP, [-1], False)} if cell == "lstm" else {})
    assert inputs == want and list(inputs) == list(want)
    outputs = {"loss": ("FP64", [1]), "mean_loss": ("FP64", [1]), "tokens": ("INT64", [1])}
    outputs |= {"dLdU": ("FP64", [G, -1, -1]), "dLdV": ("FP64", [-1, -1]), "dLdW": ("FP64", [G, -1, -1])}
    outputs |= {"dLds0": ("FP64", [-1]), "final_state": ("FP64", [-1]), "losses": ("FP64", [-1])}
    outputs |= {"dLdb": ("FP64", [G, -1]), "dLdb_hh": ("FP64", [G, -1]), "dLdc": ("FP64", [-1])}
    outputs |= {"dLdc0": ("FP64", [-1]), "final_cell": ("FP64", [-1])} if cell == "lstm" else {}
    assert m.outputs == outputs and list(m.outputs) == list(outputs)
    lstm = cell == "lstm"
    assert m.description == (
        f"Loss and BPTT gradients of {'an LSTM' if lstm else 'a GRU'} language model (POST /bptt with "
        f'"cell": "{cell}"): U [{G}, H, C] and W [{G}, H, H], the gates stacked in PyTorch\'s order ({gates}), '
        f"V [C, H]; optional biases b and b_hh [{G}, H] (PyTorch's bias_ih, bias_hh) and c [C]"
        + (", and the initial cell state c0 ([H], or [B, H] for a batch)" if lstm else "")
        + ". FP64, or FP32 (U, V, W all three) to compute in float32. x, y, s0, lengths and bptt_truncate as "
        "for the model bptt"
        + (
            "."
            if lstm
            else "; parameter reset_after (true: torch.nn.GRU's form, the reset applied after the product; "
            "false or absent: the tutorial's)."
        )
        + " The bias gradients are answered for the biases given."
    )
    assert protocol.MODELS[m.name] == m


def call_of(model: str, arrays: dict[str, np.ndarray], **parameters: Any) -> protocol.Call:
    body = {"inputs": v2_inputs(arrays), "parameters": parameters}
    return protocol.parse_request(json.dumps(body).encode(), None, model)


@pytest.mark.parametrize(("cell", "reset_after", "dtype"), [("gru", True, "float64"), ("lstm", False, "float32")])
def test_protocol_infer_single_sequence_equals_the_engine(cell, reset_after, dtype):
    """One sequence [T], every optional input, in FP64 or FP32: every output equal to gated.bptt's."""
    arrays = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in problem(cell).items()}
    parameters = {"bptt_truncate": 3} | ({"reset_after": True} if reset_after else {})
    call = call_of(f"bptt-{cell}", arrays, **parameters)
    assert call.reset_after is reset_after and call.model == f"bptt-{cell}"
    assert protocol.work_size(call) == (4, 7, [6])
    out = protocol.infer(call)
    extra = {k: arrays[k] for k in ("b", "b_hh", "c", "s0") + (("c0",) if cell == "lstm" else ())}
    want = gated.bptt(cell, arrays["U"], arrays["V"], arrays["W"], arrays["x"], arrays["y"], bptt_truncate=3,
                      reset_after=reset_after, **extra)  # fmt: skip
    names = ["dLdU", "dLdV", "dLdW", "dLds0", "final_state", "dLdb", "dLdb_hh", "dLdc"]
    names += ["dLdc0", "final_cell"] if cell == "lstm" else []
    assert sorted(out) == sorted(["loss", "mean_loss", "tokens", "losses", *names])
    for name in names:
        assert out[name].dtype == np.dtype(dtype), name
        np.testing.assert_array_equal(out[name], getattr(want, name), err_msg=name)
    assert out["tokens"].dtype == np.int64 and out["tokens"].tolist() == [6]
    assert out["loss"].tolist() == [want.loss] and out["losses"].tolist() == [want.loss]


def test_protocol_infer_gru_batch_without_lengths_equals_the_engine():
    arrays = problem("gru", T=5)
    rng = np.random.default_rng(43)
    x, y = rng.integers(0, 7, (3, 5)), rng.integers(0, 7, (3, 5))
    batch = {k: arrays[k] for k in ("U", "V", "W", "b", "b_hh", "c")} | {"x": x, "y": y}
    out = protocol.infer(call_of("bptt-gru", batch))
    weights = {k: arrays[k] for k in ("U", "V", "W")}
    want = gated.bptt_batch("gru", **weights, xs=list(x), ys=list(y), b=arrays["b"], b_hh=arrays["b_hh"],
                            c=arrays["c"])  # fmt: skip
    for name in ("dLdU", "dLdV", "dLdW", "dLds0", "final_state", "dLdb", "dLdb_hh", "dLdc", "losses"):
        np.testing.assert_array_equal(out[name], getattr(want, name), err_msg=name)
    assert out["tokens"].tolist() == [15]


def test_protocol_work_size_reads_the_models_rank():
    arrays = problem("lstm")
    assert protocol.work_size(call_of("bptt-lstm", arrays)) == (4, 7, [6])
    flat = arrays | {"U": arrays["U"][0]}  # H x C for a gated model: the engine names it, not the limits
    assert protocol.work_size(call_of("bptt-lstm", flat)) == (0, 0, [6])
    deep = protocol.Call(arrays=call_of("bptt-lstm", arrays).arrays | {"U": arrays["U"][None]}, bptt_truncate=None,
                         request_id=None, outputs=["loss"], model="bptt-lstm")  # fmt: skip
    assert protocol.work_size(deep) == (0, 0, [6])


def test_reset_after_parameter_errors_name_the_parameter():
    gru, lstm = protocol.MODELS["bptt-gru"], protocol.MODELS["bptt-lstm"]
    assert protocol.reset_after(gru, True) is True
    assert protocol.reset_after(gru, False) is False
    assert protocol.reset_after(lstm, None) is False
    for model, value, message in [
        (lstm, False, "parameters.reset_after is a parameter of the model bptt-gru; this is bptt-lstm"),
        (gru, "yes", "parameters.reset_after must be true or false, got 'yes'"),
    ]:
        with pytest.raises(InputError) as info:
            protocol.reset_after(model, value)
        assert (info.value.field, info.value.message) == ("parameters.reset_after", message)


def test_fp64_bias_beyond_float32_with_fp32_weights_is_refused_by_name():
    arrays = {k: v.astype("float32") if k in ("U", "V", "W") else v for k, v in problem("gru").items()}
    arrays["b_hh"] = arrays["b_hh"] * 0 + 1e39  # FP64, past float32's largest
    with pytest.raises(InputError) as info:
        protocol.infer(call_of("bptt-gru", arrays))
    assert info.value.field.startswith("b_hh")
    assert "when converted to float32" in info.value.message
