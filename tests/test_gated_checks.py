"""gated_checks.compare against an independent oracle: the per-output GRU/LSTM loop with each mistake made
(tests/gated_mistakes.py).

The wrong gradients come from tests/gated_mistakes.py, never from service.gated_checks, so a
recomputation that drifts from the mistake it names fails here. The oracle's right gradients are
checked first, against the engine and against torch.nn.GRU / nn.LSTM. Tolerances: compare's
default, 1e-6 relative to the largest entry; the oracle and the recomputations agree to about 1e-15.
"""

from __future__ import annotations

import re
from typing import Any

import gated_mistakes
import numpy as np
import pytest
import torch
from gated_loops import GatedProblem, make_gated_problem
from hypothesis import given, settings
from hypothesis import strategies as st

from service import gated
from service.checks import MistakeName
from service.errors import InputError
from service.gated_checks import CONVENTIONS, SWEEPS, GatedMistakeName, compare

torch.set_num_threads(1)  # the machine is shared; these graphs are tiny

NAMES = ("dLdU", "dLdV", "dLdW")
CELLS = [("gru", False), ("gru", True), ("lstm", False)]  # (cell, reset_after)
CELL_IDS = ["gru", "gru-reset-after", "lstm"]
GATES = ("gru", "lstm")


def problem(seed: int, cell: str, reset_after: bool, T: int = 7, *, extras: bool = False, H: int = 4) -> GatedProblem:
    rng = np.random.default_rng(seed)
    return make_gated_problem(rng, cell, H, 5, T, scale=2.0, biases=extras, states=extras, reset_after=reset_after)


def arrays_of(p: GatedProblem, K: int | None) -> dict[str, Any]:
    """compare's ``arrays``: gated.bptt's keyword arguments, the omitted ones left out."""
    given_ = {k: v for k, v in p.kwargs().items() if v is not None}
    if p.cell == "lstm":
        del given_["reset_after"]
    return dict(U=p.U, V=p.V, W=p.W, x=p.x, y=p.y, bptt_truncate=K, **given_)


def oracle(p: GatedProblem, K: int | None, mistake: str = "") -> dict[str, np.ndarray]:
    grads = gated_mistakes.bptt(p.cell, p.U, p.V, p.W, p.x, p.y, K, **p.kwargs(), mistake=mistake)
    return dict(zip(NAMES, grads, strict=True))


def diagnosed(report: dict[str, Any]) -> list[str]:
    return [d["mistake"] for d in report["diagnosis"]]


def fits(sub: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> bool:
    return all(np.abs(other[k] - sub[k]).max() <= 1e-6 * max(np.abs(other[k]).max(), 1e-8) for k in NAMES)


# --- the oracle's right gradients ---


@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("extras", [False, True], ids=["bare", "biases-and-states"])
@pytest.mark.parametrize("K", [None, 0, 1, 3, 8])
def test_oracle_equals_gated_bptt(cell, reset_after, extras, K):
    """No mistake made: the per-output loop is gated.bptt, full and truncated (K = 8 >= T - 1 is full)."""
    p = problem(3, cell, reset_after, T=9, extras=extras)
    g = gated.bptt(cell, p.U, p.V, p.W, p.x, p.y, bptt_truncate=K, **p.kwargs())
    for name, got in oracle(p, K).items():
        want = getattr(g, name)
        assert np.abs(got - want).max() <= 1e-10 * np.abs(want).max(), name


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_oracle_equals_torch_nn_cells(cell):
    """The oracle's GRU (reset after, torch's form) and LSTM against nn.GRU / nn.LSTM, weights copied in, float64."""
    p = problem(5, cell, cell == "gru", T=8, extras=True)
    G, H, C = p.U.shape
    module = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](C, H, dtype=torch.float64)
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.from_numpy(p.U.reshape(G * H, C)))
        module.weight_hh_l0.copy_(torch.from_numpy(p.W.reshape(G * H, H)))
        module.bias_ih_l0.copy_(torch.from_numpy(p.b.reshape(G * H)))
        module.bias_hh_l0.copy_(torch.from_numpy(p.b_hh.reshape(G * H)))
    onehot = torch.nn.functional.one_hot(torch.from_numpy(p.x), C).to(torch.float64)[:, None]  # (T, 1, C)
    h0 = torch.from_numpy(p.s0.reshape(1, 1, H))
    state = h0 if cell == "gru" else (h0, torch.from_numpy(p.c0.reshape(1, 1, H)))
    out, _ = module(onehot, state)
    V = torch.tensor(p.V, requires_grad=True)
    logits = out[:, 0] @ V.T + torch.from_numpy(p.c)
    torch.nn.functional.cross_entropy(logits, torch.from_numpy(p.y), reduction="sum").backward()
    want = {
        "dLdU": module.weight_ih_l0.grad.numpy().reshape(G, H, C),
        "dLdV": V.grad.numpy(),
        "dLdW": module.weight_hh_l0.grad.numpy().reshape(G, H, H),
    }
    for name, got in oracle(p, None).items():
        assert np.abs(got - want[name]).max() <= 1e-10 * np.abs(want[name]).max(), name


def test_oracle_update_gate_swapped_is_the_gru_with_z_negated():
    """Chung et al.'s GRU, written out in the oracle, is the engine's with U_z, W_z, b_z, bhh_z negated
    (sigma(-a) = 1 - sigma(a)), and its z gradients negated: the identity the recomputation uses."""
    p = problem(6, "gru", False, T=6, extras=True)
    q = GatedProblem(**{**p.__dict__})
    for name in ("U", "W", "b", "b_hh"):
        a = getattr(p, name).copy()
        a[1] = -a[1]
        setattr(q, name, a)
    swapped = oracle(p, None, "update_gate_swapped")
    g = gated.bptt("gru", q.U, q.V, q.W, q.x, q.y, **q.kwargs())
    for name in ("dLdU", "dLdW"):
        want = getattr(g, name).copy()
        want[1] = -want[1]
        np.testing.assert_allclose(swapped[name], want, rtol=0, atol=1e-12 * np.abs(want).max())
    np.testing.assert_allclose(swapped["dLdV"], g.dLdV, rtol=0, atol=1e-12 * np.abs(g.dLdV).max())


# --- the names ---


def test_mistake_names_are_the_oracles_and_share_the_vanilla_spelling():
    cells = {
        cell: set(gated_mistakes.applicable(cell, None)) | set(gated_mistakes.applicable(cell, 3)) for cell in GATES
    }
    assert {str(m) for m in GatedMistakeName} == cells["gru"] | cells["lstm"]
    shared = {str(m) for m in GatedMistakeName} & {str(m) for m in MistakeName}
    assert shared == set(gated_mistakes.GENERIC)  # the vanilla mistakes that still make sense, spelled the same
    assert {"reset_after_convention", "update_gate_swapped"} == CONVENTIONS
    assert GatedMistakeName.UPDATE_GATE_SWAPPED == "update_gate_swapped"  # a str: it goes into JSON as is


# --- each mistake named ---


@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("extras", [False, True], ids=["bare", "biases-and-states"])
@pytest.mark.parametrize("K", [None, 3])
def test_compare_names_each_mistake_made_in_the_loop(cell, reset_after, extras, K):
    """T = 7, K = 3 or full: every mistake changes the gradients and is the only one that fits."""
    p = problem(11, cell, reset_after, extras=extras)
    arrays = arrays_of(p, K)
    names = gated_mistakes.applicable(cell, K)
    assert len(names) == (9 if K is None else 10)
    for name in names:
        report = compare(cell, arrays, oracle(p, K, name))
        assert not report["passed"], name
        assert diagnosed(report) == [name]
        assert report["disagreement"] is None
        assert report["diagnosis"][0]["explanation"].startswith("Not a mistake:") == (name in CONVENTIONS)


@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("K", [None, 0, 2, 20])
def test_compare_correct_submission_passes_without_diagnosis(cell, reset_after, K):
    p = problem(12, cell, reset_after, extras=True)
    report = compare(cell, arrays_of(p, K), oracle(p, K))
    assert report["passed"] and report["diagnosis"] == [] and report["disagreement"] is None
    assert all(r["passed"] and r["max_relative_error"] < 1e-12 for r in report["parameters"].values())


@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("T", [1, 2, 3, 4])
@pytest.mark.parametrize("K", [None, 0, 1])
@pytest.mark.parametrize("extras", [False, True], ids=["bare", "biases-and-states"])
def test_compare_short_sequences_every_mistake(cell, reset_after, T, K, extras):
    """T = 1..4, where mistakes coincide with each other or with the right answer: each is named whenever it
    changes the gradients, and every name given fits (checked with the oracle)."""
    p = problem(T, cell, reset_after, T=T, extras=extras, H=3)
    for made in gated_mistakes.applicable(cell, K):
        sub = oracle(p, K, made)
        report = compare(cell, arrays_of(p, K), sub)
        if report["passed"]:
            assert report["diagnosis"] == [] and fits(sub, oracle(p, K))
            continue
        names = diagnosed(report)
        assert made in names, (T, K, made, names)
        for name in names:
            assert fits(sub, oracle(p, K, name)), (made, name)


# --- coincidences: every explanation that fits ---


@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
def test_compare_reports_every_mistake_that_fits_K_1(cell, reset_after):
    """K = 1: going back one step less (K = 0) is the same as never going back."""
    p = problem(13, cell, reset_after)
    for made in ("no_recurrence", "truncation_off_by_one_short"):
        report = compare(cell, arrays_of(p, 1), oracle(p, 1, made))
        assert diagnosed(report) == ["truncation_off_by_one_short", "no_recurrence"]


def test_compare_lstm_without_W_cannot_tell_cell_path_from_no_recurrence():
    """W = 0: the LSTM's only path back in time is the cell state, so dropping it is dropping the recurrence."""
    p = problem(14, "lstm", False)
    p.W[:] = 0
    for made in ("cell_gradient_not_carried", "no_recurrence"):
        report = compare("lstm", arrays_of(p, None), oracle(p, None, made))
        assert diagnosed(report) == ["cell_gradient_not_carried", "no_recurrence"]


@pytest.mark.parametrize(("cell", "reset_after"), CELLS, ids=CELL_IDS)
def test_compare_T_1_mistakes_in_the_recursion_pass(cell, reset_after):
    """T = 1, s0 = c0 = 0: nothing goes back in time, and dLdW = sum outer(da, s_{t-1}) = 0, so the mistakes
    in the recursion, the truncations and dLdW transposed change nothing: they pass, with no diagnosis. The
    reset forms differ only through b_hh_n and s0: without them they are the same GRU."""
    p = problem(15, cell, reset_after, T=1)
    same = ["mean_instead_of_sum", "truncated_instead_of_full", "no_recurrence", "dLdW_transposed"]
    same += ["reset_gate_factor_dropped", "reset_after_convention"] if cell == "gru" else ["cell_gradient_not_carried"]
    for made in same:
        report = compare(cell, arrays_of(p, None), oracle(p, None, made))
        assert report["passed"] and report["diagnosis"] == [], made


# --- the words a learner reads ---

GRU_RESET_DROPPED = (
    "The candidate n_t = tanh(U_n x_t + W_n (r_t * s_{t-1}) + b_n) reads s_{t-1} through the reset gate, so the "
    "error that reaches s_{t-1} through it is (W_n^T da_n) * r_t; yours leaves out the factor r_t."
)
GRU_RESET_AFTER_DROPPED = (
    "The candidate n_t = tanh(U_n x_t + b_n + r_t * (W_n s_{t-1} + bhh_n)) reads s_{t-1} through the reset gate, "
    "so the error that reaches s_{t-1} through it is W_n^T (r_t * da_n); yours leaves out the factor r_t."
)
GRU_RESET_CONVENTION = (
    "Not a mistake: your gradients are those of the GRU with the reset applied after the product, "
    "n_t = tanh(U_n x_t + b_n + r_t * (W_n s_{t-1} + bhh_n)) (reset_after = true); this request asked for the "
    "reset before it, n_t = tanh(U_n x_t + W_n (r_t * s_{t-1}) + b_n) (reset_after = false). Both forms are GRUs "
    "(the tutorial's applies it before, cuDNN's and torch.nn.GRU's after): ask for the form you computed."
)
GRU_UPDATE_SWAPPED = (
    "Not a mistake: your gradients are those of the GRU written s_t = z_t * n_t + (1 - z_t) * s_{t-1} (the "
    "convention of Chung et al., 2014); this service writes s_t = (1 - z_t) * n_t + z_t * s_{t-1} (Cho et al., "
    "2014, and torch.nn.GRU). They are the same model with the update gate's sign flipped (U_z, W_z and its "
    "biases negated give 1 - z_t); to compare, use this service's form."
)
LSTM_EXPLANATIONS = {
    "cell_gradient_not_carried": "The cell state carries error back in time: c_t = f_t * c_{t-1} + i_t * g_t, so "
    "dL/dc_{t-1} = dL/dc_t * f_t, added to what c_{t-1} gets from s_{t-1}. Yours passes back only dL/ds_{t-1}: "
    "the path through the cell state is missing.",
    "forget_gate_on_current_cell": "The forget gate multiplies the previous cell state, c_t = f_t * c_{t-1} + "
    "i_t * g_t, so dL/df_t = dL/dc_t * c_{t-1}; yours uses c_t.",
    "cell_tanh_derivative_dropped": "s_t = o_t * tanh(c_t), so the error reaching c_t from s_t is dL/ds_t * o_t * "
    "(1 - tanh^2(c_t)), added to dL/dc_{t+1} * f_{t+1}; yours leaves out the factor 1 - tanh^2(c_t).",
    "sigmoid_derivative_of_preactivation": "The derivative of a sigmoid gate is sigma'(a) = sigma(a) (1 - sigma(a)), "
    "written with the gate's value: i_t (1 - i_t), f_t (1 - f_t) and o_t (1 - o_t). Yours applies s (1 - s) to "
    "the pre-activation instead (a_i (1 - a_i) with a_i = U_i x_t + W_i s_{t-1} + b_i).",
    "truncation_off_by_one_long": "Your gradients are those of bptt_truncate = 3: your loop goes back one step more "
    "than asked (K = 2). The error of output t goes back through steps t, t-1, ..., max(0, t - K) inclusive, "
    "K + 1 steps, through s and c alike.",
}


def explanation(cell: str, reset_after: bool, K: int | None, made: str) -> str:
    p = problem(16, cell, reset_after)
    (d,) = compare(cell, arrays_of(p, K), oracle(p, K, made))["diagnosis"]
    assert d["mistake"] == made
    return str(d["explanation"])


def test_compare_explanations_word_for_word():
    assert explanation("gru", False, None, "reset_gate_factor_dropped") == GRU_RESET_DROPPED
    assert explanation("gru", True, None, "reset_gate_factor_dropped") == GRU_RESET_AFTER_DROPPED
    assert explanation("gru", False, None, "reset_after_convention") == GRU_RESET_CONVENTION
    assert explanation("gru", True, 2, "update_gate_swapped") == GRU_UPDATE_SWAPPED
    for made, words in LSTM_EXPLANATIONS.items():
        assert explanation("lstm", False, 2, made) == words
    flipped = explanation("gru", True, None, "reset_after_convention")
    assert "reset applied before the product" in flipped and "(reset_after = true). Both" in flipped
    assert "divided by T = 7" in explanation("gru", False, None, "mean_instead_of_sum")
    assert "through s alike" in explanation("gru", False, 2, "truncation_off_by_one_short")


def test_compare_already_clipped_names_the_value():
    p = problem(17, "lstm", False, extras=True)
    right = oracle(p, None)
    c = 0.5 * max(np.abs(g).max() for g in right.values())
    (d,) = compare("lstm", arrays_of(p, None), oracle(p, None, "already_clipped"))["diagnosis"]
    assert d["mistake"] == "already_clipped"
    assert d["explanation"].startswith(f"Your gradients are the expected ones clipped to [-{c:.6g}, {c:.6g}]: check")


# --- what else the answer holds ---


def test_compare_nothing_fits_points_at_the_token_columns():
    """A submission off in one entry of dLdU (gate z, unit 1, token 3): no diagnosis, and the disagreement names
    dLdU first and token 3's column."""
    p = problem(18, "gru", False)
    wrong = oracle(p, None)
    wrong["dLdU"][1, 1, 3] += 0.5
    report = compare("gru", arrays_of(p, None), wrong, worst=2)
    assert not report["passed"] and report["diagnosis"] == []
    assert report["disagreement"]["parameters"][0] == "dLdU"
    columns = report["disagreement"]["dLdU_columns"]  # the others off by round-off only (oracle and engine)
    assert columns[0] == {"token": 3, "max_absolute_error": pytest.approx(0.5)}
    assert all(c["max_absolute_error"] < 1e-12 for c in columns[1:])
    u = report["parameters"]["dLdU"]
    assert u["worst"][0]["index"] == [1, 1, 3] and len(u["worst"]) == 2
    assert u["max_absolute_error"] == pytest.approx(0.5)
    assert report["parameters"]["dLdV"]["passed"] and report["parameters"]["dLdW"]["passed"]


def test_compare_float32_weights_recomputes_in_float64():
    """float32 weights are taken as the float64 numbers they are: the oracle's float64 gradients at those
    numbers pass at 1e-12, and a mistake is named from them."""
    p = problem(19, "lstm", False, extras=True)
    for name in ("U", "V", "W"):
        setattr(p, name, getattr(p, name).astype(np.float32).astype(np.float64))
    arrays = {**arrays_of(p, None), **{k: getattr(p, k).astype(np.float32) for k in "UVW"}}
    assert compare("lstm", arrays, oracle(p, None), tolerance=1e-12)["passed"]
    made = "forget_gate_on_current_cell"
    assert diagnosed(compare("lstm", arrays, oracle(p, None, made), tolerance=1e-12)) == [made]


def test_compare_bad_input_raises_as_bptt():
    p = problem(20, "gru", False)
    with pytest.raises(InputError, match="cell must be 'gru' or 'lstm'"):
        compare("rnn", arrays_of(p, None), oracle(p, None))  # type: ignore[arg-type]


# --- random problems ---

problems = st.builds(
    lambda seed_, cell, H, C, T, extras: make_gated_problem(
        np.random.default_rng(seed_), cell[0], H, C, T, scale=2.0, biases=extras, states=extras, reset_after=cell[1]
    ),
    seed_=st.integers(0, 2**32 - 1),
    cell=st.sampled_from(CELLS),
    H=st.integers(1, 4),
    C=st.integers(2, 5),
    T=st.integers(1, 6),
    extras=st.booleans(),
)


@settings(deadline=None, derandomize=True, max_examples=60)
@given(p=problems, K=st.one_of(st.none(), st.integers(0, 6)), data=st.data())
def test_compare_finds_the_mistake_and_only_mistakes_that_fit(p, K, data):
    """Any problem, any mistake: named whenever it changes the gradients, and every name given fits."""
    made = data.draw(st.sampled_from(gated_mistakes.applicable(p.cell, K)))
    sub = oracle(p, K, made)
    report = compare(p.cell, arrays_of(p, K), sub)
    if report["passed"]:
        assert report["diagnosis"] == []
        return
    names = diagnosed(report)
    assert made in names
    for name in names:
        assert fits(sub, oracle(p, K, name)), (made, name)


# --- the cost ---


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("K", [None, 3, 20])
def test_compare_cost_is_the_documented_sweeps(monkeypatch, cell, K):
    """The diagnosis's work, counted: forward passes, backward passes in the mode asked, and the lags of the
    short loops (truncated_instead_of_full, no_recurrence), against SWEEPS: equal for full and K = 3 (T = 12),
    below for K = 20 >= T - 1, where K, K - 1 and K + 1 are all full BPTT, computed once."""
    p = problem(21, cell, cell == "gru", T=12)
    counted = {"forward": 0, "backward": 0, "lags": 0}
    real_forward, real_full, real_lags = gated._forward, gated._backward_full, gated._backward_lags

    def forward(inputs):
        counted["forward"] += 1
        return real_forward(inputs)

    def full(fwd, dLds, **kw):
        counted["backward"] += 1
        return real_full(fwd, dLds, **kw)

    def lags(fwd, dLds, k, **kw):
        if k in (K, None if K is None else K - 1, None if K is None else K + 1):
            counted["backward"] += 1
        else:
            counted["lags"] += k + 1
        return real_lags(fwd, dLds, k, **kw)

    monkeypatch.setattr(gated, "_forward", forward)
    monkeypatch.setattr(gated, "_backward_full", full)
    monkeypatch.setattr(gated, "_backward_lags", lags)
    right = oracle(p, K)
    assert compare(cell, arrays_of(p, K), right)["passed"]
    assert counted == {"forward": 1, "backward": 1, "lags": 0}  # a submission that passes: gated.bptt only
    counted.update(forward=0, backward=0, lags=0)
    report = compare(cell, arrays_of(p, K), oracle(p, K, "dLdW_transposed"))
    assert diagnosed(report) == ["dLdW_transposed"]
    bound = SWEEPS[cell]["full" if K is None else "truncated"]
    if K == 20:
        assert counted == {**bound, "backward": bound["backward"] - 2}
    else:
        assert counted == bound


@pytest.mark.parametrize(
    ("name", "shape", "message"),
    [
        ("dLdW", (4, 4), "dLdW must be G x H x H = 3 x 4 x 4 for cell 'gru', got 4 x 4"),
        ("dLdU", (3, 4, 6), "dLdU must be G x H x C = 3 x 4 x 5 for cell 'gru', got 3 x 4 x 6"),
        ("dLdV", (4, 5), "dLdV must be C x H = 5 x 4 for cell 'gru', got 4 x 5"),
    ],
)
def test_compare_submitted_shape_must_be_the_expected_one(name, shape, message):
    """A gradient of another shape is refused, not broadcast: an H x H dLdW would be compared with every gate."""
    p = problem(22, "gru", False)
    sub = {**oracle(p, None), name: np.zeros(shape)}
    with pytest.raises(InputError, match=f"^{re.escape(message)}$") as info:
        compare("gru", arrays_of(p, None), sub)
    assert info.value.field == name
