"""POST /bptt/flow over HTTP: the flow engine's numbers (tests/test_flow.py checks them against autograd),
the truncation bias equal at every K to what /bptt answers with that truncation, and its own price."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from helpers import make_problem

from service import flow
from service.app import create_app
from service.settings import Settings

JSON = {"content-type": "application/json"}


def test_flow_route_answers_the_engines_numbers(client, rng):
    p = make_problem(rng, H=4, C=5, T=7, s0=True)
    r = client.post("/bptt/flow", content=orjson.dumps(p.body(norm="frobenius")), headers=JSON)
    assert r.status_code == 200, r.text
    got = r.json()
    want = flow.flow(p.U, p.V, p.W, p.x, p.y, s0=p.s0, norm="frobenius")
    assert got["norm"] == "frobenius"
    table = got["log10_jacobian_norms"]
    assert len(table) == 7 and all(len(row) == 7 for row in table)
    for t in range(7):
        for k in range(7):
            if k > t:
                assert table[t][k] is None  # above the diagonal
            else:
                assert table[t][k] == pytest.approx(want.log10_jacobian_norms[t, k], abs=1e-12)
    assert table[3][3] == pytest.approx(np.log10(np.sqrt(4)))  # the identity's Frobenius norm
    np.testing.assert_allclose(got["step_jacobian_sigma"], want.step_jacobian_sigma, rtol=1e-12)
    assert got["W_spectral_radius"] == pytest.approx(max(abs(np.linalg.eigvals(p.W))), rel=1e-12)
    assert got["lag_contributions"]["lag"] == list(range(7))


def test_truncation_bias_equals_bptt_at_every_K(client, rng):
    p = make_problem(rng, H=3, C=4, T=6, scale=2.0)
    r = client.post("/bptt/flow", content=orjson.dumps(p.body()), headers=JSON)
    bias = r.json()["truncation_bias"]
    full = client.post("/bptt", content=orjson.dumps(p.body()), headers=JSON).json()
    for K in range(6):
        cut = client.post("/bptt", content=orjson.dumps(p.body(bptt_truncate=K)), headers=JSON).json()
        for name in ("dLdU", "dLdW", "dLds0"):
            g, gK = np.array(full[name]), np.array(cut[name])
            want = np.linalg.norm(gK - g) / np.linalg.norm(g) if np.linalg.norm(g) else 0.0
            assert bias[name][K] == pytest.approx(want, abs=1e-9), (name, K)
    assert bias["K"] == list(range(6)) and bias["dLdW"][5] == 0.0


def test_flow_is_priced_and_refused_over_budget(rng):
    p = make_problem(rng, H=60, C=5, T=300)
    with TestClient(create_app(Settings(max_request_seconds=0.5))) as c:
        dry = c.post("/bptt/flow/cost", content=orjson.dumps(p.body()), headers=JSON).json()
        r = c.post("/bptt/flow", content=orjson.dumps(p.body()), headers=JSON)
    assert dry["admitted"] is False and dry["estimate"]["terms"]["Jacobian products"] > 0.5
    assert r.status_code == 413 and "BPTT_MAX_REQUEST_SECONDS" in r.json()["detail"]
