"""The cost model at admission: every compute route priced before it runs, the price answered by
POST /bptt/cost, the limits listed by GET /limits, and a refusal that names the estimate and the setting."""

from __future__ import annotations

import tracemalloc

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from helpers import make_problem

from service import admission, costs, plans
from service.app import create_app
from service.client import Wire
from service.settings import Settings

JSON = {"content-type": "application/json"}


def body(p, **extra) -> bytes:
    return orjson.dumps(p.body(**extra))


def test_cost_answers_the_models_estimate_without_computing(client, rng):
    p = make_problem(rng, H=5, C=7, T=9)
    r = client.post("/bptt/cost", content=body(p, bptt_truncate=3), headers=JSON)
    assert r.status_code == 200, r.text
    answer = r.json()
    want = costs.bptt(lengths=[9], H=5, C=7, K=3)
    assert answer["admitted"] is True and answer["refusal"] is None
    assert answer["estimate"]["seconds"] == pytest.approx(want.seconds)
    assert answer["estimate"]["compute_bytes"] == want.bytes
    arrays = 8 * (5 * 7 * 2 + 25) + 2 * 8 * 9  # U, V, W; x, y
    answer_numbers = 2 * 5 * 7 + 25 + 2 * 5 + 1  # dLdU, dLdV, dLdW, dLds0 and final_state, loss
    assert answer["estimate"]["input_bytes"] == arrays + plans.ANSWER_BYTES_PER_NUMBER * answer_numbers
    assert sum(answer["estimate"]["terms"].values()) == pytest.approx(answer["estimate"]["seconds"])


@pytest.mark.parametrize("route", ["/bptt/batch", "/gradient-check", "/bptt/compare"])
def test_cost_prices_every_compute_route(client, rng, route):
    p = make_problem(rng, H=4, C=6, T=5)
    if route == "/bptt/batch":
        payload = {k: v for k, v in p.body().items() if k not in ("x", "y")}
        payload["sequences"] = [{"x": p.x.tolist(), "y": p.y.tolist()}, {"x": [1], "y": [2]}]
        content = orjson.dumps(payload)
    elif route == "/bptt/compare":
        content = body(p, dLdU=p.U.tolist(), dLdV=p.V.tolist(), dLdW=p.W.tolist())
    else:
        content = body(p)
    r = client.post(f"{route}/cost", content=content, headers=JSON)
    assert r.status_code == 200, r.text
    assert r.json()["route"] == route
    assert r.json()["admitted"] is True
    assert r.json()["estimate"]["seconds"] > 0


def _shapes_only(payload: dict, names=("U", "V", "W", "b", "b_hh", "c", "dLdU", "dLdV", "dLdW")) -> dict:
    """The payload with its weights (base64 tensor objects) as {dtype, shape}, without their data."""
    return {k: {"dtype": v["dtype"], "shape": v["shape"]} if k in names else v for k, v in payload.items()}


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("route", ["/bptt", "/bptt/batch", "/gradient-check", "/bptt/compare"])
def test_a_dry_run_of_shapes_alone_answers_what_the_whole_body_does(client, rng, route, cell):
    """Tensor objects without data are priced as the same request with its data: the same verdict and
    estimate, every term and byte, for a body of a few hundred bytes instead of the weights."""
    G = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    H, C, T = 4, 6, 5
    wire = Wire("base64", "float64")
    lead = () if cell == "rnn" else (G,)
    arrays = {"U": rng.normal(size=(*lead, H, C)), "V": rng.normal(size=(C, H)), "W": rng.normal(size=(*lead, H, H))}
    if not (route == "/bptt/compare" and cell == "rnn"):  # the tutorial's compare takes no biases
        arrays["b"] = rng.normal(size=(*lead, H))
    payload = {k: wire.array(v) for k, v in arrays.items()}
    if route in ("/bptt", "/bptt/batch"):  # the routes that answer arrays
        payload["encoding"] = "base64"
    if cell != "rnn":
        payload |= {"cell": cell, "b_hh": wire.array(rng.normal(size=(G, H)))}
    x, y = rng.integers(0, C, T).tolist(), rng.integers(0, C, T).tolist()
    if route == "/bptt/batch":
        payload["sequences"] = [{"x": x, "y": y}, {"x": x[:2], "y": y[:2]}]
    else:
        payload |= {"x": x, "y": y}
    if route == "/bptt/compare":
        payload |= {f"dLd{n}": wire.array(arrays[n]) for n in "UVW"}
    whole = client.post(f"{route}/cost", content=orjson.dumps(payload), headers=JSON)
    shapes = client.post(f"{route}/cost", content=orjson.dumps(_shapes_only(payload)), headers=JSON)
    assert whole.status_code == shapes.status_code == 200, shapes.text
    assert whole.json()["admitted"] is True
    assert shapes.json() == whole.json()


def test_a_tensor_without_data_is_refused_outside_a_dry_run(client, rng):
    p = make_problem(rng, H=4, C=6, T=5)
    payload = _shapes_only(
        orjson.loads(Wire("base64", "float64").batch_body(p.U, p.V, p.W, [p.x], [p.y])), names=("V",)
    )
    r = client.post("/bptt/batch", content=orjson.dumps(payload), headers=JSON)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "V.data"
    assert r.json()["detail"].startswith("V.data is required but missing (a tensor may omit its data only in a")


def test_a_dry_run_of_shapes_alone_refuses_what_the_whole_body_would(client):
    """A shape over a limit (C x H = 11 million) is refused from the shapes alone, as from the data (in
    float32, 44 MB: a tensor a body could still carry)."""
    payload = {"U": {"dtype": "float32", "shape": [1000, 11_000]}, "V": {"dtype": "float32", "shape": [11_000, 1000]},
               "W": {"dtype": "float32", "shape": [1000, 1000]}, "x": [0], "y": [0], "dtype": "float32"}  # fmt: skip
    r = client.post("/bptt/cost", content=orjson.dumps(payload), headers=JSON)
    assert r.status_code == 200, r.text
    assert r.json()["admitted"] is False
    assert "BPTT_MAX_WEIGHTS" in r.json()["refusal"]


def test_over_the_time_budget_is_413_naming_the_estimate_and_setting(rng):
    """K close to T costs T K H^2: priced and refused before any work, the price in the message."""
    p = make_problem(rng, H=100, C=65, T=1000)
    settings = Settings(max_request_seconds=0.5)
    content = Wire("base64", "float64").bptt_body(p.U, p.V, p.W, p.x, p.y, bptt_truncate=998)
    with TestClient(create_app(settings)) as c:
        dry = c.post("/bptt/cost", content=content, headers=JSON).json()
        r = c.post("/bptt", content=content, headers=JSON)
    assert r.status_code == 413
    detail = r.json()["detail"]
    assert "(setting BPTT_MAX_REQUEST_SECONDS)" in detail and "bptt_truncate = 998" in detail
    assert dry["admitted"] is False and dry["refusal"] == detail
    assert dry["estimate"]["seconds"] > 0.5


def test_padding_is_priced(rng):
    """One long sequence among many short ones pads to T_max x B: the memory budget sees it."""
    H, C = 64, 8
    lengths = [4000] + [1] * 1000
    padded = costs.bptt(lengths=lengths, H=H, C=C, K=None)
    unpadded = costs.bptt(lengths=[sum(lengths)], H=H, C=C, K=None)
    assert padded.bytes > 20 * unpadded.bytes
    refused = admission.refusal(Settings(), padded, inputs=0, what="this batch")
    assert refused is not None and "(setting BPTT_MAX_REQUEST_" in refused.message


def test_w_is_counted(rng):
    """H = 3000, C = 1 passes the C x H limit, but T steps of an H x H product are priced."""
    estimate = costs.bptt(lengths=[2000], H=3000, C=1, K=None)
    assert admission.refusal(Settings(), estimate, inputs=0, what="") is not None


def test_v2_infer_is_priced(rng):
    p = make_problem(rng, H=60, C=5, T=600)
    inputs = [
        {"name": n, "shape": list(getattr(p, n).shape), "datatype": "FP64" if n in "UVW" else "INT64",
         "data": getattr(p, n).ravel().tolist()}
        for n in ("U", "V", "W", "x", "y")
    ]  # fmt: skip
    with TestClient(create_app(Settings(max_request_seconds=1e-4))) as c:
        r = c.post("/v2/models/bptt/infer", json={"inputs": inputs, "parameters": {"bptt_truncate": 590}})
    assert r.status_code == 413
    assert "BPTT_MAX_REQUEST_SECONDS" in r.json()["error"]


def test_limits_lists_every_limit_with_its_setting_and_what_it_admits(client):
    r = client.get("/limits")
    assert r.status_code == 200
    limits = r.json()["limits"]
    settings = Settings()
    for name in ("max_request_seconds", "max_request_bytes", "max_body_bytes", "max_tokens", "request_timeout"):
        assert limits[name] == {"value": getattr(settings, name), "setting": f"BPTT_{name.upper()}"}
    admits = {a["shape"]: a["value"] for a in r.json()["admits"]}
    assert admits == {a["shape"]: a["value"] for a in admission.examples(settings)}
    # The tutorial's model with T = 50 is admitted by the defaults, with room.
    assert admits["the tutorial's model, C = 8000, H = 100, full BPTT"] >= 50


def test_examples_are_the_largest_admitted(rng):
    settings = Settings()
    for example in admission.examples(settings):
        if example["shape"].startswith("C = 1,"):
            H = example["value"]

            def inputs(H: int) -> int:
                return 8 * (2 * H + H * H) + 16 * 1000  # U, V, W and the token ids

            ok = admission.refusal(settings, costs.bptt(lengths=[1000], H=H, C=1, K=None), inputs=inputs(H), what="")
            over = admission.refusal(
                settings, costs.bptt(lengths=[1000], H=H + 1, C=1, K=None), inputs=inputs(H + 1), what=""
            )
            assert ok is None and over is not None
    assert np.isfinite([e["value"] for e in admission.examples(settings)]).all()


@pytest.mark.parametrize(
    ("route", "payload"),
    [
        ("/bptt", {"U": {"dtype": "float32", "shape": [2000, 20_000]}, "x": [0], "y": [0],
                   "V": {"dtype": "float32", "shape": [20_000, 2000]},
                   "W": {"dtype": "float32", "shape": [2000, 2000]}}),
        ("/vjp", {"x": {"dtype": "float32", "shape": [8, 50, 50_000]}, "h0": [[0.0]], "Wx": [[0.0]], "Wh": [[0.0]],
                  "b": [0.0], "dh": [[[0.0]]]}),
    ],
    ids=["bptt", "vjp"],
)  # fmt: skip
def test_a_dry_run_of_a_shape_no_body_could_carry_is_refused_without_building_it(client, route, payload):
    """A data-less tensor bigger than any body could carry as base64 is refused from its shape (the dry
    run is a few hundred bytes, so nothing else bounds it); under it, its zeros take no memory even where
    the route converts its dtype (float32 here, float64 computed)."""
    tracemalloc.start()
    r = client.post(f"{route}/cost", content=orjson.dumps(payload), headers=JSON)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert r.status_code == 200, r.text
    assert r.json()["admitted"] is False
    assert "more than a request body can carry as base64" in r.json()["refusal"]
    assert "BPTT_MAX_BODY_BYTES" in r.json()["refusal"]
    assert peak < 20 << 20, f"the dry run allocated {peak:,} bytes"


def test_a_dry_run_in_another_dtype_takes_no_memory(client):
    """float32 tensors priced for a float64 request (converted on the real path): zeros of float64 that take
    no memory, not a float64 copy of the shape."""
    payload = {"U": {"dtype": "float32", "shape": [1000, 10_000]}, "V": {"dtype": "float32", "shape": [10_000, 1000]},
               "W": {"dtype": "float32", "shape": [1000, 1000]}, "x": [0], "y": [0], "dtype": "float64"}  # fmt: skip
    tracemalloc.start()
    r = client.post("/bptt/cost", content=orjson.dumps(payload), headers=JSON)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert r.status_code == 200, r.text
    assert r.json()["estimate"] is not None
    assert peak < 20 << 20, f"the dry run allocated {peak:,} bytes (U alone would be 80 MB in float64)"
