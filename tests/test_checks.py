"""service.checks and its routes: gradient checks, and a learner's gradients diagnosed."""

from __future__ import annotations

import dataclasses

import mistakes
import numpy as np
import orjson
import pytest
import seed
from fastapi.testclient import TestClient
from helpers import make_problem

from service import checks
from service.app import create_app
from service.schemas import CompareResponse, GradientCheckResponse
from service.settings import Settings

pytestmark = pytest.mark.usefixtures("both_loops")  # the compiled paths and the numpy reference (conftest)


def test_relative_error_never_passes_nan_and_zero_is_zero():
    a = np.array([0.0, 1e-12, 1.0, 2.0])
    n = np.array([0.0, 0.0, 1.0 + 1e-9, -2.0])
    rel = checks.relative_error(a, n)
    assert rel[0] == 0.0  # 0 vs 0 agrees exactly: not NaN
    assert rel[1] == pytest.approx(1e-4)  # tiny numbers compare absolutely against 1e-8
    assert rel[2] == pytest.approx(1e-9, rel=1e-3)
    assert rel[3] == 2.0
    # The tutorial's formula gives NaN at 0/0, and NaN > threshold is False: a silent pass.
    with np.errstate(invalid="ignore"):
        assert np.isnan(np.abs(a - n)[0] / (np.abs(a) + np.abs(n))[0])


def test_gradient_check_passes_full_bptt(rng):
    p = make_problem(rng, H=4, C=6, T=8, scale=2.0, s0=True)
    arrays = dict(U=p.U, V=p.V, W=p.W, x=p.x, y=p.y, s0=p.s0, b=rng.uniform(-1, 1, 4), c=rng.uniform(-1, 1, 6))
    report = checks.gradient_check(arrays, samples=12)
    assert set(report) == {"U", "V", "W", "b", "c", "s0"}
    for name, r in report.items():
        assert r["passed"], (name, r)
        assert r["checked"] == min(12, r["entries"])
        assert r["max_relative_error"] < 1e-6


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gradient_check_of_a_gated_cell_checks_every_parameter(monkeypatch, rng, cell):
    """With ``cell``, the gated engine's gradients of all eight parameters (b_hh and the LSTM's c0 too)
    against central differences of the gated loss; a gated engine with dL/dW 1% off fails W alone."""
    from service import gated

    G, H, C, T = {"gru": 3, "lstm": 4}[cell], 3, 5, 6
    arrays = {
        "cell": cell,
        "U": rng.uniform(-1, 1, (G, H, C)),
        "V": rng.uniform(-1, 1, (C, H)),
        "W": rng.uniform(-1, 1, (G, H, H)),
        "x": rng.integers(0, C, T),
        "y": rng.integers(0, C, T),
        "b": rng.uniform(-1, 1, (G, H)),
        "b_hh": rng.uniform(-1, 1, (G, H)),
        "c": rng.uniform(-1, 1, C),
        "s0": rng.uniform(-1, 1, H),
    }
    if cell == "lstm":
        arrays["c0"] = rng.uniform(-1, 1, H)
    else:
        arrays["reset_after"] = True
    report = checks.gradient_check(arrays, samples=8)
    assert set(report) == {"U", "V", "W", "b", "b_hh", "c", "s0"} | ({"c0"} if cell == "lstm" else set())
    for name, r in report.items():
        assert r["passed"], (name, r)
        assert r["checked"] == min(8, r["entries"])
        assert r["max_relative_error"] < 1e-6
    real = gated.bptt
    monkeypatch.setattr(
        gated, "bptt", lambda *a, **k: dataclasses.replace(real(*a, **k), dLdW=real(*a, **k).dLdW * 1.01)
    )
    broken = checks.gradient_check(arrays, samples=8)
    assert [name for name, r in broken.items() if not r["passed"]] == ["W"]
    assert broken["W"]["max_relative_error"] > 1e-3


def test_gradient_check_fails_truncated_gradients(rng):
    p = make_problem(rng, H=4, C=6, T=12, scale=3.0)
    report = checks.gradient_check(dict(U=p.U, V=p.V, W=p.W, x=p.x, y=p.y, bptt_truncate=1), samples=16)
    assert report["V"]["passed"]  # no time recursion in dL/dV
    assert not report["W"]["passed"]
    assert report["W"]["max_relative_error"] > 1e-3


@pytest.mark.parametrize("K", [None, 3])
def test_compare_names_each_classic_mistake(rng, K):
    """The wrong gradients come from tests/mistakes.py (the seed's loop with the mistake made), not from checks."""
    p = make_problem(rng, H=4, C=5, T=9, scale=2.0)
    arrays = dict(U=p.U, V=p.V, W=p.W, x=p.x, y=p.y, s0=None, bptt_truncate=K)
    right = dict(zip(("dLdU", "dLdV", "dLdW"), seed.bptt(p.U, p.V, p.W, p.x, p.y, 9 if K is None else K), strict=True))
    assert checks.compare(arrays, right) | {"parameters": None} == {
        "passed": True,
        "tolerance": 1e-6,
        "disagreement": None,
        "parameters": None,
        "diagnosis": [],
    }
    for name in mistakes.applicable(K):
        wrong = dict(
            zip(("dLdU", "dLdV", "dLdW"), mistakes.bptt(p.U, p.V, p.W, p.x, p.y, K, mistake=name), strict=True)
        )
        report = checks.compare(arrays, wrong)
        assert not report["passed"], name
        assert [d["mistake"] for d in report["diagnosis"]] == [name]


def test_compare_reports_worst_entries_without_a_diagnosis(rng):
    p = make_problem(rng, H=3, C=4, T=5)
    right = dict(zip(("dLdU", "dLdV", "dLdW"), seed.bptt(p.U, p.V, p.W, p.x, p.y, 5), strict=True))
    wrong = {k: v.copy() for k, v in right.items()}
    wrong["dLdV"][2, 1] += 0.5
    report = checks.compare(dict(U=p.U, V=p.V, W=p.W, x=p.x, y=p.y), wrong)
    assert report["parameters"]["dLdU"]["passed"] and not report["parameters"]["dLdV"]["passed"]
    assert report["parameters"]["dLdV"]["worst"][0]["index"] == [2, 1]
    assert report["parameters"]["dLdV"]["worst"][0]["abs_error"] == pytest.approx(0.5)
    assert report["diagnosis"] == []


def test_post_gradient_check(client, rng):
    p = make_problem(rng, H=3, C=5, T=6, s0=True)
    r = client.post("/gradient-check", content=orjson.dumps(p.body(samples=8, b=[0.1, -0.2, 0.3])))
    assert r.status_code == 200, r.text
    data = GradientCheckResponse.model_validate(r.json())
    assert data.passed and data.note is None
    assert set(data.parameters) == {"U", "V", "W", "b", "s0"}
    r = client.post("/gradient-check", content=orjson.dumps(p.body(bptt_truncate=0)))
    assert r.json()["note"].startswith("bptt_truncate = 0: the truncated gradients")


def test_post_bptt_compare_diagnoses_the_mean(client, rng):
    p = make_problem(rng, H=3, C=5, T=6)
    grads = seed.bptt(p.U, p.V, p.W, p.x, p.y, 6)
    body = p.body(dLdU=(grads[0] / 6).tolist(), dLdV=(grads[1] / 6).tolist(), dLdW=(grads[2] / 6).tolist())
    r = client.post("/bptt/compare", content=orjson.dumps(body))
    assert r.status_code == 200, r.text
    data = CompareResponse.model_validate(r.json())
    assert not data.passed
    assert [d.mistake for d in data.diagnosis] == ["mean_instead_of_sum"]
    assert "divided by T = 6" in data.diagnosis[0].explanation


def test_post_bptt_compare_shape_mismatch_is_named(client, rng):
    p = make_problem(rng, H=3, C=5, T=6)
    body = p.body(dLdU=p.U.T.tolist(), dLdV=p.V.tolist(), dLdW=p.W.tolist())
    r = client.post("/bptt/compare", content=orjson.dumps(body))
    assert r.status_code == 422
    assert r.json()["detail"] == "dLdU must have the shape of U, 3 x 5, got 5 x 3"


def test_checks_are_limited(rng):
    p = make_problem(rng, H=8, C=50, T=40)
    with TestClient(create_app(Settings(max_request_seconds=1e-4))) as c:
        r = c.post("/gradient-check", content=orjson.dumps(p.body()))
        assert r.status_code == 413
        assert "BPTT_MAX_REQUEST_SECONDS" in r.json()["detail"]
        g = seed.bptt(p.U, p.V, p.W, p.x, p.y, 40)
        r = c.post(
            "/bptt/compare", content=orjson.dumps(p.body(dLdU=g[0].tolist(), dLdV=g[1].tolist(), dLdW=g[2].tolist()))
        )
        assert r.status_code == 413


def test_regression_integral_float_seed_and_samples(client, rng):
    """Found by schemathesis: seed = 18252456.0 is an integer in JSON Schema."""
    p = make_problem(rng, H=2, C=3, T=3)
    r = client.post("/gradient-check", content=orjson.dumps(p.body(seed=18252456.0, samples=4.0)))
    assert r.status_code == 200, r.text
    r = client.post("/gradient-check", content=orjson.dumps(p.body(h=2.0)))
    assert r.status_code == 422 and "h: Input should be less than or equal to 1" in r.json()["detail"]


def test_regression_non_finite_central_difference_is_null_and_fails(rng, monkeypatch):
    """Found by schemathesis: an infinite difference was written as null into a number field."""
    p = make_problem(rng, H=2, C=3, T=3)
    monkeypatch.setattr(checks.engine, "loss", lambda *a, **k: float("inf"))
    report = checks.gradient_check(dict(U=p.U, V=p.V, W=p.W, x=p.x, y=p.y), samples=3)
    GradientCheckResponse.model_validate(
        {"passed": False, "h": 1e-5, "tolerance": 1e-6, "seed": 0, "parameters": report}
    )
    assert report["W"]["max_relative_error"] is None and not report["W"]["passed"]


def test_regression_float32_clip_beyond_its_range(rng):
    """Found by schemathesis: clip = 1e307 overflowed when cast to float32 (a warning, and inf)."""
    import warnings

    from service import engine

    p = make_problem(rng, H=3, C=4, T=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = engine.bptt(*(a.astype(np.float32) for a in (p.U, p.V, p.W)), p.x, p.y, clip=1e307)
    assert g.clipped == {"dLdU": 0, "dLdV": 0, "dLdW": 0}


def test_compare_without_a_fitting_mistake_says_where_it_is_off(client, rng):
    """A submission no mistake explains: the parameters by relative error, and dLdU's token columns."""
    p = make_problem(rng, H=4, C=6, T=8)
    g = seed.bptt(p.U, p.V, p.W, p.x, p.y, 8)
    dLdU = g[0].copy()
    token = int(p.x[2])
    dLdU[:, token] += 0.5  # one column off: the steps that read that token
    body = p.body(dLdU=dLdU.tolist(), dLdV=g[1].tolist(), dLdW=g[2].tolist())
    r = client.post("/bptt/compare", content=orjson.dumps(body))
    data = CompareResponse.model_validate(r.json())
    assert data.diagnosis == []
    assert data.disagreement is not None
    assert data.disagreement.parameters[0] == "dLdU"
    assert data.disagreement.dLdU_columns[0].token == token
    assert data.disagreement.dLdU_columns[0].max_absolute_error == pytest.approx(0.5)


def test_gradient_check_takes_a_step_per_parameter_and_reports_its_seed(client, rng):
    p = make_problem(rng, H=3, C=4, T=5)
    r = client.post("/gradient-check", content=orjson.dumps(p.body(h={"W": 1e-6}, seed=7, samples=4)))
    assert r.status_code == 200, r.text
    data = GradientCheckResponse.model_validate(r.json())
    assert data.seed == 7 and data.h == {"W": 1e-6}
    assert data.parameters["W"].h == 1e-6 and data.parameters["U"].h == 1e-5
    assert data.passed
    again = client.post("/gradient-check", content=orjson.dumps(p.body(h={"W": 1e-6}, seed=7, samples=4)))
    assert again.json() == r.json()  # the reported seed repeats the check exactly


def test_gradient_check_always_checks_the_largest_gradient(rng):
    """With 2 samples of 40 entries, the entry with the largest |dL/dU| is one of them."""
    p = make_problem(rng, H=4, C=10, T=6, scale=2.0)
    report = checks.gradient_check(dict(U=p.U, V=p.V, W=p.W, x=p.x, y=p.y), samples=2, seed=3)
    dLdU = seed.bptt(p.U, p.V, p.W, p.x, p.y, 6)[0]
    top = np.unravel_index(int(np.argmax(np.abs(dLdU))), dLdU.shape)
    # The report names the worst of the two checked; recheck with one sample: it must be the largest.
    one = checks.gradient_check(dict(U=p.U, V=p.V, W=p.W, x=p.x, y=p.y), samples=1, seed=3)
    assert one["U"]["worst"]["index"] == [int(i) for i in top]
    assert report["U"]["checked"] == 2
