"""The gated cells on the wire: ``cell`` on /bptt, /bptt/batch, /gradient-check, /bptt/cost, and the client.

The engine itself is tested in tests/test_gated.py; here every array of every answer is
checked against PyTorch's own nn.GRU / nn.LSTM (their weights copied in, float64), the
hand-written autograd loops of tests/gated_loops.py, or the sum of single requests.
"""

from __future__ import annotations

from typing import Any

import gated_mistakes
import numpy as np
import pytest
import torch
from gated_loops import GatedProblem, make_gated_problem, torch_grads, torch_module_grads, torch_state_grads
from helpers import assert_close, make_problem

from service import gated
from service.client import Client

torch.set_num_threads(1)  # tiny graphs; the machine is shared

TORCH_RTOL = 1e-10  # the bound: max|a - b| <= 1e-10 max|b|, float64
ANSWER_ARRAYS = ("dLdU", "dLdV", "dLdW", "dLdb", "dLdb_hh", "dLdc", "dLds0", "final_state", "dLdc0", "final_cell")


def body(p: GatedProblem, **extra: Any) -> dict[str, Any]:
    """A JSON body of nested lists for ``p`` (optional arrays only when set)."""
    out: dict[str, Any] = {"cell": p.cell, "U": p.U.tolist(), "V": p.V.tolist(), "W": p.W.tolist()}
    out |= {"x": p.x.tolist(), "y": p.y.tolist()}
    for name in ("b", "b_hh", "c", "s0", "c0"):
        if getattr(p, name) is not None:
            out[name] = getattr(p, name).tolist()
    if p.reset_after:
        out["reset_after"] = True
    return out | extra


def arrays(answer: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.array(answer[k]) for k in ANSWER_ARRAYS if answer.get(k) is not None}


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_bptt_route_equals_torch_nn_cell_in_every_array(client, cell):
    """POST /bptt with an nn.GRU's (reset_after) or nn.LSTM's weights: every array of the answer."""
    rng = np.random.default_rng(13)
    p = make_gated_problem(rng, cell, 6, 9, 12, scale=2.0, biases=True, states=True, reset_after=cell == "gru")
    ref = torch_module_grads(p, batch_first=False)
    r = client.post("/bptt", json=body(p))
    assert r.status_code == 200, r.text
    got = arrays(r.json())
    assert set(got) == set(ref) - {"loss"}
    for name, want in ref.items():
        if name == "loss":
            assert r.json()["loss"] == pytest.approx(want, rel=1e-12)
        else:
            assert_close(got[name], want, TORCH_RTOL)
    assert r.json()["tokens"] == 12
    assert r.json()["mean_loss"] == pytest.approx(ref["loss"] / 12, rel=1e-12)


def test_tutorial_gru_and_truncation_equal_the_autograd_loops(client):
    """The tutorial's GRU (reset before the product) and truncated K, against tests/gated_loops.py."""
    rng = np.random.default_rng(14)
    for cell, reset_after in (("gru", False), ("gru", True), ("lstm", False)):
        p = make_gated_problem(rng, cell, 4, 6, 9, scale=2.0, biases=True, states=True, reset_after=reset_after)
        for K in (None, 0, 2, 8):
            ref = torch_grads(p, K)
            r = client.post("/bptt", json=body(p, bptt_truncate=K))
            assert r.status_code == 200, r.text
            got = arrays(r.json())
            for name in ("dLdU", "dLdV", "dLdW", "dLdb", "dLdb_hh", "dLdc", "dLds0"):
                assert_close(got[name], ref[name], TORCH_RTOL)
            if cell == "lstm":
                assert_close(got["dLdc0"], ref["dLdc0"], TORCH_RTOL)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_batch_is_the_sum_of_single_requests_with_every_state(client, cell):
    """/bptt/batch of sequences of different lengths, each with its own s0 (and c0): the sums and the rows."""
    rng = np.random.default_rng(15)
    H, C = 5, 8
    base = make_gated_problem(rng, cell, H, C, 1, biases=True)
    lengths = [7, 1, 4]
    seqs, singles = [], []
    for T in lengths:
        p = make_gated_problem(rng, cell, H, C, T, states=True)
        p.U, p.V, p.W, p.b, p.b_hh, p.c = base.U, base.V, base.W, base.b, base.b_hh, base.c
        seqs.append({k: v for k, v in body(p).items() if k in ("x", "y", "s0", "c0")})
        singles.append(client.post("/bptt", json=body(p, bptt_truncate=2)).json())
    weights = {k: v for k, v in body(base).items() if k not in ("x", "y")}
    r = client.post("/bptt/batch", json=weights | {"sequences": seqs, "bptt_truncate": 2})
    assert r.status_code == 200, r.text
    batch = r.json()
    assert batch["tokens"] == sum(lengths)
    assert batch["losses"] == pytest.approx([s["loss"] for s in singles], rel=1e-12)
    assert batch["mean_loss"] == pytest.approx(sum(s["loss"] for s in singles) / sum(lengths), rel=1e-12)
    for name in ("dLdU", "dLdV", "dLdW", "dLdb", "dLdb_hh", "dLdc"):
        assert_close(np.array(batch[name]), sum(np.array(s[name]) for s in singles), 1e-12)
    per_sequence = ["dLds0", "final_state"] + (["dLdc0", "final_cell"] if cell == "lstm" else [])
    for name in per_sequence:
        assert_close(np.array(batch[name]), np.array([s[name] for s in singles]), 1e-12)
    if cell == "gru":
        assert "dLdc0" in batch and batch["dLdc0"] is None and batch["final_cell"] is None


def test_float32_and_base64_tensors(client):
    """Tensor objects in, base64 out, float32: close to float64 at float32's precision."""
    rng = np.random.default_rng(16)
    p = make_gated_problem(rng, "lstm", 6, 10, 15, biases=True, states=True)
    want = gated.bptt("lstm", p.U, p.V, p.W, p.x, p.y, **p.kwargs())
    with Client(str(client.base_url), dtype="float32", transport=client._transport) as c:
        got = c.bptt(p.U, p.V, p.W, p.x, p.y, cell="lstm", **{k: getattr(p, k) for k in ("s0", "c0", "b", "b_hh", "c")})
    assert got.dLdU.dtype == np.float32 and got.dLdU.shape == (4, 6, 10)
    for name in ("dLdU", "dLdV", "dLdW", "dLdb", "dLdb_hh", "dLdc", "dLds0", "dLdc0", "final_state", "final_cell"):
        assert_close(getattr(got, name).astype(np.float64), getattr(want, name), 1e-4)


def test_client_cell_options_reach_the_engine(client):
    """Client.bptt and bptt_batch with cell=, b_hh=, c0=, reset_after=: equal to the engine's own answer."""
    rng = np.random.default_rng(17)
    p = make_gated_problem(rng, "gru", 4, 6, 8, biases=True, states=True, reset_after=True)
    with Client(str(client.base_url), transport=client._transport) as c:
        one = c.bptt(p.U, p.V, p.W, p.x, p.y, cell="gru", reset_after=True, s0=p.s0, b=p.b, b_hh=p.b_hh, c=p.c)
        many = c.bptt_batch(p.U, p.V, p.W, [p.x, p.x[:3]], [p.y, p.y[:3]], cell="gru", reset_after=True,
                            s0=[p.s0, None], b=p.b, b_hh=p.b_hh, c=p.c)  # fmt: skip
    want = gated.bptt("gru", p.U, p.V, p.W, p.x, p.y, **p.kwargs())
    for name in ("dLdU", "dLdV", "dLdW", "dLdb", "dLdb_hh", "dLdc", "dLds0", "final_state"):
        assert_close(getattr(one, name), getattr(want, name), 1e-12)
    assert one.dLdc0 is None and one.final_cell is None
    short = gated.bptt("gru", p.U, p.V, p.W, p.x[:3], p.y[:3], b=p.b, b_hh=p.b_hh, c=p.c, reset_after=True)
    assert_close(many.dLdW, want.dLdW + short.dLdW, 1e-12)
    assert many.losses == pytest.approx([want.loss, short.loss], rel=1e-12)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_trace_gives_the_state_gradients_of_autograd(client, cell):
    """ "trace": dL/ds_k (and dL/dc_k) at every step and ||dE_t/ds_{t-j}||, as autograd gives them."""
    rng = np.random.default_rng(18)
    p = make_gated_problem(rng, cell, 4, 5, 7, scale=2.0, biases=True, states=True)
    dLds, dLdc, norms = torch_state_grads(p)
    r = client.post("/bptt", json=body(p, trace=True))
    assert r.status_code == 200, r.text
    trace = r.json()["trace"]
    assert_close(np.array(trace["dLds"]), dLds, TORCH_RTOL)
    if cell == "lstm":
        assert_close(np.array(trace["dLdc"]), dLdc, TORCH_RTOL)
    else:
        assert trace["dLdc"] is None
    for t, row in enumerate(trace["state_norms"]):
        assert len(row) == t + 1
        assert_close(np.array(row), norms[t, : t + 1], 1e-9)
    assert [s["lag"] for s in trace["state_lag_summary"]] == list(range(7))
    assert trace["state_lag_summary"][6]["outputs"] == 1


def test_vanilla_trace_gives_the_same_state_quantities(client, rng):
    """The vanilla cell's trace has dL/ds_k and ||dE_t/ds_{t-j}|| too (beside the seed's deltas), from autograd."""
    problem = make_problem(rng, 5, 7, 9, scale=2.0)
    U, V, W = (torch.tensor(a, requires_grad=True) for a in (problem.U, problem.V, problem.W))
    T = len(problem.x)
    s = torch.zeros(U.shape[0], dtype=torch.float64)
    states, losses = [], []
    for t in range(T):
        s = torch.tanh(U[:, int(problem.x[t])] + W @ s)
        s.retain_grad()
        states.append(s)
        losses.append(-torch.log_softmax(V @ s, 0)[int(problem.y[t])])
    torch.stack(losses).sum().backward(retain_graph=True)
    r = client.post("/bptt", json=problem.body(trace=True))
    assert r.status_code == 200, r.text
    trace = r.json()["trace"]
    assert_close(np.array(trace["dLds"]), np.stack([a.grad.numpy() for a in states]), 1e-12)
    for t in range(T):
        grads = torch.autograd.grad(losses[t], states[: t + 1], retain_graph=True)
        want = [float(torch.linalg.vector_norm(g)) for g in reversed(grads)]  # lag j = t - k
        assert_close(np.array(trace["state_norms"][t]), np.array(want), 1e-12)


def test_gradient_check_of_a_gated_cell_checks_every_parameter(client):
    """/gradient-check with cell: U, V, W, b, b_hh, c, s0, c0 all checked and passed (the engine is exact)."""
    rng = np.random.default_rng(19)
    p = make_gated_problem(rng, "lstm", 3, 4, 5, biases=True, states=True)
    r = client.post("/gradient-check", json=body(p, samples=6))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["passed"] is True
    assert set(answer["parameters"]) == {"U", "V", "W", "b", "b_hh", "c", "s0", "c0"}
    assert answer["parameters"]["U"]["entries"] == 4 * 3 * 4
    assert all(check["max_relative_error"] < 1e-6 for check in answer["parameters"].values())


def test_cost_of_a_gated_cell_is_more_than_the_vanilla_one(client):
    """The cost model prices the gates: an LSTM costs more than a GRU, which costs more than the vanilla cell."""
    rng = np.random.default_rng(20)
    seconds = {}
    for cell, G in (("rnn", 1), ("gru", 3), ("lstm", 4)):
        H, C, T = 50, 400, 60
        shape = (G, H, C) if G > 1 else (H, C)
        weights = {"U": np.zeros(shape).tolist(), "V": np.zeros((C, H)).tolist()}
        weights["W"] = np.zeros((G, H, H) if G > 1 else (H, H)).tolist()
        extra = {} if cell == "rnn" else {"cell": cell}
        x = rng.integers(0, C, T).tolist()
        r = client.post("/bptt/cost", json=weights | extra | {"x": x, "y": x})
        assert r.status_code == 200, r.text
        assert r.json()["admitted"] is True
        seconds[cell] = r.json()["estimate"]["seconds"]
    assert seconds["rnn"] < seconds["gru"] < seconds["lstm"]


# Wrong ranks and options of the wrong cell: 422, the field named, what was expected and what arrived.
H, C = 2, 3
GRU = {
    "cell": "gru",
    "U": np.zeros((3, H, C)).tolist(),
    "V": np.zeros((C, H)).tolist(),
    "W": np.zeros((3, H, H)).tolist(),
}
RNN = {"U": np.zeros((H, C)).tolist(), "V": np.zeros((C, H)).tolist(), "W": np.zeros((H, H)).tolist()}
SEQ = {"x": [0, 1], "y": [1, 2]}
BAD = {
    "H x C U for a gated cell": (
        GRU | {"U": RNN["U"]},
        "U",
        "U must be G x H x C for cell 'gru' (3 dimensions), got shape [2, 3]",
    ),
    "gated U for the vanilla cell": (
        RNN | {"U": GRU["U"]},
        "U",
        "U must be H x C for cell 'rnn' (2 dimensions), got shape [3, 2, 3]",
    ),
    "H x H W for a gated cell": (
        GRU | {"W": RNN["W"]},
        "W",
        "W must be G x H x H for cell 'gru' (3 dimensions), got shape [2, 2]",
    ),
    "LSTM's G with GRU weights": (
        GRU | {"cell": "lstm"},
        "U",
        "U must be G x H x C with G = 4 gates (i, f, g, o) for cell 'lstm', got 3 x 2 x 3",
    ),
    "vector b for a gated cell": (
        GRU | {"b": [0.0, 0.0]},
        "b",
        "b must be G x H for cell 'gru' (2 dimensions), got shape [2]",
    ),
    "b of the wrong G": (
        GRU | {"b": np.zeros((4, H)).tolist()},
        "b",
        "b must be G x H = 3 x 2 for cell 'gru', got 4 x 2",
    ),
    "b_hh for the vanilla cell": (
        RNN | {"b_hh": [0.0, 0.0]},
        "b_hh",
        "b_hh is an option of the gated cells ('gru', 'lstm'); cell is 'rnn'",
    ),
    "reset_after for the vanilla cell": (
        RNN | {"reset_after": True},
        "reset_after",
        "reset_after is an option of the gated cells ('gru', 'lstm'); cell is 'rnn'",
    ),
    "reset_after for the LSTM": (
        GRU
        | {"cell": "lstm", "U": np.zeros((4, H, C)).tolist(), "W": np.zeros((4, H, H)).tolist(), "reset_after": True},
        "reset_after",
        "reset_after is an option of cell 'gru' only, got reset_after=True for cell 'lstm'",
    ),
    "c0 for the GRU": (
        GRU | {"c0": [0.0, 0.0]},
        "c0",
        "c0 is the LSTM's initial cell state: cell 'gru' has none, got one",
    ),
    "c0 for the vanilla cell": (
        RNN | {"c0": [0.0, 0.0]},
        "c0",
        "c0 is the LSTM's initial cell state: cell 'rnn' has none, got one",
    ),
    "an unknown cell": (
        GRU | {"cell": "elman"},
        "cell",
        "cell: Input should be 'rnn', 'gru' or 'lstm', got a string \"elman\"",
    ),
    "a ragged stack": (
        GRU | {"U": [[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0]], [[0.0] * 3] * 2]},
        "U[1][1]",
        "U must be rectangular: row U[1][0] has 3 numbers, but U[1][1] has 2",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_wrong_shapes_and_options_name_the_cell_and_the_field(client, case):
    request, field, words = BAD[case]
    r = client.post("/bptt", json=request | SEQ)
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"]
    assert r.json()["errors"][0]["field"] == field


def test_batch_c0_for_the_gru_is_named_per_sequence(client):
    seqs = [SEQ, SEQ | {"c0": [0.0, 0.0]}]
    r = client.post("/bptt/batch", json=GRU | {"sequences": seqs})
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == "c0 is the LSTM's initial cell state: cell 'gru' has none, got one"


@pytest.mark.parametrize(
    ("cell", "reset_after", "mistake"),
    [
        ("gru", False, "reset_gate_factor_dropped"),
        ("gru", True, "sigmoid_derivative_of_preactivation"),
        ("gru", False, "update_gate_swapped"),
        ("lstm", False, "forget_gate_on_current_cell"),
        ("lstm", False, "cell_tanh_derivative_dropped"),
    ],
)
def test_compare_names_a_gated_mistake_made_by_the_oracle(client, cell, reset_after, mistake):
    """POST /bptt/compare with cell: the wrong gradients of tests/gated_mistakes.py's loop are named."""
    rng = np.random.default_rng(22)
    p = make_gated_problem(rng, cell, 3, 5, 6, scale=2.0, biases=True, states=True, reset_after=reset_after)
    wrong = gated_mistakes.bptt(cell, p.U, p.V, p.W, p.x, p.y, None, mistake=mistake, **p.kwargs())
    submitted = {name: np.asarray(a).tolist() for name, a in zip(("dLdU", "dLdV", "dLdW"), wrong, strict=True)}
    r = client.post("/bptt/compare", json=body(p) | submitted)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["passed"] is False
    assert [d["mistake"] for d in answer["diagnosis"]] == [mistake]
    right = client.post("/bptt", json=body(p)).json()
    ok = client.post("/bptt/compare", json=body(p) | {n: right[n] for n in ("dLdU", "dLdV", "dLdW")}).json()
    assert ok["passed"] is True and ok["diagnosis"] == []


def test_compare_of_a_gated_cell_refuses_a_gradient_of_the_vanilla_shape(client):
    submitted = {"dLdU": GRU["U"], "dLdV": GRU["V"], "dLdW": RNN["W"]}
    r = client.post("/bptt/compare", json=GRU | SEQ | submitted)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "dLdW"


def test_compare_of_the_vanilla_cell_takes_no_biases(client):
    submitted = {"dLdU": RNN["U"], "dLdV": RNN["V"], "dLdW": RNN["W"]}
    r = client.post("/bptt/compare", json=RNN | SEQ | submitted | {"b": [0.0, 0.0]})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "b"


def test_the_cost_model_counts_the_passes_of_the_gated_compare():
    """costs prices gated_checks.compare by its forward and backward passes: the two must agree."""
    from service import costs, gated_checks

    for cell, modes in gated_checks.SWEEPS.items():
        for mode, n in modes.items():
            assert costs.GATED_COMPARE_PASSES[cell][mode] == n["forward"] + n["backward"]
    assert len(gated_checks.GatedMistakeName) == costs.GATED_MISTAKES  # candidates held at once, at most
    one = costs.bptt(lengths=[100], H=32, C=50, K=None, cell="lstm").seconds
    assert costs.compare(T=100, H=32, C=50, K=None, cell="lstm").seconds == pytest.approx(one * (1 + 7 / 2))
