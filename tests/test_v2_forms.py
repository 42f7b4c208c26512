"""service.v2: the Open Inference Protocol's remaining forms, every output of every answer checked.

Versioned and unversioned infer, [B, T] batches with and without ``lengths``,
batch ``s0``, FP32 and mixed weights, overflow, the early 413, unknown models;
``final_state`` against the tutorial's loop and chunks chained through it; the
batch's ``mean_loss``. Each answer's outputs (loss, mean_loss, tokens, dLdU,
dLdV, dLdW, dLds0, final_state, losses) are compared with ``service.engine``
run on the same arrays, with their datatypes and shapes. Docstrings name the
one-line bug a test catches, where a trial of mutations found one.

Dimension letters: T steps, H hidden, C vocabulary, B batch, N tokens of a batch.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import seed
from helpers import assert_close, make_problem

from service import engine

INFER = "/v2/models/bptt/infer"
OUTPUTS = ("loss", "mean_loss", "tokens", "dLdU", "dLdV", "dLdW", "dLds0", "final_state", "losses")
V2_TYPES = {"float64": "FP64", "float32": "FP32", "int64": "INT64", "int32": "INT32"}


def tensor(name: str, a: np.ndarray) -> dict[str, Any]:
    """One input as JSON data, its datatype from its dtype."""
    return {"name": name, "shape": list(a.shape), "datatype": V2_TYPES[a.dtype.name], "data": a.ravel().tolist()}


def request(parameters: dict[str, Any] | None = None, **arrays: np.ndarray) -> bytes:
    body: dict[str, Any] = {"inputs": [tensor(n, a) for n, a in arrays.items()]}
    if parameters:
        body["parameters"] = parameters
    return orjson.dumps(body)


def outputs(r: httpx.Response) -> dict[str, np.ndarray]:
    """The answer's outputs as arrays of their declared datatype and shape; every output once."""
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["model_name"], answer["model_version"]) == ("bptt", "1")
    out = {}
    for o in answer["outputs"]:
        dtype = {v: k for k, v in V2_TYPES.items()}[o["datatype"]]
        out[o["name"]] = np.array(o["data"], dtype=np.float64 if dtype.startswith("float") else np.int64)
        out[o["name"]] = out[o["name"]].astype(dtype).reshape(o["shape"])
    assert sorted(out) == sorted(OUTPUTS)
    return out


def expect(out: dict[str, np.ndarray], g: engine.Gradients | engine.BatchGradients) -> None:
    """Every output equal to the engine's result ``g`` (same arrays in, so bit for bit), dtypes included."""
    losses = g.losses if isinstance(g, engine.BatchGradients) else np.array([g.loss])
    scalars = {"loss": g.loss, "mean_loss": g.mean_loss, "tokens": g.tokens}
    for name, value in scalars.items():
        assert out[name].shape == (1,), name
        assert out[name][0] == value, (name, out[name][0], value)
    assert out["tokens"].dtype == np.int64
    np.testing.assert_array_equal(out["losses"], losses)
    for name in ("dLdU", "dLdV", "dLdW", "dLds0", "final_state"):
        want = getattr(g, name)
        assert out[name].dtype == want.dtype, name
        assert out[name].shape == want.shape, name
        np.testing.assert_array_equal(out[name], want, err_msg=name)


def error(r: httpx.Response, status: int, field: str) -> str:
    """The protocol's error body: ``error`` equal to ``detail``, the field named; the message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == body["detail"]
    assert body["errors"][0]["field"] == field, body
    message: str = body["error"]
    return message


def padded_batch(
    rng: np.random.Generator, lengths: list[int], C: int, T: int
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """[B, T] x and y, row b holding a random sequence of lengths[b] and padding after it; and the rows."""
    X = rng.integers(0, C, (len(lengths), T))  # the padding is random ids too: it must be ignored
    Y = rng.integers(0, C, (len(lengths), T))
    return X, Y, [X[b, :n] for b, n in enumerate(lengths)], [Y[b, :n] for b, n in enumerate(lengths)]


# -- routes ---------------------------------------------------------------------


def test_v2_versioned_infer_equals_unversioned_and_engine(client, rng):
    p = make_problem(rng, H=4, C=6, T=9, s0=True)
    body = request({"bptt_truncate": 3}, U=p.U, V=p.V, W=p.W, x=p.x, y=p.y, s0=p.s0)
    plain = outputs(client.post(INFER, content=body))
    versioned = outputs(client.post("/v2/models/bptt/versions/1/infer", content=body))
    expect(plain, engine.bptt(p.U, p.V, p.W, p.x, p.y, bptt_truncate=3, s0=p.s0))
    expect(versioned, engine.bptt(p.U, p.V, p.W, p.x, p.y, bptt_truncate=3, s0=p.s0))


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (
            "/v2/models/other/infer",
            "unknown model 'other': this server serves 'bptt', 'bptt-gru', 'bptt-lstm', version 1",
        ),
        (
            "/v2/models/bptt/versions/2/infer",
            "unknown model 'bptt' version '2': this server serves 'bptt', 'bptt-gru', 'bptt-lstm', version 1",
        ),
        (
            "/v2/models/other/versions/1/infer",
            "unknown model 'other' version '1': this server serves 'bptt', 'bptt-gru', 'bptt-lstm', version 1",
        ),
    ],
)
def test_v2_unknown_model_or_version_is_404_with_error(client, rng, path, message):
    p = make_problem(rng, H=2, C=3, T=2)
    r = client.post(path, content=request(U=p.U, V=p.V, W=p.W, x=p.x, y=p.y))
    assert error(r, 404, "model_name") == message
    assert r.json()["errors"][0]["type"] == "not_found"


def test_v2_early_413_carries_the_protocols_error(client):
    """Content-Length over BPTT_MAX_BODY_BYTES is answered before the body is read (2 bytes are
    sent), and on /v2 the answer has the protocol's ``error`` beside ``detail``."""
    huge = str(10**12)
    for path in (INFER, "/v2/models/bptt/versions/1/infer"):
        r = client.post(path, content=b"{}", headers={"content-length": huge})
        message = error(r, 413, "body")
        assert "BPTT_MAX_BODY_BYTES" in message
        assert r.json()["errors"][0]["type"] == "limit"
    r = client.post("/bptt", content=b"{}", headers={"content-length": huge})  # REST: no protocol field
    assert r.status_code == 413 and "error" not in r.json()


# -- batches --------------------------------------------------------------------


def test_v2_batch_without_lengths_uses_every_row_whole(client, rng):
    """Bug caught: rows of a [B, T] batch without ``lengths`` cut to T - 1."""
    p = make_problem(rng, H=3, C=5, T=1)
    X, Y, xs, ys = padded_batch(rng, [6, 6, 6], C=5, T=6)  # every row its full T = 6
    out = outputs(client.post(INFER, content=request(U=p.U, V=p.V, W=p.W, x=X, y=Y)))
    g = engine.bptt_batch(p.U, p.V, p.W, xs, ys)
    expect(out, g)
    assert out["tokens"][0] == 18 and out["losses"].shape == (3,)
    # Each row alone, through the tutorial's loop: the batch's loss is the sum of the rows'.
    rows = [seed.calculate_total_loss(p.U, p.V, p.W, X[b], Y[b]) for b in range(3)]
    assert_close(out["losses"], np.array(rows))


def test_v2_batch_s0_reaches_the_engine(client, rng):
    """Bug caught: the batch's s0 ([B, H]) dropped before the engine (zeros used instead)."""
    p = make_problem(rng, H=3, C=5, T=1)
    lengths = [4, 6, 2]
    X, Y, xs, ys = padded_batch(rng, lengths, C=5, T=6)
    S0 = rng.uniform(-1, 1, (3, 3))
    out = outputs(client.post(INFER, content=request(U=p.U, V=p.V, W=p.W, x=X, y=Y, s0=S0, lengths=np.array(lengths))))
    expect(out, engine.bptt_batch(p.U, p.V, p.W, xs, ys, s0=S0))
    zero = engine.bptt_batch(p.U, p.V, p.W, xs, ys)
    assert not np.allclose(out["final_state"], zero.final_state)  # s0 matters here
    for b, n in enumerate(lengths):  # each row's state, from its own s0, as the tutorial's loop has it
        _, s = seed.forward_propagation(p.U, p.V, p.W, xs[b], s0=S0[b])
        assert_close(out["final_state"][b], s[n - 1])


def test_v2_batch_s0_without_lengths_reaches_the_engine(client, rng):
    p = make_problem(rng, H=3, C=4, T=1)
    X, Y, _, _ = padded_batch(rng, [5, 5], C=4, T=5)
    S0 = rng.uniform(-1, 1, (2, 3))
    out = outputs(client.post(INFER, content=request(U=p.U, V=p.V, W=p.W, x=X, y=Y, s0=S0)))
    expect(out, engine.bptt_batch(p.U, p.V, p.W, list(X), list(Y), s0=S0))


def test_v2_batch_mean_loss_is_loss_over_all_tokens(client, rng):
    """Bug caught: the batch's mean_loss divided by B instead of N (the tokens of all sequences)."""
    p = make_problem(rng, H=3, C=5, T=1)
    lengths = [2, 5, 3]
    X, Y, xs, ys = padded_batch(rng, lengths, C=5, T=5)
    out = outputs(client.post(INFER, content=request(U=p.U, V=p.V, W=p.W, x=X, y=Y, lengths=np.array(lengths))))
    g = engine.bptt_batch(p.U, p.V, p.W, xs, ys)
    expect(out, g)
    assert out["tokens"][0] == 10
    assert out["mean_loss"][0] == pytest.approx(out["loss"][0] / 10, rel=1e-15)
    loop = sum(seed.calculate_total_loss(p.U, p.V, p.W, x, y) for x, y in zip(xs, ys, strict=True))
    assert out["mean_loss"][0] == pytest.approx(loop / 10, rel=1e-12)
    # The same through POST /bptt/batch.
    seqs = [{"x": x.tolist(), "y": y.tolist()} for x, y in zip(xs, ys, strict=True)]
    answer = client.post("/bptt/batch", json={k: getattr(p, k).tolist() for k in "UVW"} | {"sequences": seqs}).json()
    assert answer["tokens"] == 10
    assert answer["mean_loss"] == pytest.approx(loop / 10, rel=1e-12)


@pytest.mark.parametrize(
    ("lengths", "field", "message"),
    [
        ([3, 4, 2, 1], "lengths", "lengths must have B = 3 entries, got shape [4]"),
        ([3, 4], "lengths", "lengths must have B = 3 entries, got shape [2]"),
        ([[3], [4], [2]], "lengths", "lengths must have B = 3 entries, got shape [3, 1]"),
        ([3, 0, 2], "lengths[1]", "lengths[1] = 0 is out of range [1, T] = [1, 5]"),
        ([3, 4, 6], "lengths[2]", "lengths[2] = 6 is out of range [1, T] = [1, 5]"),
        ([-1, 4, 2], "lengths[0]", "lengths[0] = -1 is out of range [1, T] = [1, 5]"),
        # A length past T and past BPTT_MAX_TOKENS was priced before it was checked: a 413 blaming
        # sequences[1].x instead of the 400 naming lengths[1] (found by this test, fixed in work_size).
        ([3, 1_000_000, 2], "lengths[1]", "lengths[1] = 1000000 is out of range [1, T] = [1, 5]"),
    ],
)
def test_v2_bad_lengths_are_400_named(client, rng, lengths, field, message):
    p = make_problem(rng, H=2, C=3, T=1)
    X, Y, _, _ = padded_batch(rng, [5, 5, 5], C=3, T=5)
    r = client.post(INFER, content=request(U=p.U, V=p.V, W=p.W, x=X, y=Y, lengths=np.array(lengths)))
    assert error(r, 400, field) == message


# -- datatypes ------------------------------------------------------------------


@pytest.mark.parametrize("fp32", ["U", "V", "W", "UW"])
def test_v2_mixed_fp32_fp64_weights_compute_in_float64(client, rng, fp32):
    """Weights of both datatypes: every weight is taken as float64 (the FP32 ones exactly) and
    every output is FP64, equal to the engine's float64 result."""
    p = make_problem(rng, H=3, C=4, T=6, s0=True)
    weights = {n: getattr(p, n).astype(np.float32) if n in fp32 else getattr(p, n) for n in "UVW"}
    out = outputs(client.post(INFER, content=request(**weights, x=p.x, y=p.y, s0=p.s0)))
    as64 = {n: w.astype(np.float64) for n, w in weights.items()}
    g = engine.bptt(as64["U"], as64["V"], as64["W"], p.x, p.y, s0=p.s0)
    assert g.dLdW.dtype == np.float64
    expect(out, g)


def test_v2_all_fp32_weights_answer_fp32_gradients(client, rng):
    """All three FP32: computed in float32, the gradient outputs FP32 and equal to the engine's float32 ones."""
    p = make_problem(rng, H=3, C=4, T=6, s0=True)
    U, V, W = (getattr(p, n).astype(np.float32) for n in "UVW")
    x, y = p.x.astype(np.int32), p.y.astype(np.int32)
    out = outputs(client.post(INFER, content=request(U=U, V=V, W=W, x=x, y=y, s0=p.s0)))
    g = engine.bptt(U, V, W, x, y, s0=p.s0.astype(np.float32))
    assert g.dLdU.dtype == np.float32
    expect(out, g)
    for name in ("dLdU", "dLdV", "dLdW", "dLds0", "final_state"):
        assert out[name].dtype == np.float32, name
    f64 = engine.bptt(p.U, p.V, p.W, p.x, p.y, s0=p.s0)  # float32 is float32, not float64 rounded late
    assert not np.array_equal(out["dLdW"], f64.dLdW)
    assert_close(out["dLdW"].astype(np.float64), f64.dLdW, rtol=1e-5)


def test_v2_all_fp32_batch_answers_fp32_gradients(client, rng):
    p = make_problem(rng, H=3, C=4, T=1)
    U, V, W = (getattr(p, n).astype(np.float32) for n in "UVW")
    lengths = [3, 5]
    X, Y, xs, ys = padded_batch(rng, lengths, C=4, T=5)
    out = outputs(client.post(INFER, content=request(U=U, V=V, W=W, x=X, y=Y, lengths=np.array(lengths))))
    expect(out, engine.bptt_batch(U, V, W, xs, ys))
    assert out["final_state"].dtype == np.float32 and out["final_state"].shape == (2, 3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_v2_overflow_is_400_naming_the_weight(client, rng, dtype):
    """Logits beyond the dtype's range: 400 (not NaN in a 200), the error names the overflow and the weight."""
    p = make_problem(rng, H=3, C=4, T=3, scale=3.0)
    U, W = p.U.astype(dtype), p.W.astype(dtype)
    _, S = engine.forward(U, p.V.astype(dtype), W, p.x)  # (T, H): the states do not depend on V
    assert np.abs(S[0]).sum() > 1.2
    # Every row of V along sign(s_0), 0.9 of the largest number: the logits of step 0 are
    # 0.9 max sum_i |s_0i| > max, beyond the dtype's range.
    V = (np.tile(np.sign(S[0]), (4, 1)) * 0.9 * float(np.finfo(dtype).max)).astype(dtype)
    r = client.post(INFER, content=request(U=U, V=V, W=W, x=p.x, y=p.y))
    message = error(r, 400, "V")
    assert message.startswith(f"the computation overflowed in {np.dtype(dtype).name}")
    assert r.json()["errors"][0]["type"] == "overflow"
    assert "NaN" not in r.text and "Infinity" not in r.text


# -- final_state and chunks -------------------------------------------------------


def test_v2_final_state_is_the_tutorials_last_hidden_state(client, rng):
    p = make_problem(rng, H=5, C=7, T=11, s0=True)
    for s0 in (None, p.s0):
        extra = {} if s0 is None else {"s0": s0}
        out = outputs(client.post(INFER, content=request(U=p.U, V=p.V, W=p.W, x=p.x, y=p.y, **extra)))
        expect(out, engine.bptt(p.U, p.V, p.W, p.x, p.y, s0=s0))
        _, s = seed.forward_propagation(p.U, p.V, p.W, p.x, s0=s0)
        assert_close(out["final_state"], s[len(p.x) - 1])  # s[-1] of the loop is s0: the last state is s[T-1]


@pytest.mark.parametrize("cut", [1, 5, 11])
def test_v2_chunks_chain_through_final_state(client, rng, cut):
    """The state after chunk 1, passed as s0 of chunk 2, continues the sequence: the losses
    add up to the whole sequence's, and so do dL/dV (sum_t outer(delta_o_t, s_t), the same
    states); chunk 2's final state is the whole sequence's. (dL/dU and dL/dW do not add:
    the whole sequence's error of chunk 2 also flows back into chunk 1.)"""
    p = make_problem(rng, H=4, C=6, T=12, s0=True)
    weights = {"U": p.U, "V": p.V, "W": p.W}
    whole = outputs(client.post(INFER, content=request(**weights, x=p.x, y=p.y, s0=p.s0)))
    first = outputs(client.post(INFER, content=request(**weights, x=p.x[:cut], y=p.y[:cut], s0=p.s0)))
    second = outputs(client.post(INFER, content=request(**weights, x=p.x[cut:], y=p.y[cut:], s0=first["final_state"])))
    expect(whole, engine.bptt(p.U, p.V, p.W, p.x, p.y, s0=p.s0))
    expect(first, engine.bptt(p.U, p.V, p.W, p.x[:cut], p.y[:cut], s0=p.s0))
    expect(second, engine.bptt(p.U, p.V, p.W, p.x[cut:], p.y[cut:], s0=first["final_state"]))
    assert whole["loss"][0] == pytest.approx(first["loss"][0] + second["loss"][0], rel=1e-12)
    assert_close(whole["dLdV"], first["dLdV"] + second["dLdV"])
    assert_close(second["final_state"], whole["final_state"])
    assert first["tokens"][0] + second["tokens"][0] == 12
    # Not by accident: chunk 2 from zeros is another computation.
    fresh = engine.bptt(p.U, p.V, p.W, p.x[cut:], p.y[cut:])
    assert abs(fresh.loss - second["loss"][0]) > 1e-6
    # The whole sequence's loss per step, from the tutorial's loop, splits at the cut.
    o, _ = seed.forward_propagation(p.U, p.V, p.W, p.x, s0=p.s0)
    per_step = -np.log(o[np.arange(12), p.y])
    assert first["loss"][0] == pytest.approx(per_step[:cut].sum(), rel=1e-12)
    assert second["loss"][0] == pytest.approx(per_step[cut:].sum(), rel=1e-12)


@pytest.mark.parametrize(
    ("name", "datatype", "shape", "data", "message"),
    [
        (
            "U",
            "FP64",
            [2, 2],
            [[1.0, "a"], [0.0, 0.0]],
            'U.data must hold finite numbers (FP64), got a string "a" at U[0][1]',
        ),
        ("U", "FP64", [4], [1.0, "a", 0.0, 0.0], 'U.data must hold finite numbers (FP64), got a string "a" at U[1]'),
        ("x", "INT32", [1, 2], [[[1, True]]], "x.data must hold integers (INT32), got true at x[0][0][1]"),
        ("x", "INT64", [2], [[1, [2]]], "x.data must hold integers (INT64), got a list of 1 item(s) at x[0][1]"),
    ],
)
def test_v2_bad_entry_of_nested_data_is_named_where_it_is(client, rng, name, datatype, shape, data, message):
    """Bug caught: the error of the flat form was reported for nested data ("got a list of 2 item(s) at U[0]")."""
    p = make_problem(rng, H=2, C=2, T=2)
    inputs = [tensor(n, getattr(p, n)) for n in ("U", "V", "W", "x", "y") if n != name]
    inputs.append({"name": name, "datatype": datatype, "shape": shape, "data": data})
    r = client.post(INFER, content=orjson.dumps({"inputs": inputs}))
    assert error(r, 400, f"{name}.data") == message
